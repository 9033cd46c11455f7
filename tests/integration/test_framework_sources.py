"""Models kept in a framework's folder build end to end from a team's project: a Hugging Face
folder (transformers, no hub access) and MONAI bundles (a state_dict with its network_def,
and a TorchScript bundle), on ONNX Runtime and OpenVINO, with their lineage recorded."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.pipeline import run_build
from orchestrator.build.sources import tree_sha256
from orchestrator.core.model_file import sha256_file
from orchestrator.errors import BuildError, SpecError
from orchestrator.spec.compose import compose

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

DATA = '''
import numpy as np


def notes(samples=6, length=16, vocab=100):
    """Token ids of short clinical notes (synthetic), an attention mask, a class each."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, (samples, length)).astype("int64")
    mask = np.ones((samples, length), "int64")
    mask[:, length - 4 :] = 0  # padded tails
    return {"input_ids": ids, "attention_mask": mask}, rng.integers(0, 3, samples)


def volumes(samples=2, size=32):
    """CT-like patches: a bright sphere in noise, and its mask as the label."""
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    x = rng.normal(0, 0.1, (samples, 1, size, size, size)).astype("float32")
    labels = []
    for i in range(samples):
        centre = rng.integers(10, size - 10, 3)[:, None, None, None]
        inside = ((grid - centre) ** 2).sum(0) < 36
        x[i, 0][inside] += 1.0
        labels.append(inside.astype("int64"))
    return x, np.stack(labels)
