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
from typing import Any

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
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination",
            str(base / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
    from orchestrator.build import reference
    from orchestrator.spec.compose import load_option

    for name in ("posture_cnn", "ct_seg"):
        reference.ensure_weights(load_option("model", name, ROOT), ROOT)
    return ROOT / "models"


@pytest.fixture(autouse=True, scope="session")
def _allow_dirty_working_copy() -> Iterator[None]:
    """Bundling refuses builds from a tree with uncommitted changes; a developer's test run
    on a working copy with edits bundles them anyway (recorded, as with --allow-dirty).
    The refusal itself is tested through make_bundle, which this does not change."""
    saved = os.environ.get("EDGESHIP_ALLOW_DIRTY")
    os.environ["EDGESHIP_ALLOW_DIRTY"] = "1"
    yield
    if saved is None:
        os.environ.pop("EDGESHIP_ALLOW_DIRTY", None)
    else:
        os.environ["EDGESHIP_ALLOW_DIRTY"] = saved


@pytest.fixture(autouse=True)
def _mlflow_process_state() -> Iterator[None]:
    """``mlflow.set_tracking_uri``/``set_registry_uri`` also write MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI into the environment, which monkeypatch does not undo: each test
    leaves MLflow's process-wide URIs (variables and module state) as it found them."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {n: os.environ.get(n) for n in names}
    uris = _mlflow_uris() if "mlflow" in sys.modules else (None, None)  # unset until imported
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri, registry_utils._registry_uri = uris


def _mlflow_uris() -> tuple[Any, Any]:
    """MLflow's module-level tracking and registry URIs (what set_*_uri wrote)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Artifacts in a temporary folder, project root pinned to this checkout."""
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path


# -- shipping: a built artifact and simulated SSH devices (tests/sshd.py) -------------------------


def build_once(overrides: list[str], folder: Path) -> Path:
    """Build the spec of ``overrides`` into ``folder/artifacts`` without MLflow.

    Returns the artifact folder; the environment is restored afterwards.
    """
    from orchestrator.build import reference
    from orchestrator.build.pipeline import run_build
    from orchestrator.spec.compose import compose

    spec = compose(overrides, ROOT)
    reference.ensure_weights(spec.config.model, ROOT)
    saved = {k: os.environ.get(k) for k in ("EDGESHIP_ARTIFACTS",)}
    os.environ["EDGESHIP_ARTIFACTS"] = str(folder / "artifacts")
    try:
        result = run_build(spec, record=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result.artifact_dir


@pytest.fixture(scope="session")
def built_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One passing posture_server artifact per session (built without MLflow)."""
    return build_once(["deployment=posture_server"], tmp_path_factory.mktemp("shipping-build"))


@pytest.fixture(scope="session")
def ssh_devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    """Three real sshd devices on 127.0.0.2-4 for the whole session."""
    from tests.sshd import require_sshd, start_devices, stop_devices

    require_sshd()
    devices = start_devices(3, tmp_path_factory.mktemp("ssh-devices"))
    try:
        yield devices
    finally:
        stop_devices(devices)


@pytest.fixture
def lab(tmp_path: Path, ssh_devices: list, built_artifact: Path):
    """A fresh key store, bundle folder and fleet (fresh install roots) on the shared devices."""
    from tests.sshd import ShipLab

    return ShipLab(tmp_path / "lab", ssh_devices, built_artifact)


# -- phones: a built posture_phone artifact (tests/integration/test_phone_channel.py) ------------


@pytest.fixture(scope="session")
def built_phone_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One passing posture_phone artifact (.ort, ONNX Runtime Mobile) per session, no MLflow."""
    return build_once(["deployment=posture_phone"], tmp_path_factory.mktemp("phone-build"))
