"""Every model source kind builds end to end from a user's project, with its lineage recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.build import reference
from orchestrator.build.pipeline import run_build
from orchestrator.core.model_file import sha256_file
from orchestrator.spec.compose import compose, load_option
from tests.userproject import UserProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserProject]:
    p = UserProject(tmp_path)
    monkeypatch.setenv("EDGESHIP_ROOT", str(p.root))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # the client's global state, set by any earlier build
    mlflow.set_registry_uri(uri)
    yield p
    p.close()


def _build(project: UserProject, model: str, record: bool = False) -> dict[str, Any]:
    spec = compose(["deployment=tiny_server", f"model={model}"], project.root)
    result = run_build(spec, record=record)
    assert result.passed
    build = json.loads((result.artifact_dir / "build.json").read_text())
    build["_artifact"] = result.artifact_dir
    return build


def _x() -> Any:
    import torch

    return torch.zeros(1, 6, 20)


def test_source_pytorch_factory_records_weights_code_and_packages(project: UserProject) -> None:
    from mlflow.tracking import MlflowClient

    reference.ensure_weights(load_option("model", "tiny", project.root), project.root)
    build = _build(project, "tiny", record=True)
    weights = project.root / "models" / "tiny.pt"
    source = build["source"]
    assert source["kind"] == "pytorch" and source["format"] == "state_dict"
    assert source["sha256"] == sha256_file(weights)
    keys = {f["key"]: f for f in source["files"]}
    assert keys["model.source.weights"]["path"] == "models/tiny.pt"
    assert keys["model.source.factory"]["path"] == f"{project.pkg}/model.py"
    assert keys["model.source.factory"]["git"] == "not-in-git"
    code = build["code"]
    assert {f["key"] for f in code["files"]} >= {"model.source.factory", "model.data.eval"}
    assert f"{project.pkg}.model" in code["modules"]
    assert set(code["packages"]) >= {"torch", "numpy"}
    assert "onnx" not in code["packages"]  # edgeship's own imports are not the model's
    run = MlflowClient().get_run(build["mlflow"]["run_id"])
    assert run.data.tags["edgeship.source.sha256"] == sha256_file(weights)
    assert run.data.params["package.torch"] == code["packages"]["torch"]
    assert run.data.params["file.model.source.weights.sha256"] == sha256_file(weights)


def test_source_pytorch_torchscript_file(project: UserProject) -> None:
    import torch

    path = project.root / "models" / "tiny.ts"
    torch.jit.save(torch.jit.trace(project.net(), _x()), str(path))
    project.model("tiny_ts", "kind: pytorch\npath: models/tiny.ts")
    source = _build(project, "tiny_ts")["source"]
    assert source["format"] == "torchscript"
    assert source["sha256"] == sha256_file(path)


def test_source_pytorch_torch_export_archive(project: UserProject) -> None:
    import torch

    path = project.root / "models" / "tiny.pt2"
    torch.export.save(torch.export.export(project.net(), (_x(),)), str(path))
    project.model("tiny_pt2", "kind: pytorch\npath: models/tiny.pt2")
    source = _build(project, "tiny_pt2")["source"]
    assert source["format"] == "torch_export"
    assert source["sha256"] == sha256_file(path)


def _onnx_file(project: UserProject, path: Path) -> None:
    import torch

    program = torch.onnx.export(
        project.net(), (_x(),), dynamo=True, input_names=["x"], output_names=["logits"]
    )
    program.save(str(path), external_data=False)


def test_source_onnx_file_is_the_reference_and_the_export(project: UserProject) -> None:
    import onnxruntime as ort

    path = project.root / "models" / "tiny.onnx"
    _onnx_file(project, path)
    project.model("tiny_onnx", "kind: onnx\npath: models/tiny.onnx")
    build = _build(project, "tiny_onnx")
    assert build["source"]["kind"] == "onnx"
    assert build["source"]["sha256"] == sha256_file(path)
    smoke = build["_artifact"] / "smoke"
    x = np.load(smoke / "input.npz")["x"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"x": x})[0]
    np.testing.assert_allclose(np.load(smoke / "reference.npz")["logits"], expected, rtol=1e-6)


def test_source_mlflow_onnx_flavour_links_the_registered_version_back(
    project: UserProject, tmp_path: Path
) -> None:
    import mlflow
    import onnx
    from mlflow.tracking import MlflowClient

    path = tmp_path / "team.onnx"
    _onnx_file(project, path)
    with mlflow.start_run():
        mlflow.onnx.log_model(onnx.load(str(path)), name="model", registered_model_name="team_tiny")
    project.model("tiny_mlflow", "kind: mlflow\nuri: models:/team_tiny/1")
    build = _build(project, "tiny_mlflow", record=True)
    source = build["source"]
    assert source["format"] == "mlflow:onnx"
    assert source["mlflow"]["registered_model"] == "team_tiny"
    assert source["mlflow"]["version"] == "1"
    assert source["model_sha256"] == sha256_file(path)
    version = MlflowClient().get_model_version("tiny_server", build["mlflow"]["model_version"])
    assert version.tags["edgeship.source.mlflow.registered_model"] == "team_tiny"
    assert version.tags["edgeship.source.mlflow.version"] == "1"
    assert version.tags["edgeship.source.sha256"] == source["sha256"]


def test_source_mlflow_pytorch_flavour_by_alias(project: UserProject) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    with mlflow.start_run():
        mlflow.pytorch.log_model(
            project.net(),
            name="model",
            registered_model_name="team_tiny_pt",
            input_example=np.zeros((1, 6, 20), np.float32),
        )
    MlflowClient().set_registered_model_alias("team_tiny_pt", "champion", "1")
    project.model("tiny_mlflow_pt", "kind: mlflow\nuri: models:/team_tiny_pt@champion")
    source = _build(project, "tiny_mlflow_pt")["source"]
    assert source["format"] == "mlflow:pytorch"
    assert source["mlflow"]["alias"] == "champion"
    assert source["mlflow"]["version"] == "1"


def test_source_mlflow_pyfunc_only_model_is_refused_naming_its_flavours(
    project: UserProject, tmp_path: Path
) -> None:
    import mlflow

    from orchestrator.errors import BuildError

    class Rules(mlflow.pyfunc.PythonModel):  # Python code, no graph to export
        def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
            return model_input

    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=Rules(), registered_model_name="rules")
    project.model("rules", "kind: mlflow\nuri: models:/rules/1")
    spec = compose(["deployment=tiny_server", "model=rules"], project.root)
    with pytest.raises(BuildError) as info:
        run_build(spec, record=False)
    assert (
        "model.source.uri: 'models:/rules/1' has the flavours python_function; edgeship takes "
        "an onnx or a pytorch flavour"
    ) in str(info.value)
    assert not (tmp_path / "artifacts").exists()
