"""Jetson artifacts (FP16 and explicit-Q/DQ INT8 ONNX + engine settings) and the standalone
engine builder that a device runs at activation.

TensorRT cannot be installed on a machine without an NVIDIA GPU (its wheels come from
NVIDIA's package index); the tests that need it skip with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import TargetConfig
from orchestrator.errors import BuildError
from targets.base import registered_targets
from tests.conftest import build_once

ROOT = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = ROOT / "orchestrator" / "device" / "agent" / "tensorrt_engine.py"
NO_TENSORRT = (
    "TensorRT is not installable here: no NVIDIA GPU, and its wheels come from NVIDIA's "
    "package index; the engine is built and validated on the device"
)


def _engine_module():  # the registry first, so every target family is discovered
    registered_targets()
    from orchestrator.device.agent import tensorrt_engine

    return tensorrt_engine


def _has_tensorrt() -> bool:
    engine = _engine_module()
    return engine.tensorrt_version() is not None


@pytest.fixture(scope="module")
def jetson_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """posture_cnn built for jetson_orin with the FP16 and the INT8 Q/DQ recipe (no MLflow)."""
    return {
        recipe: build_once(
            [
                "deployment=posture_server",
                "target=jetson_orin",
                f"recipe={recipe}",
                "deployment.validation.latency_runs=10",
            ],
            tmp_path_factory.mktemp(recipe),
        )
        for recipe in ("trt_fp16", "trt_int8_qdq")
    }


@pytest.mark.integration
@pytest.mark.slow
def test_fp16_artifact_is_float16_onnx_with_float32_io_and_engine_settings(
    jetson_artifacts: dict[str, Path],
) -> None:
    art = jetson_artifacts["trt_fp16"]
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["format"] == "onnx" and runtime["model"]["precision"] == "fp16"
    proto = onnx.load(str(art / runtime["model"]["file"]))
    io = [*proto.graph.input, *proto.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {TensorProto.FLOAT}
    conv_weights = [i for i in proto.graph.initializer if len(i.dims) == 3]
    assert conv_weights and all(i.data_type == TensorProto.FLOAT16 for i in conv_weights)
    engine = runtime["settings"]["engine"]
    assert engine["precision"] == "fp16" and engine["strongly_typed"] is True
    assert engine["workspace_mb"] > 0 and engine["dla_core"] is None
    assert engine["profiles"] == {}  # static shapes: no optimisation profile needed
    assert runtime["settings"]["engine_builder"] == "orchestrator/device/agent/tensorrt_engine.py"
    dla = registered_targets()["jetson_orin"](
        TargetConfig(name="j", family="jetson_orin", device="DLA0")
    )
    on_dla = dla.engine_settings(ModelFile(art / runtime["model"]["file"], "onnx", "fp16"))
    assert on_dla.dla_core == 0 and on_dla.gpu_fallback and on_dla.precision_flags == ("FP16",)


@pytest.mark.integration
@pytest.mark.slow
def test_int8_artifact_has_symmetric_qdq_without_int32_bias(
    jetson_artifacts: dict[str, Path],
) -> None:
    art = jetson_artifacts["trt_int8_qdq"]
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["model"]["precision"] == "int8"
    assert runtime["settings"]["engine"]["precision_flags"] == ["INT8", "FP16"]
    proto = onnx.load(str(art / runtime["model"]["file"]))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    for node in dq:
        assert inits.get(node.input[0], np.zeros(1, np.int8)).dtype != np.int32
        if len(node.input) > 2:
            assert not np.any(inits[node.input[2]])


@pytest.mark.integration
@pytest.mark.slow
def test_without_tensorrt_the_onnx_is_validated_and_the_engine_left_to_the_device(
    jetson_artifacts: dict[str, Path],
) -> None:
    if _has_tensorrt():
        pytest.skip("TensorRT is present: the engine itself was validated")
    for art in jetson_artifacts.values():
        validation = json.loads((art / "validation.json").read_text())
        note = validation["details"]["runtime_validation"]
        assert note["engine_validated"] is False
        assert "onnxruntime" in note["validated_with"]
        assert "builds the engine at activation" in note["reason"]
        assert validation["metrics"]["engine_validated"] == 0.0
        metrics = json.loads((art / "metrics.json").read_text())
        assert metrics["engine_validated"] == 0.0
        assert validation["passed"] is True


@pytest.mark.integration
@pytest.mark.slow
def test_standalone_builder_reads_the_artifact_with_the_standard_library_only(
    jetson_artifacts: dict[str, Path],
) -> None:
    if _has_tensorrt():
        pytest.skip("TensorRT is present; the engine build test covers the builder")
    art = jetson_artifacts["trt_fp16"]
    # -S -I: no site-packages and no project on the path, as on a bare device
    proc = subprocess.run(
        [sys.executable, "-S", "-I", str(ENGINE_SCRIPT), "key", str(art)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "neither the tensorrt Python package nor trtexec" in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_engine_is_built_once_then_served_from_the_cache(
    jetson_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    engine = _engine_module()
    onnx_path, settings = engine.load_request(jetson_artifacts["trt_fp16"])
    first = engine.build_engine(onnx_path, settings, tmp_path / "cache")
    second = engine.build_engine(onnx_path, settings, tmp_path / "cache")
    assert not first["cache_hit"] and second["cache_hit"]
    assert first["engine_sha256"] == second["engine_sha256"]


def _settings(**changes: object):
    engine = _engine_module()
    values: dict = {"precision": "fp16", "precision_flags": ("FP16",)}
    values.update(changes)
    return engine.EngineSettings(**values)


def test_engine_settings_round_trip_and_hash_every_field() -> None:
    engine = _engine_module()
    base = _settings()
    assert engine.EngineSettings.from_json(json.loads(json.dumps(base.to_json()))) == base
    assert base.digest() == _settings().digest()
    for change in ({"workspace_mb": 512}, {"dla_core": 0}, {"precision": "int8"}):
        assert _settings(**change).digest() != base.digest()
    with pytest.raises(engine.EngineBuildError, match="unknown engine settings: max_batch"):
        engine.EngineSettings.from_json({**base.to_json(), "max_batch": 4})


def test_cache_key_depends_on_model_tensorrt_version_gpu_and_settings(tmp_path: Path) -> None:
    engine = _engine_module()
    base = engine.cache_key("a" * 64, "10.3.0", "Orin", _settings())
    variants = [
        engine.cache_key("b" * 64, "10.3.0", "Orin", _settings()),
        engine.cache_key("a" * 64, "10.7.0", "Orin", _settings()),
        engine.cache_key("a" * 64, "10.3.0", "Orin NX", _settings()),
        engine.cache_key("a" * 64, "10.3.0", "Orin", _settings(workspace_mb=1)),
    ]
    assert len({k["digest"] for k in [base, *variants]}) == 5


def test_cached_engine_is_refused_when_its_bytes_changed(tmp_path: Path) -> None:
    engine = _engine_module()
    key = engine.cache_key("a" * 64, "10.3.0", "Orin", _settings())
    built = tmp_path / "built.engine"
    built.write_bytes(b"serialized engine")
    stored = engine._store(tmp_path / "cache", key, built, "trtexec", 1.0)
    assert engine.cached_engine(tmp_path / "cache", key) == stored
    stored.write_bytes(b"tampered")
    assert engine.cached_engine(tmp_path / "cache", key) is None


def test_trtexec_command_matches_each_tensorrt_generation(tmp_path: Path) -> None:
    engine = _engine_module()
    onnx_path, out = tmp_path / "m.onnx", tmp_path / "m.engine"
    gpu10 = engine.trtexec_command("trtexec", onnx_path, _settings(), out, "10.3.0")
    assert "--stronglyTyped" in gpu10 and "--fp16" not in gpu10
    assert "--memPoolSize=workspace:1024M" in gpu10 and "--skipInference" in gpu10
    dla10 = engine.trtexec_command("trtexec", onnx_path, _settings(dla_core=1), out, "10.3.0")
    assert {"--useDLACore=1", "--allowGPUFallback", "--fp16"} <= set(dla10)
    assert "--stronglyTyped" not in dla10  # TensorRT 10 builds DLA networks weakly typed
    gpu11 = engine.trtexec_command("trtexec", onnx_path, _settings(), out, "11.4.1")
    assert not {"--stronglyTyped", "--fp16"} & set(gpu11)  # 11.x: always strongly typed
    profiled = _settings(profiles={"x": {"min": [1, 3], "opt": [2, 3], "max": [8, 3]}})
    cmd = engine.trtexec_command("trtexec", onnx_path, profiled, out, "10.3.0")
    assert {"--minShapes=x:1x3", "--optShapes=x:2x3", "--maxShapes=x:8x3"} <= set(cmd)


def test_dla_device_refuses_an_fp32_model_and_sets_the_core(tmp_path: Path) -> None:
    cls = registered_targets()["jetson_orin"]
    dla = cls(TargetConfig(name="j", family="jetson_orin", device="DLA1"))
    with pytest.raises(BuildError, match="DLA runs FP16 or INT8"):
        dla.engine_settings(ModelFile(tmp_path / "m.onnx", "onnx", "fp32"))
