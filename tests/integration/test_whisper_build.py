"""Dictation on the NUC: Whisper folder -> OpenVINO GenAI folder (optimum-intel, in its tool
environment) -> NNCF INT8 weights -> validation with WhisperPipeline -> a signed bundle whose
device health check transcribes the shipped clip.

optimum-intel lives in its own tool environment (``edgeship toolenv install optimum-intel``);
without it, without OpenVINO GenAI, espeak-ng or Whisper's vocabulary these tests skip,
naming the install command. The trained model folder (``edgeship train
model=dictation_whisper``, minutes on two threads) is used when it exists; otherwise a few
training steps make a stand-in folder here (it does not transcribe: the build path, parity
and the health check are what is tested, not the word error rate).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.core import toolenv
from orchestrator.device.agent.runners import smoke_check
from orchestrator.spec.compose import compose

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "models" / "dictation_whisper"
# four clips, and gates on parity rather than on how well the model was trained (the
# deployment's word error rate gates hold for the trained model on its sixteen clips)
FAST = [
    "model.data.eval.args.trained=2",
    "model.data.eval.args.held_out=2",
    "deployment.gates=['teacher_forced_agreement>=0.9','wer_vs_reference<=0.25']",
]


@pytest.fixture(autouse=True)
def _tools(isolated: Path) -> None:
    _skip_without_tools()


def _skip_without_tools() -> None:
    reason = toolenv.unavailable_reason("optimum-intel")
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install optimum-intel`)")
    pytest.importorskip("openvino_genai", reason="install it with: pip install openvino-genai")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (install it with: apt-get install espeak-ng)")
    from examples.dictation_whisper.tokenizer import vocabulary_file

    try:
        vocabulary_file()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def model_overrides(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The trained folder, or a stand-in trained for a few steps."""
    _skip_without_tools()  # set up before the autouse check: training needs espeak-ng too
    if (TRAINED / "config.json").is_file():
        return []
    from examples.dictation_whisper.train import train

    folder = tmp_path_factory.mktemp("whisper") / "dictation_whisper"
    train(folder, steps=4, cycles=1, batch=4, sentences=4)
    return [f"model.source.path={folder}"]


def test_dictation_whisper_nuc_builds_and_its_signed_bundle_transcribes(
    tmp_path: Path,
    model_overrides: list[str],
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
    ssh_devices: list,
) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.build.pipeline import run_build
    from registry.bundle import make_bundle
    from registry.keys import KeyStore

    spec = compose(["deployment=dictation_whisper_nuc", *FAST, *model_overrides], ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    build = run_build(spec)
    art = build.artifact_dir
    # recorded in MLflow like any build: metrics, the clips as a dataset, a version
    assert build.run_id and build.model_version
    run = MlflowClient(mlflow_server).get_run(build.run_id)
    assert run.data.metrics["real_time_factor"] > 0 and "wer" in run.data.metrics
    datasets = [d.dataset.name for d in run.inputs.dataset_inputs]
    assert datasets == ["dictation_whisper-clips"], datasets
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["teacher_forced_agreement"] >= 0.9 and metrics["real_time_factor"] > 0
    assert 0 < metrics["step1_max_abs_error"] < 1.0  # INT8 weights: close, not equal
    for name in ("wer", "reference_wer", "wer_vs_reference", "heldout_wer", "peak_memory_mb"):
        assert name in metrics
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["task"] == "speech-recognition" and runtime["model"]["precision"] == "int8"
    assert runtime["speech"]["language"] == "<|en|>"
    # the whole OpenVINO GenAI folder travels: both models, tokenizer IRs, configs, records
    names = {Path(f).name for f in runtime["model"]["files"]}
    assert {
        "openvino_encoder_model.xml",
        "openvino_decoder_model.xml",
        "openvino_tokenizer.xml",
        "openvino_detokenizer.xml",
        "generation_config.json",
        "preprocessor_config.json",
        "export.json",
        "compression.json",
    } <= names
    export = json.loads((art / "model" / "export.json").read_text())
    assert export["toolenv"]["name"] == "optimum-intel" and export["toolenv"]["lock"]

    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    bundle = make_bundle(art, store, tmp_path / "bundles", allow_dirty=True)
    health = smoke_check(str(bundle.path))
    assert health["result"] == "pass", health
    assert health["runtime"]["name"] == "openvino-genai"
    assert health["speech"]["tokens"] == health["speech"]["expected"]

    # deployed to a simulated NUC (real sshd on loopback): the device's agent transcribes the
    # shipped clip before it activates the version
    from tests.sshd import ShipLab

    device = ssh_devices[0].name
    lab = ShipLab(tmp_path / "lab", ssh_devices[:1], art, {device: "intel_nuc"})
    assert lab.enroll([device]).outcomes[0].result == "enrolled"
    shipped = lab.deploy(lab.bundle(allow_dirty=True), [device]).outcomes[0]
    assert shipped.result == "activated", shipped.summary()
    assert shipped.health and shipped.health["result"] == "pass", shipped.health
    assert shipped.health["speech"]["tokens"] == shipped.health["speech"]["expected"]

    smoke = bundle.path / "smoke" / "smoke.json"
    data = json.loads(smoke.read_text())
    data["speech"]["expected_tokens"][1] += 1
    smoke.write_text(json.dumps(data))
    broken = smoke_check(str(bundle.path))
    assert broken["result"] == "fail" and "first difference at step 1" in broken["reason"]


def test_the_speech_reference_is_kept_once_and_read_back(
    tmp_path: Path, model_overrides: list[str]
) -> None:
    """``edgeship reference`` for a speech model: transcripts and step-1 logits kept in
    ``references/<model>/``, and a second call reads them instead of transcribing again."""
    from orchestrator.build import kept_reference, store_reference

    model = compose(["deployment=dictation_whisper_nuc", *model_overrides, *FAST], ROOT)
    model = model.config.model
    model.source.path = str((ROOT / model.source.path).resolve())  # the project: tmp_path
    path, summary, computed = store_reference.compute_and_store(model, tmp_path, 2)
    assert computed and path == tmp_path / "references" / "dictation_whisper" / "reference.npz"
    assert summary["task"] == "speech-recognition" and len(summary["texts"]) == 4
    assert summary["clips"] == 4 and summary["real_time_factor"] > 0
    again_path, again, computed = store_reference.compute_and_store(model, tmp_path, 2)
    assert not computed and again_path == path and again["key"] == summary["key"]
    found = kept_reference.find(tmp_path, "dictation_whisper", summary["key"])
    assert found is not None and found.stored and found.meta["texts"] == summary["texts"]
