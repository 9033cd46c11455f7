"""Shared fixtures: a real MLflow server, trained reference models, isolated artifacts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process started with start_new_session=True and all its children."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port; yields its tracking URI."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (base / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination", str(base / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=90, proc=proc)
        yield uri
    finally:
        stop_group(proc)
        log.close()


@pytest.fixture(scope="session")
def trained_models() -> Path:
    """Train the reference models once (deterministic; reused if already present)."""
    from orchestrator import reference
    from orchestrator.config.loader import load_option

    for name in ("posture_cnn", "ct_seg"):
        reference.ensure_weights(load_option("model", name, ROOT), ROOT)
    return ROOT / "models"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Artifacts in a temporary folder, project root pinned to this checkout."""
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path
