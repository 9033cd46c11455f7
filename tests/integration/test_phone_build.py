"""posture_phone end to end: the .ort artifact, its operators config and the app's settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from orchestrator.core.model_file import ModelFile
from orchestrator.spec.compose import compose
from targets.base import get_target

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def phone_artifact(built_phone_artifact: Path) -> Path:
    """posture_phone, built once per session (no MLflow)."""
    return built_phone_artifact


def test_posture_phone_ships_int8_ort_model_with_operators_config(phone_artifact: Path) -> None:
    runtime = json.loads((phone_artifact / "runtime.json").read_text())
    assert runtime["model"]["format"] == "ort"
    assert runtime["model"]["precision"] == "int8"
    assert runtime["model"]["file"] == "model/model.ort"
    settings = runtime["settings"]
    config = phone_artifact / settings["operators_config"]
    assert config.is_file() and config.name.startswith("required_operators")
    ops = config.read_text()
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert str(ROOT) not in ops and "/tmp" not in ops


def test_posture_phone_runtime_config_has_what_the_app_needs(phone_artifact: Path) -> None:
    runtime = json.loads((phone_artifact / "runtime.json").read_text())
    assert runtime["inputs"] == [{"name": "imu", "shape": [1, 6, 100], "dtype": "float32"}]
    assert runtime["labels"] == ["Standing", "Running", "Walking", "Badminton"]
    assert len(runtime["preprocessing"]["mean"]) == 6
    settings = runtime["settings"]
    assert settings["execution_providers"] == ["XNNPACK", "CPU"]
    assert settings["provider_options"]["XNNPACK"] == {"intra_op_num_threads": "2"}
    assert settings["intra_op_num_threads"] == 1
    assert settings["session_config_entries"] == {
        "session.load_model_format": "ORT",
        "session.enable_saved_runtime_optimizations": "1",
    }
    assert runtime["target"]["runtime"] == "onnxruntime_mobile"


def test_posture_phone_records_that_the_phone_itself_was_not_measured(
    phone_artifact: Path,
) -> None:
    validation = json.loads((phone_artifact / "validation.json").read_text())
    note = validation["details"]["runtime_validation"]
    assert note["device_validated"] is False
    assert "the same .ort file" in note["validated_with"]
    assert validation["metrics"]["device_validated"] == 0.0
    assert validation["passed"] is True
    assert all(g["passed"] for g in validation["gates"])


def test_posture_phone_ort_file_runs_as_the_app_loads_it(phone_artifact: Path) -> None:
    runtime = json.loads((phone_artifact / "runtime.json").read_text())
    so = ort.SessionOptions()
    for key, value in runtime["settings"]["session_config_entries"].items():
        so.add_session_config_entry(key, value)
    session = ort.InferenceSession(
        str(phone_artifact / runtime["model"]["file"]), so, providers=["CPUExecutionProvider"]
    )
    feed = dict(np.load(phone_artifact / "smoke" / "input.npz"))
    expected = np.load(phone_artifact / "smoke" / "expected.npz")["logits"]
    reference = np.load(phone_artifact / "smoke" / "reference.npz")["logits"]
    got = session.run(None, feed)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.argmax(-1) == reference.argmax(-1)


def test_ios_target_loads_the_same_artifact_with_coreml_settings(phone_artifact: Path) -> None:
    spec = compose(["deployment=posture_phone", "target=ios_phone"], ROOT)
    target = get_target(spec.config.target)
    runtime = json.loads((phone_artifact / "runtime.json").read_text())
    model = ModelFile(
        phone_artifact / runtime["model"]["file"],
        "ort",
        "int8",
        tuple(phone_artifact / f for f in runtime["model"]["files"][1:]),
    )
    settings = target.runtime_settings(model)
    assert settings["execution_providers"] == ["CoreML", "CPU"]
    assert settings["provider_options"]["CoreML"]["ModelFormat"] == "MLProgram"
    out = target.load(model).run(dict(np.load(phone_artifact / "smoke" / "input.npz")))
    expected = np.load(phone_artifact / "smoke" / "expected.npz")["logits"]
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
