"""Builds end to end against a real MLflow server: artifacts, runs, registry, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main
from orchestrator.core.model_file import sha256_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tracked(isolated: Path, mlflow_server: str, trained_models: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return isolated


def _client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_build_posture_server_records_run_and_registers_candidate(tracked: Path, capsys) -> None:
    assert main(["build", "deployment=posture_server"]) == 0
    out = capsys.readouterr().out
    art = tracked / "artifacts" / "posture_server"
    for name in (
        "model/model.onnx",
        "runtime.json",
        "metrics.json",
        "validation.json",
        "report.md",
        "spec.yaml",
        "build.json",
        "smoke/input.npz",
        "smoke/expected.npz",
    ):
        assert (art / name).is_file(), name
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["precision"] == "int8"
    assert runtime["target"]["runtime"] == "onnxruntime"
    assert runtime["inputs"][0] == {"name": "imu", "shape": [1, 6, 100], "dtype": "float32"}
    assert len(runtime["preprocessing"]["mean"]) == 6
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["agreement"] >= 0.95 and metrics["p95_ms"] > 0 and metrics["peak_memory_mb"] > 0
    build = json.loads((art / "build.json").read_text())
    run_id = build["mlflow"]["run_id"]
    assert run_id in out

    client = _client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["edgeship.status"] == "passed"
    assert run.data.tags["edgeship.recipe"] == "ort_int8_dynamic"
    assert run.data.params["recipe.passes.0.name"] == "ort_quantize_dynamic"
    assert run.data.metrics["agreement"] == pytest.approx(metrics["agreement"])
    files = {f.path for f in client.list_artifacts(run_id, "artifact")}
    assert "artifact/metrics.json" in files and "artifact/model" in files
    version = client.get_model_version_by_alias("posture_server", "candidate")
    digest = "edgeship.artifact.sha256"  # this run's artifact (or the same one built before)
    assert version.tags[digest] == run.data.tags[digest]
    assert build["mlflow"]["model_version"] == version.version


def test_build_failing_gate_records_failed_run_and_keeps_last_good_artifact(
    tracked: Path, capsys
) -> None:
    assert main(["build", "deployment=posture_server"]) == 0
    good = tracked / "artifacts" / "posture_server"
    before = _digest(good)
    candidate = _client().get_model_version_by_alias("posture_server", "candidate").version

    code = main(["build", "deployment=posture_server", "deployment.gates=['p95_ms <= 0.000001']"])
    assert code == 4
    err = capsys.readouterr().err
    assert "p95_ms <= 1e-06: FAIL" in err
    assert _digest(good) == before
    failed = tracked / "artifacts" / ".failed" / "posture_server"
    info = json.loads((failed / "build.json").read_text())
    assert info["status"] == "failed" and info["mlflow"]["model_version"] is None
    run = _client().get_run(info["mlflow"]["run_id"])
    assert run.data.tags["edgeship.status"] == "failed"
    assert _client().get_model_version_by_alias("posture_server", "candidate").version == candidate


def test_build_interrupted_leaves_last_good_artifact_and_no_staging(tracked: Path) -> None:
    assert main(["build", "deployment=posture_nuc"]) == 0
    good = tracked / "artifacts" / "posture_nuc"
    before = _digest(good)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "build", "deployment=posture_nuc"],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "pass 2/2: nncf_quantize" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "interrupted" in rest
    assert _digest(good) == before
    staging = tracked / "artifacts" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_build_multirun_builds_every_deployment_with_overrides(tracked: Path, capsys) -> None:
    code = main(["build", "-m", "deployment=posture_server,posture_nuc", "target.threads=1"])
    assert code == 0
    for name in ("posture_server", "posture_nuc"):
        runtime = json.loads((tracked / "artifacts" / name / "runtime.json").read_text())
        assert runtime["target"]["threads"] == 1
    out = capsys.readouterr().out
    assert out.count("PASSED") == 2


def test_build_ct_seg_nuc_with_recipe_and_thread_override(tracked: Path) -> None:
    code = main(["build", "deployment=ct_seg_nuc", "recipe=int8_nncf", "target.threads=2"])
    assert code == 0
    art = tracked / "artifacts" / "ct_seg_nuc"
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["format"] == "openvino_ir"
    assert runtime["settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert (art / "model" / "model.bin").is_file()
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["dice_vs_reference"] >= 0.97
    assert "dice_vs_reference.liver" in metrics
