"""LiteRT and ExecuTorch end to end: the movement classifier (INT8) and the 3-D U-Net (the
rewrite of its 3-D convolutions first) built and validated for both phone runtimes, run
through the device runners; the U-Net without the rewrite refused at build; one bundle
signed and smoke-tested as a phone would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.device.agent import runners
from orchestrator.errors import ExitCode
from tests.conftest import build_once

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAST = ["deployment.validation.latency_runs=5", "deployment.validation.latency_warmup=1"]
CT_FAST = [*FAST, "model.data.eval.args.samples=2"]


@pytest.fixture(scope="module")
def posture_litert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("litert_torch")
    return build_once(["deployment=posture_phone_litert", *FAST], tmp_path_factory.mktemp("pl"))


@pytest.fixture(scope="module")
def posture_executorch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("executorch")
    return build_once(["deployment=posture_phone_executorch", *FAST], tmp_path_factory.mktemp("pe"))


def _runtime(artifact: Path) -> dict:
    return dict(json.loads((artifact / "runtime.json").read_text()))


def _validation(artifact: Path) -> dict:
    return dict(json.loads((artifact / "validation.json").read_text()))


def _smoke_passes(folder: Path, runtime: str) -> dict:
    report = runners.smoke_check(str(folder))
    assert report["result"] == "pass", report
    assert report["runner"] == runtime and report["runtime"]["name"] == runtime
    return report


def test_mobile_posture_litert_int8_passes_posture_phones_gates(posture_litert: Path) -> None:
    from orchestrator.passes.litert.ops import model_ops, op_counts

    runtime = _runtime(posture_litert)
    assert runtime["model"] == runtime["model"] | {"format": "tflite", "precision": "int8"}
    assert runtime["target"]["family"] == "android_litert"
    settings = runtime["settings"]
    assert settings["signature_inputs"] == ["args_0"] and settings["delegate"] == "XNNPACK"
    assert settings["validation"]["device_validated"] is False
    validation = _validation(posture_litert)
    assert validation["passed"] and validation["metrics"]["device_validated"] == 0.0
    assert validation["metrics"]["agreement"] >= 0.95
    counts = op_counts(model_ops(posture_litert / runtime["model"]["file"]))
    assert counts.get("CONV_2D/INT8") and not any(k.startswith("STABLEHLO") for k in counts)
    _smoke_passes(posture_litert, "litert")


def test_mobile_posture_executorch_int8_passes_posture_phones_gates(
    posture_executorch: Path,
) -> None:
    runtime = _runtime(posture_executorch)
    assert runtime["model"] == runtime["model"] | {"format": "pte", "precision": "int8"}
    assert runtime["settings"]["method"] == "forward"
    validation = _validation(posture_executorch)
    assert validation["passed"] and validation["metrics"]["agreement"] >= 0.95
    report = _smoke_passes(posture_executorch, "executorch")
    assert report["runtime"]["method"] == "forward"


@pytest.mark.parametrize(
    "deployment, runtime",
    [("ct_seg_phone_litert", "litert"), ("ct_seg_phone_executorch", "executorch")],
)
def test_mobile_ct_seg_with_the_rewrite_keeps_parity(
    deployment: str, runtime: str, tmp_path: Path
) -> None:
    pytest.importorskip("litert_torch" if runtime == "litert" else "executorch")
    artifact = build_once([f"deployment={deployment}", *CT_FAST], tmp_path)
    validation = _validation(artifact)
    assert validation["passed"], validation["gates"]
    assert validation["metrics"]["dice_vs_reference"] >= 0.99
    assert validation["metrics"]["max_abs_error"] < 1e-2
    assert _runtime(artifact)["model"]["format"] == ("tflite" if runtime == "litert" else "pte")
    _smoke_passes(artifact, runtime)


def test_mobile_ct_seg_without_the_rewrite_is_refused_for_litert(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("litert_torch")
    code = main(
        ["build", "--no-record", "deployment=ct_seg_phone_litert", "recipe=litert_fp32", *FAST]
    )
    err = capsys.readouterr().err
    assert code == ExitCode.FAILED
    assert (
        "litert_convert: model.tflite has operators LiteRT cannot run on a phone "
        "(STABLEHLO_CONVOLUTION); put the pass 'conv3d_to_2d' first in the recipe" in err
    )
    assert "STABLEHLO_CONVOLUTION: a StableHLO operator" in err
    assert not (isolated / "artifacts" / "ct_seg_phone_litert").exists()


def test_mobile_bundle_of_the_litert_artifact_runs_as_a_phone_runs_it(
    posture_litert: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(posture_litert.parent))
    monkeypatch.setenv("EDGESHIP_BUNDLES", str(tmp_path / "bundles"))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    assert main(["keys", "init"]) == 0
    assert main(["bundle", "deployment=posture_phone_litert"]) == 0
    assert "posture_phone_litert: bundle version 1" in capsys.readouterr().out
    bundle = tmp_path / "bundles" / "posture_phone_litert" / "1"
    assert (bundle / "manifest.json").is_file() and (bundle / "model" / "model.tflite").is_file()
    report = _smoke_passes(bundle, "litert")
    assert report["argmax_agreement"] == 1.0
    assert os.path.basename(report["runtime"]["signature"]) == "serving_default"
