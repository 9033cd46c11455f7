"""Progress on a terminal: rich's live lines and bars on stderr while work runs.

Shown only in an interactive session (stdout and stderr both terminals, ``TERM`` not
``dumb``): a pipe, a log or CI gets the plain lines the commands print anyway, and
``--json`` answers stay clean. While the bars are live, what the command prints on
stdout appears above them.

- :class:`BuildSteps`: a build's steps (a spinner and the running step's time);
- :class:`ShipProgress`: a rollout's or deploy's waves (devices done of the wave), each
  device's upload (bytes) and the soak between waves (a countdown).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


def interactive() -> bool:
    """Whether bars may be drawn: a person at a terminal is watching."""
    if os.environ.get("TERM") == "dumb":
        return False
    return sys.stderr.isatty() and sys.stdout.isatty()


def _progress(*columns: Any, console: Any = None) -> Any:
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(*columns, console=console or Console(stderr=True))
    progress.start()
    return progress


class BuildSteps:
    """The steps of a build as they happen: on a terminal, live lines (a spinner and the
    time of the running step, every finished step with its time); otherwise one plain line
    per step on stderr."""

    def __init__(self, prefix: str, console: Any = None) -> None:
        self.prefix = prefix
        self.progress: Any = None
        self.task: Any = None
        if console is not None or interactive():
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = _progress(
                SpinnerColumn(finished_text="[green]done[/]"),
                TextColumn("[bold]{task.fields[prefix]}[/] {task.description}"),
                TimeElapsedColumn(),
                console=console,
            )

    def __call__(self, step: str) -> None:
        if self.progress is None:
            print(f"[{self.prefix}] {step}", file=sys.stderr, flush=True)
            return
        self._finish_task()
        self.task = self.progress.add_task(step, total=1, prefix=self.prefix)

    def _finish_task(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=1)
            self.task = None

    def close(self) -> None:
        if self.progress is not None:
            self._finish_task()
            self.progress.stop()
            self.progress = None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class ShipProgress:
    """Bars while bundles travel: one per wave (devices finished), one per device while its
    files upload (bytes, removed when the device is done), a countdown while a wave soaks.

    Every method is safe to call from the deploy threads; with ``enabled`` false (not a
    terminal) they do nothing."""

    def __init__(self, enabled: bool | None = None, console: Any = None) -> None:
        self.progress: Any = None
        self._lock = threading.Lock()
        self._uploads: dict[str, Any] = {}
        self._wave: Any = None
        self._soak: Any = None
        self._console = console
        self._enabled = enabled if enabled is not None else interactive()
        self._closed = False

    def _start(self) -> bool:
        """Draw from the first thing to show on (nothing drawn for a command that ships none)."""
        if self.progress is None and self._enabled and not self._closed:
            from rich.progress import BarColumn, TextColumn

            self.progress = _progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[amount]}"),
                console=self._console,
            )
        return self.progress is not None

    def wave(self, label: str, devices: int) -> None:
        """A wave of ``devices`` starts (the previous wave's bar is done)."""
        with self._lock:
            if not self._start():
                return
            if self._wave is not None:
                self.progress.remove_task(self._wave)
            self._wave = self.progress.add_task(
                label, total=max(devices, 1), amount=f"0/{devices} devices"
            )

    def device_done(self, device: str) -> None:
        """One device of the running wave finished (whatever its result)."""
        with self._lock:
            if self.progress is None:
                return
            upload = self._uploads.pop(device, None)
            if upload is not None:
                self.progress.remove_task(upload)
            if self._wave is not None:
                self.progress.advance(self._wave)
                task = self.progress.tasks[self._task_index(self._wave)]
                total = int(task.total or 0)
                self.progress.update(self._wave, amount=f"{int(task.completed)}/{total} devices")

    def upload(self, device: str, sent: int, total: int) -> None:
        """``device`` holds ``sent`` of the ``total`` bytes it needs."""
        amount = f"{_size(sent)} / {_size(total)}"
        with self._lock:
            if not self._start():
                return
            task = self._uploads.get(device)
            if task is None:
                self._uploads[device] = self.progress.add_task(
                    f"  {device} upload", total=max(total, 1), completed=sent, amount=amount
                )
            else:
                self.progress.update(task, completed=sent, amount=amount)

    def soak(self, seconds: float, until: float) -> None:
        """The wave soaks until ``until`` (seconds since the epoch): count down to it."""
        with self._lock:
            if not self._start():
                return
            self._soak = self.progress.add_task(
                "  soak", total=max(seconds, 0.001), amount=f"{seconds:.0f} s left"
            )
            task = self._soak

        def tick() -> None:
            while True:
                left = max(0.0, until - time.time())
                with self._lock:
                    if self.progress is None or self._soak is not task:
                        return
                    self.progress.update(
                        task, completed=seconds - min(left, seconds), amount=f"{left:.0f} s left"
                    )
                if left <= 0:
                    return
                time.sleep(min(0.25, left))

        threading.Thread(target=tick, name="edgeship-soak", daemon=True).start()

    def soak_done(self) -> None:
        with self._lock:
            if self.progress is not None and self._soak is not None:
                self.progress.remove_task(self._soak)
                self._soak = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    def _task_index(self, task_id: Any) -> int:
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == task_id)
