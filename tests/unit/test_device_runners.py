"""The device runners' shared checks and the TensorRT runner's code path, without TensorRT.

A tiny ONNX model (``logits = x * 2``) in a bundle-like folder; ONNX Runtime runs it for
real. The TensorRT runner is exercised twice: with TensorRT absent (it must report that,
never pass) and with a stand-in ``trtexec`` on PATH that "builds" an engine (the ONNX
bytes) and "runs" it with ONNX Runtime, so that loading runtime.json, the cache key, the
choice of builder and executor, the engine hash and the cache are all checked here.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from orchestrator.device import phone_client
from orchestrator.device.agent import runners, tensorrt_engine
from orchestrator.device.agent.health import health_run

ENGINE = {"precision": "fp32", "precision_flags": [], "workspace_mb": 64}
INPUT = np.array([[0.1, 0.9, -0.3, 0.2]], dtype=np.float32)


def _bundle(
    folder: Path, runtime: str, settings: dict, expected: np.ndarray | None = None, **smoke: object
) -> Path:
    """A bundle-like folder: model/model.onnx, runtime.json, smoke/ (input, expected)."""
    (folder / "model").mkdir(parents=True)
    (folder / "smoke").mkdir()
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["logits"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(folder / "model" / "model.onnx"))
    runtime_json = {
        "deployment": "tiny",
        "model": {"file": "model/model.onnx", "format": "onnx", "precision": "fp32"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "settings": settings,
        "target": {"family": "f", "runtime": runtime, "device": "CPU"},
    }
    (folder / "runtime.json").write_text(json.dumps(runtime_json))
    np.savez(folder / "smoke" / "input.npz", x=INPUT)
    np.savez(folder / "smoke" / "expected.npz", logits=INPUT * 2 if expected is None else expected)
    doc = {"input": "input.npz", "expected": "expected.npz", "atol": 1e-3, "rtol": 0.0}
    doc.update(smoke)
    (folder / "smoke" / "smoke.json").write_text(json.dumps(doc))
    return folder


def test_check_outputs_passes_within_tolerance_and_agreeing_argmax() -> None:
    got = [INPUT * 2 + 1e-4]
    checked = runners.check_outputs({"logits": INPUT * 2}, got, ["logits"], {"atol": 1e-3})
    assert checked["passed"] and checked["failures"] == []
    assert checked["argmax_agreement"] == 1.0
    assert checked["outputs"]["logits"]["max_abs_diff"] == pytest.approx(1e-4, rel=1e-2)


def test_check_outputs_names_the_output_its_distance_and_the_tolerance() -> None:
    checked = runners.check_outputs({"logits": INPUT * 2}, [INPUT * 2 + 0.5], ["logits"], {})
    assert not checked["passed"]
    assert checked["failures"] == ["logits: max |diff| 0.5 > atol 0.001 (rtol 0)"]


def test_check_outputs_fails_a_flipped_argmax_even_within_tolerance() -> None:
    close = np.array([[1.0, 1.001, 0.0, 0.0]], dtype=np.float32)
    flipped = np.array([[1.001, 1.0, 0.0, 0.0]], dtype=np.float32)
    checked = runners.check_outputs({"logits": close}, [flipped], ["logits"], {"atol": 0.01})
    assert checked["outputs"]["logits"]["passed"] is True
    assert checked["argmax_agreement"] == 0.0
    assert checked["failures"] == ["logits: argmax agreement 0.0000 < 1.0000"]
    lenient = {"atol": 0.01, "min_argmax_agreement": 0.0}
    assert runners.check_outputs({"logits": close}, [flipped], ["logits"], lenient)["passed"]


def test_check_outputs_refuses_wrong_shapes_and_counts() -> None:
    checked = runners.check_outputs({"logits": INPUT}, [INPUT[0]], ["logits"], {})
    assert checked["failures"] == ["logits: shape [4], expected [1, 4]"]
    checked = runners.check_outputs({"logits": INPUT}, [INPUT, INPUT], ["logits"], {})
    assert "the model gave 2 output(s); runtime.json names 1" in checked["failures"]


def test_load_refuses_a_runtime_without_a_runner(tmp_path: Path) -> None:
    folder = _bundle(tmp_path / "b", "tflite", {})
    with pytest.raises(runners.RunnerUnavailable, match="no device runner for runtime 'tflite'"):
        runners.load(str(folder))
    result = runners.smoke_check(str(folder))
    assert result["result"] == "fail" and "onnxruntime, onnxruntime_mobile" in result["reason"]


def test_every_runtime_a_target_names_has_a_runner() -> None:
    from targets.base import registered_targets

    needed = {cls.runtime for cls in registered_targets().values()}
    assert needed <= set(runners.RUNNERS), needed - set(runners.RUNNERS)


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime_mobile"])
def test_health_and_phone_client_apply_the_same_checks(tmp_path: Path, runtime: str) -> None:
    good = _bundle(tmp_path / "good", runtime, {})
    # within atol, but the top class differs: both the health check and the app refuse it
    near = INPUT * 2
    near[0, 0] = near[0, 1] + 1e-4  # 0.2 -> just above 1.8: argmax 0 instead of 1
    bad = _bundle(tmp_path / "bad", runtime, {}, expected=near, atol=2.0)
    assert health_run(str(good))["result"] == "pass"
    assert phone_client.smoke_test(good)["result"] == "pass"
    for result in (health_run(str(bad)), phone_client.smoke_test(bad)):
        assert result["result"] == "fail"
        assert result["reason"] == "logits: argmax agreement 0.0000 < 1.0000"
        assert result["runtime"]["name"] == runtime


def _without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt_engine, "_tensorrt", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "trtexec_path", lambda: None)


def test_tensorrt_runner_without_tensorrt_reports_it_and_never_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_tensorrt(monkeypatch)
    folder = _bundle(tmp_path / "b", "tensorrt", {"engine": ENGINE})
    with pytest.raises(runners.RunnerUnavailable) as info:
        runners.load(str(folder), cache=str(tmp_path / "cache"))
    assert str(info.value).startswith("TensorRT is not installed on this device")
    result = health_run(str(folder))
    assert result["result"] == "fail" and result["runner"] == "tensorrt"
    assert "TensorRT is not installed" in result["reason"] and "trtexec" in result["reason"]
    engine = result["runtime"]["engine"]
    model_bytes = (folder / "model" / "model.onnx").read_bytes()
    assert engine == {
        "built": False,
        "onnx_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "settings_sha256": tensorrt_engine.EngineSettings.from_json(ENGINE).digest(),
    }
    assert not (tmp_path / "cache").exists()


def test_tensorrt_runner_refuses_bad_engine_settings(tmp_path: Path) -> None:
    folder = _bundle(tmp_path / "b", "tensorrt", {"engine": {**ENGINE, "max_batch": 4}})
    with pytest.raises(
        runners.RunnerError, match=r"settings\.engine: unknown engine settings: max_batch"
    ):
        runners.load(str(folder))
    folder = _bundle(tmp_path / "c", "tensorrt", {})
    with pytest.raises(
        runners.RunnerError, match=r"settings\.engine \(the engine build settings\) missing"
    ):
        runners.load(str(folder))


STANDIN_TRTEXEC = """#!{python}
# A stand-in for trtexec (TensorRT 10.3): the "engine" is the ONNX itself, run by ONNX Runtime.
import json, shutil, sys
import numpy as np
import onnxruntime as ort

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help")
elif "onnx" in args:
    shutil.copyfile(args["onnx"], args["saveEngine"])