'''

NETWORK_DEF = {
    "_target_": "DynUNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "kernel_size": [3, 3, 3],
    "strides": [1, 2, 2],
    "upsample_kernel_size": [2, 2],
    "filters": [8, 16, 32],
}

METADATA = {
    "name": "spleen_ct_tiny",
    "version": "0.2.0",
    "monai_version": "1.6.1",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
        "outputs": {"pred": {"type": "image", "num_channels": 2, "spatial_shape": [32, 32, 32]}},
    },
}


def _model_yaml(name: str, source: str, pkg: str, kind: str) -> str:
    if kind == "text":
        body = f"""
            task: classification
            inputs:
              - name: input_ids
                shape: [batch, 16]
                dtype: int64
                dynamic: {{batch: {{min: 1, opt: 2, max: 8}}}}
              - name: attention_mask
                shape: [batch, 16]
                dtype: int64
                dynamic: {{batch: {{min: 1, opt: 2, max: 8}}}}
            outputs:
              - {{name: logits, shape: [batch, 3]}}
            labels: [routine, follow_up, urgent]
            data:
              eval: {{fn: {pkg}.data:notes}}
            """
    else:
        body = f"""
            task: segmentation
            inputs:
              - {{name: image, shape: [1, 1, 32, 32, 32]}}
            outputs:
              - {{name: pred, shape: [1, 2, 32, 32, 32]}}
            labels: [background, spleen]
            data:
              eval: {{fn: {pkg}.data:volumes}}
            """
    return f"name: {name}\n" + textwrap.dedent(body).lstrip() + textwrap.dedent(source)


def _deployment(name: str, model: str, recipe: str, target: str, gates: list[str]) -> str:
    return (
        "# @package _global_\ndefaults:\n"
        f"  - override /model: {model}\n  - override /recipe: {recipe}\n"
        f"  - override /target: {target}\n  - _self_\n\n"
        f"deployment:\n  name: {name}\n  gates: [{', '.join(gates)}]\n"
        "  validation: {latency_warmup: 1, latency_runs: 3}\n"
    )


class Project:
    """A project with a Hugging Face folder and two MONAI bundles under models/."""

    def __init__(self, tmp: Path) -> None:
        import torch
        import transformers
        from monai.bundle import ConfigParser

        self.root = tmp / "project"
        self.pkg = f"fwmodels_{uuid.uuid4().hex[:8]}"
        conf = self.root / "conf"
        for group in ("recipe", "target"):
            shutil.copytree(ROOT / "conf" / group, conf / group)
        shutil.copy(ROOT / "conf" / "config.yaml", conf / "config.yaml")
        (conf / "model").mkdir()
        (conf / "deployment").mkdir()
        (self.root / self.pkg).mkdir(parents=True)
        (self.root / self.pkg / "__init__.py").write_text("")
        (self.root / self.pkg / "data.py").write_text(DATA)

        # a Hugging Face folder as save_pretrained writes it
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            num_labels=3,
        )
        transformers.BertForSequenceClassification(config).save_pretrained(
            self.root / "models" / "note_triage"
        )

        # a MONAI bundle: metadata, the inference config's network_def, the state_dict
        bundle = self.root / "models" / "spleen_bundle"
        (bundle / "configs").mkdir(parents=True)
        (bundle / "models").mkdir()
        (bundle / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
        inference = {"imports": ["$import monai"], "network_def": NETWORK_DEF}
        (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
        parser = ConfigParser({"network_def": NETWORK_DEF})
        self.net = parser.get_parsed_content("network_def").eval()
        torch.save(self.net.state_dict(), bundle / "models" / "model.pt")

        # the same network as a TorchScript bundle (no config needed to build it)
        ts = self.root / "models" / "spleen_ts_bundle"
        (ts / "configs").mkdir(parents=True)
        (ts / "models").mkdir()
        (ts / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
        example = torch.zeros(1, 1, 32, 32, 32)
        torch.jit.save(torch.jit.trace(self.net, example), str(ts / "models" / "model.ts"))

        self.model("note_triage", "text", "kind: huggingface\npath: models/note_triage")
        self.model("spleen", "volume", "kind: monai_bundle\npath: models/spleen_bundle")
        self.model("spleen_ts", "volume", "kind: monai_bundle\npath: models/spleen_ts_bundle")
        text_gates = ["agreement >= 0.99", "max_abs_error <= 0.001"]
        seg_gates = ["dice_vs_reference >= 0.98", "max_abs_error <= 0.001"]
        for name, model, recipe, target, gates in (
            ("note_server", "note_triage", "ort_fp32", "server", text_gates),
            ("note_nuc", "note_triage", "ov_fp32", "intel_nuc", text_gates),
            ("spleen_server", "spleen", "ort_fp32", "server", seg_gates),
            ("spleen_nuc", "spleen", "ov_fp32", "intel_nuc", seg_gates),
        ):
            (conf / "deployment" / f"{name}.yaml").write_text(
                _deployment(name, model, recipe, target, gates)
            )
        sys.path.insert(0, str(self.root))

    def model(self, name: str, kind: str, source: str) -> None:
        body = "source:\n" + textwrap.indent(source, "  ") + "\n"
        (self.root / "conf" / "model" / f"{name}.yaml").write_text(
            _model_yaml(name, body, self.pkg, kind)
        )

    def close(self) -> None:
        sys.path.remove(str(self.root))
        for name in [m for m in sys.modules if m.split(".")[0] == self.pkg]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = Project(tmp_path_factory.mktemp("frameworks"))
    yield p
    p.close()


@pytest.fixture
def env(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.setenv("EDGESHIP_ROOT", str(project.root))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return project


def _build(
    project: Project, *overrides: str, record: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    result = run_build(compose(list(overrides), project.root), record=record)
    assert result.passed
    build = json.loads((result.artifact_dir / "build.json").read_text())
    metrics = json.loads((result.artifact_dir / "metrics.json").read_text())
    return build, metrics


@pytest.mark.parametrize("deployment", ["note_server", "note_nuc"])
def test_huggingface_folder_builds_on_both_runtimes_offline(env: Project, deployment: str) -> None:
    import os

    import transformers

    build, metrics = _build(env, f"deployment={deployment}")
    assert metrics["agreement"] == 1.0 and metrics["max_abs_error"] <= 1e-3
    source = build["source"]
    folder = env.root / "models" / "note_triage"
    assert source["kind"] == "huggingface" and source["format"] == "huggingface"
    assert source["sha256"] == tree_sha256(folder)
    assert source["huggingface"]["class"] == "BertForSequenceClassification"
    assert source["huggingface"]["model_type"] == "bert"
    assert source["packages"] == {"transformers": transformers.__version__}
    files = {f["key"]: f["path"] for f in source["files"]}
    assert files["model.source.path/config.json"] == "models/note_triage/config.json"
    assert files["model.source.path/model.safetensors"] == "models/note_triage/model.safetensors"
    assert source["folder"] == "models/note_triage"
    assert "HF_HUB_OFFLINE" not in os.environ  # switched off only while the folder loads


def test_huggingface_auto_class_and_unknown_output_name(env: Project) -> None:
    env.model(
        "note_auto",
        "text",
        "kind: huggingface\npath: models/note_triage\n"
        "auto_class: AutoModelForSequenceClassification",
    )
    build, _ = _build(env, "deployment=note_server", "model=note_auto")
    assert build["source"]["huggingface"]["class"] == "AutoModelForSequenceClassification"

    text = (env.root / "conf" / "model" / "note_auto.yaml").read_text()
    (env.root / "conf" / "model" / "note_hidden.yaml").write_text(
        text.replace("name: logits", "name: pooled").replace("name: note_auto", "name: note_hidden")
    )
    with pytest.raises(BuildError) as info:
        run_build(compose(["deployment=note_server", "model=note_hidden"], env.root), record=False)
    assert "returns ['logits']; model.outputs name ['pooled']" in str(info.value)


@pytest.mark.parametrize("deployment", ["spleen_server", "spleen_nuc"])
def test_monai_bundle_builds_a_dynunet_on_both_runtimes(env: Project, deployment: str) -> None:
    import monai
    from mlflow.tracking import MlflowClient

    build, metrics = _build(env, f"deployment={deployment}", record=True)
    assert metrics["dice_vs_reference"] >= 0.98
    source = build["source"]
    assert source["kind"] == "monai_bundle" and source["format"] == "monai_bundle:state_dict"
    assert source["sha256"] == tree_sha256(env.root / "models" / "spleen_bundle")
    assert source["monai_bundle"]["name"] == "spleen_ct_tiny"
    assert source["monai_bundle"]["version"] == "0.2.0"
    assert source["packages"]["monai"] == monai.__version__
    assert source["config"] == "inference.json"
    keys = {f["key"]: f["path"] for f in source["files"]}
    assert keys["model.source.path/models/model.pt"] == "models/spleen_bundle/models/model.pt"
    run = MlflowClient().get_run(build["mlflow"]["run_id"])
    assert run.data.params["package.monai"] == monai.__version__
    assert run.data.tags["edgeship.source.folder"] == "models/spleen_bundle"
    assert run.data.tags["edgeship.source.kind"] == "monai_bundle"
    weights = run.data.params["file.model.source.path/models/model.pt.sha256"]
    assert weights == sha256_file(env.root / "models" / "spleen_bundle" / "models" / "model.pt")


def test_monai_torchscript_bundle_matches_the_state_dict_bundle(env: Project) -> None:
    build, metrics = _build(env, "deployment=spleen_server", "model=spleen_ts")
    assert build["source"]["format"] == "monai_bundle:torchscript"
    assert metrics["dice_vs_reference"] >= 0.98


def test_monai_bundle_for_another_signature_fails_before_the_network_is_built(
    env: Project,
) -> None:
    text = (env.root / "conf" / "model" / "spleen.yaml").read_text()
    (env.root / "conf" / "model" / "spleen_rgb.yaml").write_text(
        text.replace("[1, 1, 32, 32, 32]", "[1, 3, 32, 32, 32]").replace(
            "name: spleen", "name: spleen_rgb"
        )
    )
    with pytest.raises(BuildError) as info:
        run_build(compose(["deployment=spleen_server", "model=spleen_rgb"], env.root), record=False)
    assert (
        "model.inputs[0].shape: [1, 3, 32, 32, 32] has 3 channel(s); models/spleen_bundle/"
        "configs/metadata.json network_data_format says inputs 'image' has 1"
    ) in str(info.value)


def test_an_incomplete_bundle_folder_is_a_spec_error_naming_what_is_missing(
    env: Project, tmp_path: Path
) -> None:
    broken = env.root / "models" / "half_bundle"
    (broken / "configs").mkdir(parents=True, exist_ok=True)
    env.model("half", "volume", "kind: monai_bundle\npath: models/half_bundle")
    with pytest.raises(SpecError) as info:
        run_build(compose(["deployment=spleen_server", "model=half"], env.root), record=False)
    text = str(info.value)
    assert "conf/model/half.yaml: model.source.path: folder models/half_bundle has no " in text
    assert "configs/metadata.json" in text and "models/model.pt (or models/model.ts)" in text
    assert not (tmp_path / "artifacts").exists()  # nothing written
