"""A team's own models build end to end: two inputs with a dynamic batch and two outputs on
ONNX Runtime and OpenVINO, the same model with a static batch of 16, both in INT8 (ONNX Runtime
static QDQ, NNCF), a regression model, a multi-label model with a user metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from orchestrator.build import reference
from orchestrator.build.batching import calibration_batches
from orchestrator.build.pipeline import run_build
from orchestrator.build.select import run_selection
from orchestrator.errors import GateFailure
from orchestrator.spec.compose import compose
from tests.yourmodel import INT8_GATES, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("yourmodel"))


def _build(project: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> Path:
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp / "artifacts"))
    spec = compose(list(overrides), project)
    return run_build(spec, record=False).artifact_dir


def _latency_plot_data(art: Path) -> list[dict]:
    rows: list[dict] = json.loads((art / "plots" / "latency.json").read_text())
    return rows


@pytest.mark.parametrize("deployment", ["two_inputs_server", "two_inputs_nuc"])
def test_two_input_model_with_dynamic_batch_builds_compares_every_output_and_plots_every_batch(
    deployment: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = _build(project, tmp_path, monkeypatch, f"deployment={deployment}")
    validation = json.loads((art / "validation.json").read_text())
    assert validation["passed"]
    metrics = validation["metrics"]
    # latency and throughput at the declared batch sizes: min, opt, max
    assert [b["batch"] for b in validation["details"]["latency_by_batch"]] == [1, 4, 16]
    for b in (1, 4, 16):
        assert metrics[f"p95_ms.batch{b}"] > 0
        assert metrics[f"throughput.batch{b}"] > 0
    # every output compared, in metrics, validation.json and the report
    assert [o["output"] for o in validation["details"]["outputs"]] == ["logits", "aux"]
    assert metrics["max_abs_error.aux"] <= 1e-3
    assert metrics["max_abs_error"] == max(
        metrics["max_abs_error.logits"], metrics["max_abs_error.aux"]
    )
    # the latency plot and its data hold every timed run of every batch size
    rows = _latency_plot_data(art)
    assert [(r["run"], r["batch"]) for r in rows] == [
        (i, b) for i, b in enumerate([1, 1, 1, 4, 4, 4, 16, 16, 16])
    ]
    for entry in validation["details"]["latency_by_batch"]:
        times = [r["latency_ms"] for r in rows if r["batch"] == entry["batch"]]
        assert min(times) <= entry["p50_ms"] <= max(times)
    report = (art / "report.md").read_text()
    assert "Parity per output" in report and "`aux`" in report
    assert "Latency by batch size" in report
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["inputs"][0]["shape"] == ["batch", 6, 100]
    assert runtime["inputs"][0]["dynamic"] == {"batch": {"min": 1, "opt": 4, "max": 16}}
    # the smoke test holds a batch at the opt size, both outputs
    smoke = np.load(art / "smoke" / "expected.npz")
    assert sorted(smoke.files) == ["aux", "logits"] and smoke["logits"].shape == (4, 4)


@pytest.mark.parametrize("deployment", ["static_batch_server", "static_batch_nuc"])
def test_static_batch_of_16_validates_in_batches_and_drops_the_padding(
    deployment: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = _build(project, tmp_path, monkeypatch, f"deployment={deployment}")
    validation = json.loads((art / "validation.json").read_text())
    assert validation["passed"]
    details = validation["details"]
    # 20 samples: one batch of 16, then 4 filled up with 12 copies no metric counts
    assert details["eval_samples"] == 20 and details["eval_batch"] == 16
    assert details["eval_padding"] == 12
    confusion = details["confusion_matrix"]["rows_true_cols_pred"]
    assert sum(map(sum, confusion)) == 20
    assert validation["metrics"]["agreement"] == 1.0
    assert validation["metrics"]["max_abs_error"] <= 1e-3
    assert [b["batch"] for b in details["latency_by_batch"]] == [16]
    assert validation["metrics"]["p95_ms.batch16"] == validation["metrics"]["p95_ms"]
    assert {r["batch"] for r in _latency_plot_data(art)} == {16}
    report = (art / "report.md").read_text()
    assert "run in batches of 16, the last filled up with 12 copies" in report
    # the exported model takes exactly 16: the smoke test holds one full batch
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["inputs"][0]["shape"] == [16, 6, 100] and "dynamic" not in runtime["inputs"][0]
    smoke = np.load(art / "smoke" / "input.npz")
    assert smoke["imu"].shape == (16, 6, 100) and smoke["meta"].shape == (16, 3)


@pytest.mark.parametrize(
    ("deployment", "batches", "calibration_rows"),
    [
        # dynamic batch (min 1, opt 4, max 16): 10 samples calibrate as one batch of 10
        ("two_inputs_server_int8", [1, 4, 16], [10]),
        ("two_inputs_nuc_int8", [1, 4, 16], [10]),
        # static batch of 16: 20 samples calibrate as two full batches
        ("static_batch_server_int8", [16], [16, 16]),
        ("static_batch_nuc_int8", [16], [16, 16]),
    ],
)
def test_int8_with_batches_calibrates_in_batches_and_passes_its_parity_gates(
    deployment: str,
    batches: list[int],
    calibration_rows: list[int],
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = compose([f"deployment={deployment}"], project)
    samples = reference.load_calibration(spec.config.model)
    stacked = calibration_batches(spec.config.model, samples)
    assert [len(b["imu"]) for b in stacked] == calibration_rows
    assert all(len(b["meta"]) == len(b["imu"]) for b in stacked)

    art = _build(project, tmp_path, monkeypatch, f"deployment={deployment}")
    validation = json.loads((art / "validation.json").read_text())
    assert validation["passed"]
    assert {g["gate"] for g in validation["gates"]} == set(INT8_GATES)
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["precision"] == "int8"
    assert runtime["inputs"][0]["shape"] == ([16, 6, 100] if batches == [16] else ["batch", 6, 100])
    model_file = art / runtime["model"]["file"]
    if model_file.suffix == ".onnx":
        ops = {n.op_type for n in onnx.load(str(model_file)).graph.node}
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    else:
        assert "FakeQuantize" in model_file.read_text()
    assert [b["batch"] for b in validation["details"]["latency_by_batch"]] == batches
    assert {r["batch"] for r in _latency_plot_data(art)} == set(batches)


def test_auto_exports_the_model_once_for_all_its_candidates(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    spec = compose(
        [
            "deployment=two_inputs_server",
            "recipe=auto",
            "recipe.candidates=[ort_fp32,ort_int8_static]",
            "deployment.gates=['agreement >= 0.99']",
        ],
        project,
    )
    result = run_selection(spec, record=False)
    steps = {}
    for c in result.candidates:
        assert c.status == "passed" and c.build is not None
        steps[c.recipe] = [name for name, _ in c.build.steps if name.startswith("export")]
    assert steps == {
        "ort_fp32": ["export to ONNX"],
        "ort_int8_static": ["export to ONNX: the one made before"],
    }
    assert not list((tmp_path / "artifacts" / ".auto").glob("*"))  # scratch and export removed


def test_regression_model_reports_its_errors_against_labels_and_reference(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = _build(project, tmp_path, monkeypatch, "deployment=regressor_server")
    metrics = json.loads((art / "metrics.json").read_text())
    for name in ("mae", "rmse", "r2", "reference_mae", "mae_increase", "r2_drop"):
        assert name in metrics
    assert abs(metrics["mae_increase"]) < 1e-3
    assert metrics["r2"] > 0.5


def test_multi_label_model_with_a_user_metric_passes_its_gates(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = _build(project, tmp_path, monkeypatch, "deployment=tagger_server")
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["auroc"] == pytest.approx(metrics["reference_auroc"], abs=1e-6)
    assert metrics["auroc_drop"] == pytest.approx(0.0, abs=1e-6)
    for name in ("agreement", "label_agreement", "accuracy", "f1", "reference_f1", "f1_drop"):
        assert name in metrics
    validation = json.loads((art / "validation.json").read_text())
    assert {g["gate"] for g in validation["gates"]} >= {"auroc >= 0.6", "auroc_drop <= 0.01"}


def test_gate_on_a_user_metric_fails_the_build_when_missed(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(GateFailure) as info:
        _build(
            project,
            tmp_path,
            monkeypatch,
            "deployment=tagger_server",
            "deployment.gates=['auroc >= 1.01']",
        )
    assert any("auroc >= 1.01: FAIL" in line for line in info.value.failed)
