"""The MLflow recorder process: it records what a build asks, a recorder that died leaves the
build to record in-process, and an error in MLflow comes back as the build's TrackingError."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.errors import TrackingError
from registry import recorder


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield uri
    recorder._close_all()


def _request(tmp_path: Path, name: str) -> dict[str, Any]:
    staging = tmp_path / name
    staging.mkdir()
    (staging / "runtime.json").write_text("{}")
    data = tmp_path / f"{name}.npz"
    np.savez(data, x=np.arange(6, dtype=np.float32).reshape(2, 3))
    return {
        "deployment": "tiny_server",
        "run_name": f"{name}-run",
        "tags": {"edgeship.status": "passed"},
        "parent": None,
        "started": 1.7e9,
        "staging": str(staging),
        "build_info": {"deployment": "tiny_server", "mlflow": {"model_name": "tiny_server"}},
        "params": {"recipe.name": "ort_fp32"},
        "metrics": {"agreement": 1.0},
        "lineage_tags": {},
        "datasets": [("tiny-eval", "evaluation", str(data), "ab" * 32, "data:eval")],
        "description": "**tiny_server**: PASSED",
        "log_model": False,
        "register": False,
        "digest": "cd" * 32,
    }


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def test_the_recorder_process_records_the_build_and_serves_the_next(
    tmp_path: Path, store: str
) -> None:
    rec = recorder.begin(tmp_path)
    assert isinstance(rec, recorder.Recorder)
    rec.ready()
    assert rec.alive() and rec.proc is not None and rec.proc.pid
    first = rec.record(_request(tmp_path, "a"))
    assert first["version"] is None and first["reused"] is False
    assert recorder.begin(tmp_path) is rec  # one recorder per process and store
    second = rec.record(_request(tmp_path, "b"))
    client = _client(store)
    for answer, name in ((first, "a"), (second, "b")):
        run = client.get_run(answer["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"{name}-run"
        assert run.data.params["recipe.name"] == "ort_fp32" and run.data.metrics["agreement"] == 1
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiny-eval"]
        build = json.loads((tmp_path / name / "build.json").read_text())
        assert build["mlflow"] == {"model_name": "tiny_server", "run_id": answer["run_id"]}


def test_a_recorder_that_died_leaves_the_build_to_record_in_process(
    tmp_path: Path, store: str
) -> None:
    rec = recorder.begin(tmp_path)
    assert isinstance(rec, recorder.Recorder) and rec.proc is not None
    rec.ready()
    rec.proc.kill()
    rec.proc.wait()
    answer = rec.record(_request(tmp_path, "a"))
    assert rec.fallback and not rec.alive()
    assert _client(store).get_run(answer["run_id"]).info.status == "FINISHED"


def test_an_mlflow_error_in_the_recorder_is_the_builds_tracking_error(
    tmp_path: Path, store: str
) -> None:
    rec = recorder.begin(tmp_path)
    req = dict(_request(tmp_path, "a"), parent="no-such-run", register=True)
    req["metrics"] = {"agreement": "not a number"}
    with pytest.raises(TrackingError, match=r"^error: recording in MLflow: ValueError"):
        rec.record(req)
    assert rec.alive()  # and it serves the next build
    assert rec.record(_request(tmp_path, "b"))["run_id"]
