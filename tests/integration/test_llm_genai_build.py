"""The assistant LLM on a server, built by onnxruntime-genai's own model builder (the
``ortgenai_build`` pass, in the ``ort-genai`` tool environment): validated with the device's
KV-cache loop in edgeship's ONNX Runtime, measured with onnxruntime-genai's generator in
the tool environment, bundled, and deployed to a simulated server (real sshd on loopback)
whose agent runs on the tool environment's Python, where ``onnxruntime_genai`` imports:
its health check generates with onnxruntime-genai.

Without the ``ort-genai`` tool environment (``edgeship toolenv install ort-genai``) these
tests skip, naming the command. The model folder is trained once
(``edgeship train model=assistant_llm``) and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.build import reference
from orchestrator.core import toolenv
from orchestrator.device.agent.runners import smoke_check
from orchestrator.spec.compose import compose, load_option

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOOL = "ort-genai"


@pytest.fixture(autouse=True)
def _ort_genai_environment(isolated: Path) -> None:
    reason = toolenv.unavailable_reason(TOOL)
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install {TOOL}`)")
    reference.ensure_weights(load_option("model", "assistant_llm", ROOT), ROOT)


def test_genai_int4_build_is_validated_measured_and_generates_with_genai_on_the_device(
    tmp_path: Path, ssh_devices: list
) -> None:
    from orchestrator.build.pipeline import run_build

    spec = compose(["deployment=assistant_llm_server", "recipe=llm_genai_int4w"], ROOT)
    art = run_build(spec, record=False).artifact_dir
    metrics = json.loads((art / "metrics.json").read_text())
    # the builder's graph decodes in edgeship's ONNX Runtime with the device's loop...
    assert metrics["teacher_forced_agreement"] >= 0.95 and metrics["tokenizer_exact"] == 1.0
    assert 0 < metrics["step1_max_abs_error"] < 0.5  # INT4 weights: close, not equal
    # ...and onnxruntime-genai's generator, in its tool environment, gives the same tokens
    assert metrics["genai_exact"] == 1.0
    assert metrics["genai_tokens_per_s"] > 0 and metrics["genai_ttft_ms"] > 0
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["precision"] == "int4"
    names = {Path(f).name for f in runtime["model"]["files"]}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= names
    export = json.loads((art / "model" / "export.json").read_text())
    assert export["exporter"] == "onnxruntime-genai model builder"
    assert export["toolenv"]["name"] == TOOL and export["toolenv"]["lock"]
    assert export["versions"]["onnxruntime-genai"] == "0.18.0"
    assert "position_ids" not in export["inputs"] and "present.0.key" in export["outputs"]
    validation = json.loads((art / "validation.json").read_text())
    measured_genai = validation["details"]["generation"]["genai"]
    assert (
        measured_genai["runtime"] == "onnxruntime-genai" and measured_genai["version"] == "0.18.0"
    )
    assert measured_genai["toolenv"]["name"] == TOOL and measured_genai["toolenv"]["lock"]

    # this machine's environment has no onnxruntime_genai: the loop in ONNX Runtime
    local = smoke_check(str(art))
    assert local["result"] == "pass" and local["runtime"]["name"] == "onnxruntime", local

    _deploy_to_a_genai_server(tmp_path, ssh_devices, art)


def test_optimum_int8_build_is_measured_with_genai_and_generates_with_it_on_the_device(
    tmp_path: Path, ssh_devices: list
) -> None:
    """The deployment's own recipe (optimum-onnx export, MatMulNBits INT8, genai_config.json
    written by ``ortgenai_config``): the same folder runs in onnxruntime-genai."""
    from orchestrator.build.pipeline import run_build

    reason = toolenv.unavailable_reason("optimum-onnx")
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install optimum-onnx`)")
    art = run_build(compose(["deployment=assistant_llm_server"], ROOT), record=False).artifact_dir
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["teacher_forced_agreement"] >= 0.95 and metrics["genai_exact"] == 1.0
    _deploy_to_a_genai_server(tmp_path, ssh_devices, art)


def _deploy_to_a_genai_server(tmp_path: Path, ssh_devices: list, art: Path) -> None:
    """A server whose agent runs on the tool environment's Python (onnxruntime 1.32 and
    onnxruntime-genai 0.18): the signed bundle's health check generates with the
    generator, and gets the tokens the build's loop got."""
    from tests.sshd import ShipLab

    python = str(toolenv.toolenv(TOOL))
    lab = ShipLab(tmp_path / "lab", ssh_devices[:1], art, python=python)
    name = ssh_devices[0].name
    assert lab.enroll([name]).outcomes[0].result == "enrolled"
    shipped = lab.deploy(lab.bundle(allow_dirty=True), [name]).outcomes[0]
    assert shipped.result == "activated", shipped.summary()
    assert shipped.health and shipped.health["result"] == "pass", shipped.health
    assert shipped.health["runtime"]["name"] == "onnxruntime-genai", shipped.health["runtime"]
    assert shipped.health["runtime"]["version"] == "0.18.0"
    assert shipped.health["generation"]["tokens"] == shipped.health["generation"]["expected"]
    assert lab.status(name)["deployment"] == "assistant_llm_server"
