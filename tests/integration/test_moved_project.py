"""A project folder moved or copied elsewhere keeps working: its MLflow store (the project's
own mlflow.db) follows it, so the registered model loads and new builds record into the new
folder, never the old one."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.build import reference
from orchestrator.spec.compose import load_option
from registry.tracking import ROOT_MARKER, follow_move
from tests.userproject import UserProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _edgeship(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EDGESHIP_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(root)])
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _locations(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = [r[0] for r in conn.execute("SELECT artifact_uri FROM runs")]
        rows += [r[0] for r in conn.execute("SELECT storage_location FROM model_versions")]
    return rows


def _predict(root: Path, x: np.ndarray) -> np.ndarray:
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/tiny_server@candidate")
    return np.asarray(model.predict({"x": x})["logits"])


def test_moved_and_copied_projects_keep_their_mlflow_records(tmp_path: Path) -> None:
    p = UserProject(tmp_path / "a")
    try:
        reference.ensure_weights(load_option("model", "tiny", p.root), p.root)
    finally:
        p.close()
    first = _edgeship(p.root, "build", "deployment=tiny_server")
    assert first.returncode == 0, first.stderr
    assert (p.root / ROOT_MARKER).read_text().strip() == str(p.root)
    x = dict(np.load(p.root / "artifacts" / "tiny_server" / "smoke" / "input.npz"))["x"]
    expected = np.load(p.root / "artifacts" / "tiny_server" / "smoke" / "expected.npz")["logits"]

    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    shutil.move(str(p.root), str(moved))
    assert all(str(p.root) in loc for loc in _locations(moved / "mlflow.db"))
    # opening the store rewrites its locations: the model loads from the new folder
    assert follow_move(moved) == str(p.root)
    assert not any(str(p.root) + "/" in loc for loc in _locations(moved / "mlflow.db"))
    assert follow_move(moved) is None  # once
    np.testing.assert_allclose(_predict(moved, x), expected, atol=1e-5)

    # a copy gets its own: its builds record into the copy, the original stays as it was
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    before = _locations(moved / "mlflow.db")
    again = _edgeship(copy, "build", "deployment=tiny_server", "target.threads=1")
    assert again.returncode == 0, again.stderr
    assert "project moved from" in again.stderr
    assert _locations(moved / "mlflow.db") == before
    locations = _locations(copy / "mlflow.db")
    assert len(locations) == 4 and all(str(copy) in loc for loc in locations), locations
    assert any((copy / "mlartifacts").rglob("MLmodel"))
    np.testing.assert_allclose(_predict(copy, x), expected, atol=1e-5)
