"""Every passing build is a real MLflow model: `mlflow.pyfunc.load_model` on the registered
alias predicts (ONNX flavour, and python_function over OpenVINO IR), `mlflow models serve`
answers; an unchanged rebuild registers nothing new; runs cover the build, name their user,
describe their gates and log their data as datasets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.build import reference
from orchestrator.build.pipeline import run_build
from orchestrator.spec.compose import compose, load_option
from tests.userproject import UserProject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserProject]:
    tmp = tmp_path_factory.mktemp("mlflow_models")
    p = UserProject(tmp)
    nuc = (p.root / "conf" / "deployment" / "tiny_server.yaml").read_text()
    nuc = nuc.replace("ort_fp32", "ov_fp32").replace("/target: server", "/target: intel_nuc")
    (p.root / "conf" / "deployment" / "tiny_nuc.yaml").write_text(
        nuc.replace("name: tiny_server", "name: tiny_nuc")
    )
    reference.ensure_weights(load_option("model", "tiny", p.root), p.root)
    yield p
    p.close()


@pytest.fixture
def store(project: UserProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("EDGESHIP_ROOT", str(project.root))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri


def _smoke(artifact: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    x = dict(np.load(artifact / "smoke" / "input.npz"))
    return x, np.load(artifact / "smoke" / "expected.npz")["logits"]


def test_registered_alias_loads_and_predicts_and_rebuild_registers_nothing_new(
    project: UserProject, store: str
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    first = run_build(compose(["deployment=tiny_server"], project.root))
    assert first.model_version == "1" and not first.version_reused
    model = mlflow.pyfunc.load_model("models:/tiny_server@candidate")
    x, expected = _smoke(first.artifact_dir)
    got = model.predict(x)
    np.testing.assert_allclose(got["logits"], expected, atol=1e-5)
    meta = model.metadata
    assert meta.flavors.keys() >= {"onnx", "python_function"}
    assert [s.name for s in meta.get_input_schema().inputs] == ["x"]
    assert meta.get_output_schema().inputs[0].name == "logits"
    assert meta.saved_input_example_info is not None

    client = MlflowClient()
    run = client.get_run(first.run_id)
    assert run.data.tags["mlflow.user"]
    assert "`agreement >= 0.99`" in run.data.tags["mlflow.note.content"]
    assert run.info.end_time - run.info.start_time >= 1000 * first.seconds * 0.8
    datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    evaluation = datasets["tiny-eval"]
    assert evaluation.tags[0].value == "evaluation"
    build = json.loads((first.artifact_dir / "validation.json").read_text())
    assert build["data"]["eval_data_sha256"].startswith(evaluation.dataset.digest)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    version = client.get_model_version("tiny_server", "1")
    assert "PASSED" in version.description
    assert version.source.endswith("/model")

    # the same code, weights, data and recipe: the same artifact, no second version
    again = run_build(compose(["deployment=tiny_server"], project.root))
    assert again.version_reused and again.model_version == "1"
    assert len(client.search_model_versions("name = 'tiny_server'")) == 1
    assert str(client.get_model_version_by_alias("tiny_server", "candidate").version) == "1"

    # a different artifact (the runtime settings it ships with) is a new version
    changed = run_build(compose(["deployment=tiny_server", "target.threads=1"], project.root))
    assert changed.model_version == "2" and not changed.version_reused


def test_openvino_artifact_is_a_python_function_model(project: UserProject, store: str) -> None:
    import mlflow

    built = run_build(compose(["deployment=tiny_nuc"], project.root))
    model = mlflow.pyfunc.load_model(f"models:/tiny_nuc/{built.model_version}")
    assert "python_function" in model.metadata.flavors
    assert "onnx" not in model.metadata.flavors
    x, expected = _smoke(built.artifact_dir)
    np.testing.assert_allclose(model.predict(x)["logits"], expected, atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mlflow_models_serve_answers_a_prediction(project: UserProject, store: str) -> None:
    built = run_build(compose(["deployment=tiny_server"], project.root))
    x, expected = _smoke(built.artifact_dir)
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    mlflow_bin = str(bin_dir / "mlflow")
    proc = subprocess.Popen(
        [
            *(mlflow_bin, "models", "serve", "-m", "models:/tiny_server@candidate"),
            *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = json.dumps({"inputs": {"x": x["x"].tolist()}}).encode()
        answer = None
        deadline = time.monotonic() + 120
        while answer is None and time.monotonic() < deadline:
            assert proc.poll() is None, "mlflow models serve exited"
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert answer is not None, "no answer from mlflow models serve within 120 s"
        got = np.asarray(answer["predictions"]["logits"], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
