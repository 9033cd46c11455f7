"""Apache TVM builds: both shipped models compiled, run and validated; a tiny tuning run.

TVM lives in its own tool environment (``edgeship toolenv install tvm``); without it
these tests skip, naming the command. The device side (the agent's ``tvm`` runner on the
artifact) is covered by tests/contract/test_device_runners.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core import toolenv
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.spec.compose import compose
from targets.base import get_target

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _tvm_environment(isolated: Path, trained_models: Path) -> None:
    reason = toolenv.unavailable_reason("tvm")
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install tvm`)")


def _build(overrides: list[str]) -> Path:
    from orchestrator.build.pipeline import run_build

    return run_build(compose(overrides, ROOT), record=False).artifact_dir


def test_posture_compiles_runs_and_passes_its_gates_with_the_cpu_in_runtime_json() -> None:
    art = _build(["deployment=posture_tvm", "deployment.validation.latency_runs=10"])
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["target"] == {
        "name": "tvm_cpu",
        "family": "tvm_cpu",
        "runtime": "tvm",
        "device": "x86-64-v3",
        "threads": 2,
    }
    assert runtime["model"]["files"] == ["model/model.so", "model/model.tvm.json"]
    settings = runtime["settings"]
    assert settings["llvm_target"] == {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2}
    assert settings["compiled_with_tvm"] == toolenv.info("tvm")["version"]  # type: ignore[index]
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["agreement"] == 1.0 and metrics["max_abs_error"] < 1e-4
    assert metrics["p50_ms"] > 0 and metrics["peak_memory_mb"] > 0
    validation = json.loads((art / "validation.json").read_text())
    assert validation["passed"] and len(validation["details"]["latency_samples_ms"]["1"]) == 10

    # the target's session reproduces the smoke output; a damaged library is a clear error
    spec = compose(["deployment=posture_tvm"], ROOT)
    target = get_target(spec.config.target, spec.config.model)
    session = target.load(ModelFile(art / "model" / "model.so", "tvm"))
    feed = dict(np.load(art / "smoke" / "input.npz"))
    expected = np.load(art / "smoke" / "expected.npz")
    np.testing.assert_allclose(session.run(feed)[0], expected["logits"], atol=1e-5)
    session.close()  # type: ignore[attr-defined]
    broken = art.parent / "broken.so"
    broken.write_bytes(b"not a library")
    with pytest.raises(BuildError, match="error: TVM: "):
        target.load(ModelFile(broken, "tvm"))


def test_ct_seg_unet_compiles_through_the_onnx_frontend_and_keeps_parity() -> None:
    art = _build(
        [
            "deployment=ct_seg_tvm",
            "deployment.validation.latency_warmup=1",
            "deployment.validation.latency_runs=3",
        ]
    )
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["dice_vs_reference"] >= 0.999
    assert metrics["max_abs_error"] < 1e-3
    assert (art / "model" / "model.so").stat().st_size > 1e6  # the weights are inside


def test_tuning_within_a_tiny_budget_keeps_its_database_as_an_artifact() -> None:
    art = _build(
        [
            "deployment=posture_tvm",
            "recipe=tvm_tuned",
            "recipe.passes.0.options.max_trials_global=2",
            "recipe.passes.0.options.max_trials_per_task=1",
            "recipe.passes.0.options.num_trials_per_iter=1",
            "recipe.passes.0.options.strategy=replay-trace",
            "deployment.validation.latency_runs=5",
        ]
    )
    runtime = json.loads((art / "runtime.json").read_text())
    files = runtime["model"]["files"]
    assert "model/database_workload.json" in files
    assert "model/database_tuning_record.json" in files
    assert runtime["settings"]["tuned"] is True
    summary = json.loads((art / "model" / "tuning.json").read_text())
    assert summary["budget"]["max_trials_global"] == 2
    assert summary["records"] >= 1
    assert (art / "model" / "database_workload.json").read_text().strip()
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["agreement"] == 1.0
