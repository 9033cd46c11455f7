"""Core ML builds on Linux: the package converted, read back and checked, the numbers from
the precision-matched PyTorch program, the artifact bundled; the macOS runner where Core ML
predicts.

Core ML predicts only on Apple's systems ("Model prediction is only supported on macOS"),
so here validation records ``device_validated: false`` and ``coreml_predicted: false``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core import coreml_package as cm
from orchestrator.spec.compose import compose

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, trained_models: Path) -> dict[str, Path]:
    """posture_phone_coreml with the FP16 and the INT8-weight recipe (no MLflow)."""
    from tests.conftest import build_once

    out = {}
    for recipe in ("coreml_fp16", "coreml_int8w"):
        folder = tmp_path_factory.mktemp(recipe)
        out[recipe] = build_once(
            [
                "deployment=posture_phone_coreml",
                f"recipe={recipe}",
                "deployment.validation.latency_runs=10",
            ],
            folder,
        )
    return out


def _package_bytes(art: Path) -> int:
    package = art / "model" / "model.mlpackage"
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


def test_fp16_package_is_checked_and_validated_off_macos(built: dict[str, Path]) -> None:
    art = built["coreml_fp16"]
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["target"]["runtime"] == "coreml"
    assert runtime["model"]["file"] == "model/model.mlpackage"
    assert runtime["model"]["format"] == "mlpackage" and runtime["model"]["precision"] == "fp16"
    assert "model/model.mlpackage/Manifest.json" in runtime["model"]["files"]
    assert len(runtime["model"]["sha256"]) == 64
    settings = runtime["settings"]
    assert settings["minimum_deployment_target"] == "iOS17"
    assert settings["specification_version"] == 8
    assert {"conv", "linear", "relu"} <= set(settings["operations"])
    info = cm.inspect(art / "model" / "model.mlpackage")  # reads back with skip_model_load
    assert [(f["name"], f["shape"], f["dtype"]) for f in info["inputs"]] == [
        ("imu", [1, 6, 100], "float32")
    ]
    assert [(f["name"], f["shape"], f["dtype"]) for f in info["outputs"]] == [
        ("logits", [1, 4], "float32")
    ]
    validation = json.loads((art / "validation.json").read_text())
    note = validation["details"]["runtime_validation"]
    assert validation["device_validated"] is False and note["device_validated"] is False
    if platform.system() != "Darwin":
        assert note["coreml_predicted"] is False
        assert "at fp16 compute with fp16 weights" in note["validated_with"]
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["agreement"] == 1.0
    assert 0 < metrics["max_abs_error"] < 0.01  # FP16 differs from the FP32 reference


def test_int8_weights_are_smaller_and_dequantized_by_core_ml(built: dict[str, Path]) -> None:
    art = built["coreml_int8w"]
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["precision"] == "int8"
    settings = runtime["settings"]
    assert settings["weights"]["dtype"] == "int8"
    assert "constexpr_affine_dequantize" in settings["operations"]
    assert _package_bytes(art) < _package_bytes(built["coreml_fp16"])
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["agreement"] == 1.0


def test_package_checks_refuse_what_the_deployment_target_lacks() -> None:
    assert cm.unsupported_ops(["conv", "linear"], "iOS17") == []
    assert cm.unsupported_ops(["constexpr_blockwise_shift_scale"], "iOS17") == [
        "constexpr_blockwise_shift_scale"
    ]
    info = {
        "model_type": "mlProgram",
        "specification_version": 9,
        "inputs": [{"name": "x", "shape": [1, 6, 100], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [1, 4], "dtype": "float16"}],
        "operations": {"conv": 1, "constexpr_blockwise_shift_scale": 1},
    }
    found = cm.problems(info, "iOS17", [("imu", [1, 6, 100])], [("logits", [1, 4])])
    assert "spec version 9 is newer than iOS17's (8)" in found
    assert "operations constexpr_blockwise_shift_scale are not in iOS17's Core ML" in found
    assert any(p.startswith("inputs [('x', [1, 6, 100])], expected [('imu'") for p in found)
    assert "output logits is float16, expected float32" in found


def test_artifact_bundles_with_the_package_folder(built: dict[str, Path], tmp_path: Path) -> None:
    from registry.bundle import Bundle, make_bundle
    from registry.keys import KeyStore

    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    bundle = make_bundle(built["coreml_int8w"], store, tmp_path / "bundles")
    files = {e["path"] for e in Bundle.open(bundle.path).manifest["files"]}
    assert "model/model.mlpackage/Manifest.json" in files
    assert any(f.endswith("weights/weight.bin") for f in files)


def test_target_session_reproduces_the_smoke_output(built: dict[str, Path]) -> None:
    from orchestrator.core.model_file import ModelFile
    from targets.base import get_target

    art = built["coreml_fp16"]
    spec = compose(["deployment=posture_phone_coreml"], ROOT)
    session = get_target(spec.config.target, spec.config.model).load(
        ModelFile(art / "model" / "model.mlpackage", "mlpackage", "fp16")
    )
    feed = dict(np.load(art / "smoke" / "input.npz"))
    expected = np.load(art / "smoke" / "expected.npz")
    np.testing.assert_allclose(session.run(feed)[0], expected["logits"], atol=1e-3)


@pytest.mark.skipif(
    platform.system() != "Darwin",
    reason="Core ML predicts only on macOS (coremltools: 'Model prediction is only supported "
    "on macOS'); a macOS lab device runs this runner",
)
def test_coreml_device_runner_predicts_on_macos(built: dict[str, Path]) -> None:
    from orchestrator.device.agent import runners

    result = runners.smoke_check(str(built["coreml_fp16"]))
    assert result["result"] == "pass", result


@pytest.mark.skipif(platform.system() == "Darwin", reason="off macOS only")
def test_coreml_device_runner_says_core_ml_needs_macos(built: dict[str, Path]) -> None:
    from orchestrator.device.agent import runners

    result = runners.smoke_check(str(built["coreml_fp16"]))
    assert (result["result"], result["unavailable"]) == ("fail", True)
    assert result["reason"].startswith("Core ML predicts only on macOS")
