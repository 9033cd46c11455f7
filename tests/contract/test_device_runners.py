"""The device side of every target family: its artifact runs through its runtime's runner.

For each registered family: the movement classifier is built with the recipe the target
contract uses (tests/contract/test_targets.py), then the agent as devices get it (the
zipapp, run with ``python -I`` outside the repository, so nothing of edgeship is importable)
runs ``health-run`` on the artifact folder: the runner of the family's runtime loads it,
runs the smoke input and applies the shared checks. The same artifact with its expected
outputs shifted along the class axis must fail, naming the argmax agreement.

TensorRT's runner builds and runs an engine where TensorRT exists; elsewhere it must
report that TensorRT is not installed (never pass), and the test then skips with that reason.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.device.agent import AGENT_FILE, agent_source
from orchestrator.spec.compose import compose
from targets.base import Target, registered_targets
from tests.contract.test_targets import (
    DEPLOYMENT,
    FAMILIES,
    ROOT,
    _candidates,
    _target_yaml,
    skip_without_tool_environment,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ME = pwd.getpwuid(os.getuid()).pw_name  # the agent user of these runs: whoever runs the tests


@pytest.fixture(scope="module")
def agent_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("device-bin") / AGENT_FILE
    path.write_bytes(agent_source())
    return path


@pytest.fixture(autouse=True)
def _project(isolated: Path) -> Path:
    return isolated


def _health_run(
    agent: Path, folder: Path, root: Path, python: str = sys.executable
) -> tuple[int, dict]:
    command = [python, "-I", str(agent), "--root", str(root), "--user", ME]
    proc = subprocess.run(
        [*command, "health-run", str(folder)],
        cwd=root.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def _shift_expected(artifact: Path, dest: Path) -> Path:
    """The artifact with its expected outputs rolled by one class: every argmax moves."""
    shutil.copytree(artifact, dest)
    smoke = json.loads((dest / "smoke" / "smoke.json").read_text())
    path = dest / "smoke" / smoke.get("expected", "expected.npz")
    with np.load(path) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    axis = int(smoke.get("argmax_axis", -1))
    first = next(iter(arrays))
    arrays[first] = np.roll(arrays[first], 1, axis=axis)
    np.savez(path, **arrays)
    return dest


@pytest.mark.parametrize("family", FAMILIES)
def test_family_artifact_runs_through_its_runtimes_device_runner(
    family: str, agent_program: Path, isolated: Path, posture_weights: None
) -> None:
    if sys.platform != "linux":  # pragma: no cover - the agent's privilege code is POSIX
        pytest.skip("the device agent runs on Linux devices")
    from orchestrator.build.pipeline import run_build

    skip_without_tool_environment(family)
    cls = registered_targets()[family]
    target_name = _target_yaml(family)
    usable, _ = _candidates(target_name)
    recipe = getattr(cls, "contract_recipe", None) or usable[0]
    spec = compose(
        [
            f"deployment={DEPLOYMENT}",
            f"target={target_name}",
            f"recipe={recipe}",
            "deployment.validation.latency_runs=5",
        ],
        ROOT,
    )
    artifact = run_build(spec, record=False).artifact_dir
    root = isolated / "device-root"
    root.mkdir()
    python = _device_python(cls)

    code, result = _health_run(agent_program, artifact, root, python)
    assert result["runner"] == cls.runtime
    assert result["runtime"]["name"] == cls.runtime
    if cls.runtime == "coreml" and result.get("unavailable"):
        assert (code, result["result"]) == (11, "fail")
        assert result["reason"].startswith("Core ML predicts only on macOS")
        pytest.skip(f"{family}: {result['reason']}")
    if cls.runtime == "tensorrt" and result.get("unavailable"):
        assert (code, result["result"]) == (11, "fail")
        assert result["reason"].startswith("TensorRT is not installed on this device")
        runtime = json.loads((artifact / "runtime.json").read_text())
        assert result["runtime"]["engine"]["onnx_sha256"] == runtime["model"]["sha256"]
        pytest.skip(f"{family}: {result['reason']}")
    assert (code, result["result"]) == (0, "pass"), result
    assert result["argmax_agreement"] == 1.0
    assert all(o["passed"] for o in result["outputs"].values())
    if cls.runtime == "tensorrt":  # the engine was built here and its provenance reported
        engine = result["runtime"]["engine"]
        assert engine["built"] and len(engine["sha256"]) == 64 and engine["tensorrt_version"]

    code, shifted = _health_run(
        agent_program, _shift_expected(artifact, isolated / "shifted"), root, python
    )
    assert (code, shifted["result"]) == (11, "fail")
    assert "argmax agreement 0.0000 < " in shifted["reason"]


def _device_python(cls: type[Target]) -> str:
    """The interpreter standing in for a device's: the family's tool environment's, where
    its runtime lives in one (a device has the runtime in the agent's own Python)."""
    from orchestrator.core import toolenv

    for name in cls.tool_environments:
        return str(toolenv.toolenv(name))
    return sys.executable


@pytest.fixture(scope="module")
def posture_weights() -> None:
    from orchestrator.build import reference
    from orchestrator.spec.compose import load_option

    reference.ensure_weights(load_option("model", "posture_cnn", ROOT), ROOT)


# -- the phone runtimes' runners: their settings checked, their absence reported ----------------


def _phone_bundle(folder: Path, runtime: str) -> Path:
    """A bundle-like folder with a tiny model (``logits = 2 * x``) for ``runtime``."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    args = (torch.zeros(1, 4),)
    (folder / "model").mkdir(parents=True)
    (folder / "smoke").mkdir()
    if runtime == "litert":
        import litert_torch

        name = "model/model.tflite"
        litert_torch.convert(Double().eval(), args).export(str(folder / name))
        settings = {"signature": "serving_default", "signature_inputs": ["args_0"]}
        settings |= {"signature_outputs": ["output_0"], "num_threads": 1}
    else:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        name = "model/model.pte"
        program = torch.export.export(Double().eval(), args)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        (folder / name).write_bytes(lowered.to_executorch().buffer)
        settings = {"method": "forward", "num_threads": 1}
    x = np.array([[0.1, 0.9, -0.3, 0.2]], dtype=np.float32)
    runtime_json = {
        "deployment": "tiny",
        "model": {"file": name, "format": name.rsplit(".", 1)[1], "precision": "fp32"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "settings": settings,
        "target": {"family": "f", "runtime": runtime, "device": "XNNPACK"},
    }
    (folder / "runtime.json").write_text(json.dumps(runtime_json))
    np.savez(folder / "smoke" / "input.npz", x=x)
    np.savez(folder / "smoke" / "expected.npz", logits=x * 2)
    smoke = {"input": "input.npz", "expected": "expected.npz", "atol": 1e-5, "rtol": 0.0}
    (folder / "smoke" / "smoke.json").write_text(json.dumps(smoke))
    return folder


@pytest.mark.parametrize(
    "runtime, key, module",
    [("litert", "signature", "ai_edge_litert"), ("executorch", "method", "executorch")],
)
def test_phone_runtime_runner_checks_its_settings_and_reports_its_absence(
    runtime: str, key: str, module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.device.agent import runners

    pytest.importorskip(module)
    folder = _phone_bundle(tmp_path / "bundle", runtime)
    report = runners.smoke_check(str(folder))
    assert report["result"] == "pass", report
    assert report["runtime"]["name"] == runtime and report["runtime"]["version"] != "unknown"

    doc = json.loads((folder / "runtime.json").read_text())
    doc["settings"][key] = "nope"
    (folder / "runtime.json").write_text(json.dumps(doc))
    with pytest.raises(runners.RunnerError, match=rf"settings\.{key} 'nope' is not in the"):
        runners.load(str(folder))

    for name in (module, "tflite_runtime", "torch"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it fails
    absent = runners.smoke_check(str(folder))
    assert absent["result"] == "fail" and absent["unavailable"] is True
    assert "is not installed here" in absent["reason"]
