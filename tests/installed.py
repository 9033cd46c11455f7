"""edgeship as a user installs it: this checkout's wheel, unpacked, and an ``edgeship`` command.

The tool runs from the wheel (the package data a user gets), never from the checkout; a
clean environment (no ``EDGESHIP_*`` or ``MLFLOW_*`` variables) runs it in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def install(base: Path) -> Path:
    """Build this checkout's wheel and unpack it under ``base`` (``site/``), with a ``bin/``
    holding an ``edgeship`` command that runs it; returns ``base``."""
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(base / "wheel"), str(ROOT)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (base / "wheel").glob("edgeship-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(base / "site")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    script = bin_dir / "edgeship"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m orchestrator.cli.main "$@"\n')
    script.chmod(0o755)
    return base


def clean_env(tool: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without edgeship's and MLflow's variables, the tool on the
    path, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGESHIP_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(tool / "site")
    env["PATH"] = f"{tool / 'bin'}:{BIN}:{env['PATH']}"
    env.update(extra)
    return env


def run(
    tool: Path, cwd: Path, *args: str, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` with :func:`clean_env`; ``ok`` asserts it succeeded."""
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=env or clean_env(tool),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if ok:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def edgeship(
    tool: Path, cwd: Path, *args: str, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``edgeship ARGS`` in ``cwd`` (see :func:`run`)."""
    return run(tool, cwd, str(tool / "bin" / "edgeship"), *args, ok=ok, env=env)
