# PYTHON_ARGCOMPLETE_OK
"""The ``edgeship`` command line: a thin layer over the verbs' modules.

Every module of this package with a ``register(sub)`` function adds its verbs;
a new verb family is one module here (parsing and printing) over one module of
logic in its room. Only the CLI prints. Errors print their short message and
exit with their code from :class:`orchestrator.errors.ExitCode`; ``-v`` or
``EDGESHIP_FULL_ERROR=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import pkgutil
import re
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from orchestrator.core.text import terminal
from orchestrator.errors import EdgeshipError, ExitCode, exit_code_table
from orchestrator.project import full_errors

log = logging.getLogger("edgeship")
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def _err(msg: str) -> None:
    # messages quote devices' answers and names from YAML: no control characters get through
    print(terminal(msg, keep_newlines=True), file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with :attr:`ExitCode.USAGE` (not 2, which means an invalid spec),
    with the closest verb or flag suggested for a mistyped one."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        hint = self._suggestion(message)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}{hint}\n")

    def _suggestion(self, message: str) -> str:
        from orchestrator.core.typecheck import closest

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            near = closest(choice.group(1), options)
            return f" (did you mean '{near}'?)" if near else ""
        unknown = re.search(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = set(self._flags())
            hints = []
            for word in unknown.group(1).split():
                name = word.split("=", 1)[0]
                near = closest(name, flags) if name.startswith("-") else None
                if near:
                    hints.append(f"'{near}' for '{name}'")
            return f" (did you mean {', '.join(hints)}?)" if hints else ""
        return ""

    def _flags(self) -> list[str]:
        """Every option string of this parser and of its verbs' parsers."""
        out: list[str] = []
        for action in self._actions:
            out += [o for o in action.option_strings if o.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    if isinstance(parser, _Parser):
                        out += parser._flags()
        return out


def _version() -> str:
    from importlib import metadata

    try:
        version = metadata.version("edgeship")
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"edgeship {version} (Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeship",
        description="Build, validate, record and ship AI models to edge devices.",
        epilog="exit codes:\n" + exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log steps and show tracebacks"
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in verb_modules():
        module.register(sub)
    return parser


def verb_modules() -> list[Any]:
    """Every module of :mod:`orchestrator.cli` that registers verbs (``register(sub)``)."""
    import orchestrator.cli as pkg

    modules = [
        importlib.import_module(f"{pkg.__name__}.{info.name}")
        for info in pkgutil.iter_modules(pkg.__path__)
    ]
    return [m for m in modules if callable(getattr(m, "register", None))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # a shell asking for completions (docs/cli.md)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    verbose = args.verbose or full_errors()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # transformers imports torchao, which reports its CUDA kernels missing from a CPU
        # build, and torch a deprecation inside torchao: neither concerns a build (-v shows)
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except EdgeshipError as exc:
        if verbose:
            traceback.print_exc()
        _err(str(exc))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        _err("interrupted; nothing half-written was kept")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (`edgeship list --json | head`): not an error here;
        # stdout goes to /dev/null so Python's own flush at exit stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


def run() -> None:
    """The ``edgeship`` command: :func:`main`, then back to the prompt at once.

    The answer is complete when ``main`` returns: Python's exit handlers run (MLflow's, the
    temporary folders', logging's) and threads are joined, but the interpreter's teardown of
    every imported native library (PyTorch, OpenVINO, ONNX Runtime: seconds) is skipped.
    """
    code = main()
    # what the interpreter does first at exit: the threading module's exit callbacks (idle
    # thread-pool workers are told to leave), then the join of every non-daemon thread
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    try:
        atexit._run_exitfuncs()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a reader that went away
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    run()
