"""Progress on a terminal: bars for waves, uploads and soaks, drawn only for a person watching."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from orchestrator.cli import progress
from orchestrator.cli.progress import BuildSteps, ShipProgress


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system=None), out


def test_ship_progress_draws_waves_uploads_and_a_soak_countdown() -> None:
    console, out = _console()
    bars = ShipProgress(enabled=True, console=console)
    bars.wave("wave 1/2 (canary)", 2)
    bars.upload("bed-01", 512_000, 2_048_000)
    bars.progress.refresh()
    assert "bed-01 upload" in out.getvalue() and "512.0 kB / 2.0 MB" in out.getvalue()
    bars.device_done("bed-01")
    bars.progress.refresh()
    assert "1/2 devices" in out.getvalue()
    bars.soak(30, time.time() + 30)
    time.sleep(0.3)
    bars.progress.refresh()
    assert "s left" in out.getvalue()
    bars.soak_done()
    bars.close()
    bars.upload("bed-02", 1, 2)  # after the end: nothing more is drawn, nothing fails
    assert bars.progress is None


def test_nothing_is_drawn_off_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(progress, "interactive", lambda: False)
    bars = ShipProgress()
    bars.wave("wave 1/1", 3)
    bars.upload("bed-01", 10, 20)
    bars.soak(5, time.time() + 5)
    assert bars.progress is None
    bars.close()
    steps = BuildSteps("posture_server")
    steps("export to ONNX")
    steps.close()
    assert capsys.readouterr().err == "[posture_server] export to ONNX\n"


def test_interactive_needs_both_streams_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stderr", Tty())
    monkeypatch.setattr("sys.stdout", io.StringIO())  # `edgeship rollout ... > log`
    assert not progress.interactive()
    monkeypatch.setattr("sys.stdout", Tty())
    assert progress.interactive()
    monkeypatch.setenv("TERM", "dumb")
    assert not progress.interactive()