else:
    session = ort.InferenceSession(args["loadEngine"], providers=["CPUExecutionProvider"])
    feeds = {{}}
    for spec in args["loadInputs"].split(","):
        name, path = spec.rsplit(":", 1)
        shape = session.get_inputs()[0].shape
        feeds[name.strip("'")] = np.fromfile(path, dtype=np.float32).reshape(shape)
    outs = session.run(None, feeds)
    doc = [{{"name": o.name, "dimensions": "x".join(str(d) for d in v.shape),
             "values": v.ravel().tolist()}} for o, v in zip(session.get_outputs(), outs)]
    with open(args["exportOutput"], "w") as fh:
        json.dump(doc, fh)
"""


def test_tensorrt_runner_builds_caches_reports_and_runs_the_engine_with_trtexec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtexec"
    exe.write_text(STANDIN_TRTEXEC.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setattr(tensorrt_engine, "_tensorrt", lambda: None)  # no Python package
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    folder = _bundle(tmp_path / "b", "tensorrt", {"engine": ENGINE})
    cache = tmp_path / "cache"

    first = runners.smoke_check(str(folder), str(cache))
    assert first["result"] == "pass", first
    assert first["runtime"]["name"] == "tensorrt" and first["runtime"]["version"] == "10.3.0"
    engine = first["runtime"]["engine"]
    assert engine["built"] and not engine["cache_hit"]
    assert (engine["builder"], engine["executor"]) == ("trtexec", "trtexec")
    assert engine["tensorrt_version"] == "10.3.0"
    stored = cache / f"{engine['cache_key']}.engine"
    assert engine["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    settings = tensorrt_engine.EngineSettings.from_json(ENGINE)
    key = tensorrt_engine.cache_key(engine["onnx_sha256"], "10.3.0", engine["gpu"], settings)
    assert key["digest"] == engine["cache_key"]

    second = runners.smoke_check(str(folder), str(cache))
    assert second["result"] == "pass" and second["runtime"]["engine"]["cache_hit"] is True
    assert second["runtime"]["engine"]["sha256"] == engine["sha256"]

    wrong = _bundle(tmp_path / "w", "tensorrt", {"engine": ENGINE}, expected=INPUT * 3)
    failed = runners.smoke_check(str(wrong), str(cache))
    assert failed["result"] == "fail" and failed["reason"].startswith("logits: max |diff|")


def test_health_check_records_the_engine_built_on_the_device_and_trace_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    from types import SimpleNamespace

    from orchestrator.cli.rollout import _trace_text
    from orchestrator.device.agent.health import Health

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtexec"
    exe.write_text(STANDIN_TRTEXEC.format(python=sys.executable))
    exe.chmod(0o755)
    # the health check runs in a child process with the agent's PATH and PYTHONPATH only
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root = tmp_path / "root"
    version = _bundle(root / "versions" / "1", "tensorrt", {"engine": ENGINE})
    (version / "manifest.json").write_text("{}")  # an installed version (health does not verify)
    os.symlink("versions/1", root / "current")
    agent = Health(str(root))
    agent.command = "health"
    result, code = agent.health(120)
    assert (code, result["result"]) == (0, "pass"), result

    state = json.loads((root / "state.json").read_text())
    engine = state["versions"]["1"]["engine"]
    built = root / "cache" / "tensorrt" / f"{engine['cache_key']}.engine"
    assert engine["sha256"] == hashlib.sha256(built.read_bytes()).hexdigest()
    assert engine["tensorrt_version"] == "10.3.0" and engine["gpu"]
    logged = [json.loads(line) for line in (root / "log" / "agent.log").read_text().splitlines()]
    assert [e["sha256"] for e in logged if e["event"] == "engine"] == [engine["sha256"]]

    trace = SimpleNamespace(
        device={"name": "icu-1", "address": "10.0.0.1:22", "fleet": "icu", "labels": {}},
        running={"deployment": "tiny", "version": 1, "health": "pass", "engine": engine},
        bundle={},
        provenance={},
        mlflow=None,
        rollouts=[],
        checks=[],
        warnings=[],
        source="device",
    )
    assert (
        f"engine      engine {engine['sha256']} built on the device with TensorRT 10.3.0 on "
        f"{engine['gpu']}, from ONNX sha256 {engine['onnx_sha256']}"
    ) in _trace_text(trace).splitlines()
