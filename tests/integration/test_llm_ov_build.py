"""The assistant LLM on the NUC: Hugging Face folder -> stateful OpenVINO IR with OpenVINO
tokenizers (optimum-intel, in its tool environment) -> NNCF INT8 weights -> teacher-forced
validation -> a signed bundle whose device health check generates with OpenVINO GenAI.

optimum-intel lives in its own tool environment (``edgeship toolenv install optimum-intel``);
without it this test skips, naming the command. The model folder is trained once
(``edgeship train model=assistant_llm``) and reused.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from orchestrator.build import reference
from orchestrator.core import toolenv
from orchestrator.device.agent.runners import smoke_check
from orchestrator.spec.compose import compose, load_option

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _optimum_intel_environment(isolated: Path) -> None:
    reason = toolenv.unavailable_reason("optimum-intel")
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install optimum-intel`)")
    reference.ensure_weights(load_option("model", "assistant_llm", ROOT), ROOT)


def test_assistant_llm_nuc_builds_int8_and_its_signed_bundle_generates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_devices: list
) -> None:
    from orchestrator.build.pipeline import run_build
    from registry.bundle import Bundle, make_bundle
    from registry.keys import KeyStore

    art = run_build(compose(["deployment=assistant_llm_nuc"], ROOT), record=False).artifact_dir
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["teacher_forced_agreement"] >= 0.95 and metrics["tokenizer_exact"] == 1.0
    assert metrics["openvino_tokenizer_exact"] == 1.0  # what LLMPipeline encodes text with
    assert 0 < metrics["step1_max_abs_error"] < 0.5  # NNCF INT8 weights: close, not equal
    assert metrics["genai_exact"] == 1.0  # LLMPipeline's greedy tokens are the loop's
    assert metrics["reference_perplexity"] > 1 and metrics["heldout_tokens"] > 0
    assert abs(metrics["perplexity_ratio"] - 1) < 0.05  # on the held-out exchanges
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["target"]["runtime"] == "openvino" and runtime["model"]["precision"] == "int8"
    assert runtime["model"]["file"] == "model/openvino_model.xml"
    assert runtime["settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert runtime["settings"]["KV_CACHE_PRECISION"] == "f32"
    assert runtime["generation"]["execution"]["INFERENCE_PRECISION_HINT"] == "f32"
    names = {Path(f).name for f in runtime["model"]["files"]}
    assert {"openvino_tokenizer.xml", "openvino_detokenizer.xml", "export.json"} <= names
    export = json.loads((art / "model" / "export.json").read_text())
    assert export["toolenv"]["name"] == "optimum-intel" and export["toolenv"]["lock"]
    assert export["stateful"] and "beam_idx" in export["inputs"]
    assert export["versions"]["optimum-intel"]

    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    bundle = make_bundle(art, store, tmp_path / "bundles", allow_dirty=True).path
    files = {e["path"] for e in Bundle.open(bundle).manifest["files"]}  # signed, all of them
    assert {"model/openvino_model.bin", "model/openvino_tokenizer.bin", "smoke/smoke.json"} <= files
    health = smoke_check(str(bundle))
    assert health["result"] == "pass", health
    assert health["runtime"]["name"] == "openvino-genai"
    assert health["generation"]["tokens"] == health["generation"]["expected"]

    with monkeypatch.context() as m:  # a device without OpenVINO GenAI: the stateful loop
        m.setitem(sys.modules, "openvino_genai", None)
        plain = smoke_check(str(bundle))
    assert plain["result"] == "pass" and plain["runtime"]["name"] == "openvino", plain
    assert plain["runtime"]["execution"]["KV_CACHE_PRECISION"] == "f32"

    # a simulated NUC (real sshd on loopback): the fleet path, the device agent's checks and
    # its health check by generation on the device, before the version is activated
    from tests.sshd import ShipLab

    lab = ShipLab(tmp_path / "lab", ssh_devices[:1], art, {ssh_devices[0].name: "intel_nuc"})
    name = ssh_devices[0].name
    assert lab.enroll([name]).outcomes[0].result == "enrolled"
    shipped = lab.deploy(lab.bundle(allow_dirty=True), [name]).outcomes[0]
    assert shipped.result == "activated", shipped.summary()
    assert shipped.health and shipped.health["result"] == "pass", shipped.health
    assert shipped.health["generation"]["tokens"] == shipped.health["generation"]["expected"]
    assert lab.status(name)["deployment"] == "assistant_llm_nuc"

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    smoke = broken / "smoke" / "smoke.json"
    data = json.loads(smoke.read_text())
    data["generation"]["expected_tokens"][5] += 1
    smoke.write_text(json.dumps(data))
    failed = smoke_check(str(broken))
    assert failed["result"] == "fail" and "first difference at step 5" in failed["reason"]
