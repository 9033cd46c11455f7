"""What third-party libraries print on their own (NNCF's progress bars and INFO lines on
stdout) goes to edgeship's log instead, where ``-v`` shows it; stdout stays edgeship's
(a ``--json`` answer, a table)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

log = logging.getLogger("edgeship.thirdparty")


class _LogWriter(io.TextIOBase):
    """A text stream whose complete lines become debug records of ``logger``."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                self.logger.debug("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        """A last line without its newline is logged when the stream is done with."""
        if self.pending.strip():
            self.logger.debug("%s", self.pending.rstrip())
        self.pending = ""

    def isatty(self) -> bool:  # progress bars draw themselves for terminals only
        return False


@contextlib.contextmanager
def third_party_output(
    name: str, loggers: tuple[str, ...] = (), stderr: bool = False
) -> Iterator[None]:
    """Inside: stdout (and stderr, where a library draws its progress bars there) goes to
    the log of ``name`` and the named libraries' loggers show only warnings, unless
    edgeship logs at INFO (``-v``), which leaves everything as it is."""
    if logging.getLogger("edgeship").isEnabledFor(logging.INFO):
        yield
        return
    saved = []
    for lib in loggers:
        lib_log = logging.getLogger(lib)
        saved.append((lib_log, lib_log.level, [(h, h.level) for h in lib_log.handlers]))
        lib_log.setLevel(logging.WARNING)
        for handler in lib_log.handlers:
            handler.setLevel(logging.WARNING)
    writer = _LogWriter(log.getChild(name))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(writer))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(writer))
            yield
    finally:
        writer.flush()
        for lib_log, level, handlers in saved:
            lib_log.setLevel(level)
            for handler, handler_level in handlers:
                handler.setLevel(handler_level)
