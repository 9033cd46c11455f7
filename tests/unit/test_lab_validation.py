"""Lab validation, fast: the device's figures gate (either way), the build machine's are kept
beside them, the spec names a lab device before any work, the agent refuses to install a
measurement candidate. No devices: the measurer is a stand-in that answers as the agent does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.build.lab import validate_on_device
from orchestrator.build.reference import Dataset
from orchestrator.build.validate import Validation
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import SpecError
from orchestrator.spec.compose import compose
from orchestrator.spec.gates import evaluate_gates, parse_gate

ROOT = Path(__file__).resolve().parents[2]


class FakeMeasurer:
    """Answers like orchestrator.ship.lab.LabMeasurer: outputs per chunk and latency figures."""

    def __init__(self, logits: np.ndarray, p50: float) -> None:
        self.logits = logits
        self.p50 = p50
        self.seen: dict[str, Any] = {}

    @property
    def where(self) -> dict[str, str]:
        return {"device": "lab-1", "fleet": "lab"}

    def __call__(self, candidate: Path, workdir: Path) -> dict[str, Any]:
        plan = json.loads((candidate / "measure" / "measure.json").read_text())
        self.seen = {"plan": plan, "files": sorted(p.name for p in candidate.rglob("*"))}
        with np.load(candidate / "measure" / "eval.npz") as npz:
            count = plan["chunks"]
            inputs = [npz[f"c{i}_0"] for i in range(count)]
        out = workdir / "outputs.npz"
        np.savez(out, **{f"c{i}_0": self.logits[i : i + len(x)] for i, x in enumerate(inputs)})
        figures = {k: self.p50 for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}
        return {
            "metrics": {**figures, "throughput": 1e3 / self.p50, "load_ms": 3.0},
            "by_batch": [{"batch": 1, **figures}],
            "latency_samples_ms": {"1": [self.p50] * 3},
            "runtime": {"name": "onnxruntime", "version": "9.9.9", "providers": ["CPU"]},
            "python": "3.8.10",
            "device": {"name": "lab-1", "family": "server", "fleet": "lab"},
            "outputs_npz": str(out),
        }


@pytest.fixture
def setting(tmp_path: Path) -> dict[str, Any]:
    spec = compose(["deployment=posture_server"], ROOT).config
    rng = np.random.default_rng(0)
    samples = [{"imu": rng.standard_normal((1, 6, 100)).astype(np.float32)} for _ in range(6)]
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    labels = logits.argmax(axis=1)
    reference = [[logits[i : i + 1]] for i in range(6)]
    staging = tmp_path / "staging"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "model.onnx").write_bytes(b"x" * 1000)
    model = ModelFile(staging / "model" / "model.onnx", "onnx")
    data = Dataset(samples, labels, "0" * 64)
    return {
        "spec": spec,
        "staging": staging,
        "model": model,
        "data": data,
        "reference": reference,
        "logits": logits,
    }


def _local(spec: Any, p95: float) -> Validation:
    metrics = {
        "agreement": 1.0,
        "accuracy_drop": 0.0,
        "p95_ms": p95,
        "p50_ms": p95,
        "size_mb": 0.001,
    }
    gates = evaluate_gates([parse_gate(g) for g in spec.deployment.gates], metrics)
    return Validation(metrics, gates, {"latency_by_batch": [], "load_ms": 1.0})


@pytest.mark.parametrize(
    ("machine_p95", "device_p95", "passes"),
    [(80.0, 2.0, True), (2.0, 80.0, False)],
    ids=["device-passes-what-the-machine-fails", "device-fails-what-the-machine-passes"],
)
def test_lab_validation_gates_on_the_devices_figures(
    setting: dict[str, Any], machine_p95: float, device_p95: float, passes: bool
) -> None:
    spec = setting["spec"]
    local = _local(spec, machine_p95)
    assert local.passed is (not passes)  # the gate p95_ms <= 20 on the build machine's figure
    measurer = FakeMeasurer(setting["logits"], device_p95)
    runtime = {"deployment": "posture_server", "model": {"file": "model/model.onnx"}}

    result = validate_on_device(
        spec,
        setting["staging"],
        setting["model"],
        runtime,
        setting["data"],
        setting["reference"],
        local,
        measurer,
    )

    assert result.passed is passes
    gate = next(g for g in result.gates if str(g.gate).startswith("p95_ms"))
    assert gate.value == device_p95 == result.metrics["p95_ms"]
    assert result.metrics["build_machine.p95_ms"] == machine_p95
    assert result.details["build_machine"]["passed"] is (not passes)
    assert result.metrics["agreement"] == 1.0  # parity from the device's outputs
    assert result.validated_on is not None
    assert result.validated_on["device"] == "lab-1"
    assert result.validated_on["runtime_version"] == "9.9.9"
    assert result.to_json()["device_validated"] is True
    # the candidate carried the model, runtime.json and the build machine's evaluation chunks
    assert {"model.onnx", "runtime.json", "eval.npz", "measure.json"} <= set(measurer.seen["files"])
    assert measurer.seen["plan"]["chunks"] == 6
    assert measurer.seen["plan"]["runs"] == spec.deployment.validation.latency_runs
    assert not (setting["staging"] / ".work-lab").exists()


def test_validate_on_lab_needs_a_lab_device_of_the_targets_family(tmp_path: Path) -> None:
    fleet = tmp_path / "lab.yaml"
    fleet.write_text(
        "name: lab\n"
        "defaults: {family: server, identity_file: /dev/null}\n"
        "devices:\n"
        "  - {name: a, address: 127.0.0.9}\n"
        "  - {name: b, address: 127.0.0.10, family: intel_nuc, lab: true}\n"
    )
    with pytest.raises(SpecError) as exc:
        compose(
            ["deployment=posture_server", "validate_on=lab", f"validate_on.fleet={fleet}"], ROOT
        )
    text = str(exc.value)
    assert "deployment.validate_on.fleet" in text
    assert "no lab device of family server" in text and "b (intel_nuc)" in text
    with pytest.raises(SpecError, match="a of fleet lab is not a lab device"):
        compose(
            [
                "deployment=posture_server",
                "validate_on=lab",
                f"validate_on.fleet={fleet}",
                "validate_on.device=a",
            ],
            ROOT,
        )
    spec = compose(
        ["deployment=posture_nuc", "validate_on=lab", f"validate_on.fleet={fleet}"], ROOT
    )
    assert spec.config.deployment.validate_on.where == "lab"


def test_fleet_lab_flag_is_strictly_typed(tmp_path: Path) -> None:
    from orchestrator.spec.fleet import load_fleet_file

    fleet = tmp_path / "lab.yaml"
    fleet.write_text(
        "name: lab\n"
        "defaults: {family: server, identity_file: /dev/null}\n"
        "devices:\n"
        "  - {name: a, address: 127.0.0.9, lab: sometimes}\n"
    )
    with pytest.raises(SpecError, match=r"devices\[0\]\.lab"):
        load_fleet_file(fleet, ROOT)


def test_measurement_manifests_have_no_version_and_bundles_need_one() -> None:
    from orchestrator.device.agent.rules import BUNDLE_KIND, MEASURE_KIND, manifest_problems

    base = {
        "deployment": "posture_server",
        "signing": {"key_id": "ab"},
        "files": [],
    }
    assert manifest_problems(dict(base, kind=MEASURE_KIND), (MEASURE_KIND,)) == []
    # an activation takes bundles only: a measurement candidate is refused by its kind
    refused = manifest_problems(dict(base, kind=MEASURE_KIND))
    assert refused and refused[0][0] == "malformed" and "kind" in refused[0][1]
    with_version = manifest_problems(dict(base, kind=MEASURE_KIND, version=3), (MEASURE_KIND,))
    assert with_version and "no version" in with_version[0][1]
    assert manifest_problems(dict(base, kind=BUNDLE_KIND, version=3)) == []
