"""NVIDIA Jetson Orin running TensorRT, e.g. bedside in an ICU.

A TensorRT engine is only valid for the exact TensorRT version and GPU it was
built with, so the artifact is an ONNX model ready for TensorRT (FP16, or INT8 as
explicit symmetric Q/DQ) plus the engine build settings (``settings.engine`` in
runtime.json). The engine is built on the device at activation time by
``orchestrator/device/agent/tensorrt_engine.py`` (standard library + TensorRT only), cached by
(ONNX sha256, TensorRT version, GPU name, settings hash).

Where this machine has TensorRT and a CUDA GPU, validation builds the engine with
the same code and runs it. Elsewhere it validates the ONNX it ships with ONNX
Runtime's CPU execution provider and records that the engine itself is validated
on the device (``engine_validated: false`` in validation.json and metrics.json).
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.core.shapes import profiles as shape_profiles
from orchestrator.device.agent import tensorrt_engine as engine_builder
from orchestrator.errors import BuildError, MissingDependencyError
from targets.base import Session, Target, register_target
from targets.onnxruntime_server import ort_session

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

WORKSPACE_MB = 2048  # Orin's GPU shares the module's DRAM with the CPU
OPTIMIZATION_LEVEL = 3  # TensorRT's default tactic search
MAX_BATCH = 8  # profile bound of a dynamic batch the spec does not declare (an ONNX source)
DLA_DEVICES = {"DLA0": 0, "DLA1": 1}  # target.device -> DLA core (Jetson AGX Orin has two)
ENGINE_BUILDER = "orchestrator/device/agent/tensorrt_engine.py"


@cache
def tensorrt_unavailable() -> str | None:
    """None when this machine can build and run engines; otherwise why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed on this machine"
    try:
        torch = require("torch")
    except MissingDependencyError:
        return "running an engine here needs torch with CUDA, and torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


def _onnx_inputs(model: ModelFile) -> list[tuple[str, list[int | None]]]:
    onnx = require("onnx")
    proto = onnx.load(str(model.path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    out = []
    for tensor in proto.graph.input:
        if tensor.name in initializers:
            continue
        dims = tensor.type.tensor_type.shape.dim
        out.append((tensor.name, [d.dim_value if d.dim_value > 0 else None for d in dims]))
    return out


def _has_qdq(model: ModelFile) -> bool:
    onnx = require("onnx")
    proto = onnx.load(str(model.path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


class TensorRtSession:
    """A TensorRT engine behind the Session protocol (buffers as CUDA tensors of torch)."""

    def __init__(self, engine_path: str) -> None:
        trt = require("tensorrt")
        self.torch = require("torch")
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as fh:
            self.engine = runtime.deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise BuildError(f"error: TensorRT could not load the engine {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.stream = self.torch.cuda.Stream()

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        torch = self.torch
        keep = []
        for name in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(inputs[name])).cuda()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        outputs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
            tensor = tensor.cuda()
            self.context.set_tensor_address(name, tensor.data_ptr())
            outputs.append(tensor)
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return [t.cpu().numpy() for t in outputs]


@register_target
class JetsonOrinTarget(Target):
    family = "jetson_orin"
    runtime = "tensorrt"
    description = "NVIDIA Jetson Orin, TensorRT engine built on the device from FP16/INT8 ONNX"
    formats = ("onnx",)
    install_hint = (
        "TensorRT comes with JetPack on the Jetson; on an x86-64 build host with an NVIDIA GPU: "
        "pip install tensorrt (from NVIDIA's package index)"
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # without TensorRT the ONNX is validated with ONNX Runtime (see the module docstring)
        try:
            require("onnxruntime")
        except MissingDependencyError as exc:  # pragma: no cover - onnxruntime is a dependency
            return str(exc)
        return None

    def runtime_version(self) -> str:
        version = engine_builder.tensorrt_version()
        if version is not None:
            return version
        ort = require("onnxruntime")
        return f"not installed here (ONNX validated with onnxruntime {ort.__version__})"

    @classmethod
    def static_shapes_reason(cls, device: str) -> str | None:
        if device in DLA_DEVICES:
            return "TensorRT builds DLA engines only for profiles with min = opt = max"
        return None

    def dla_core(self) -> int | None:
        return DLA_DEVICES.get(self.config.device)

    def engine_settings(self, model: ModelFile) -> engine_builder.EngineSettings:
        """The TensorRT build settings of an artifact, derived from its ONNX and this target."""
        dla = self.dla_core()
        if dla is not None and model.precision == "fp32":
            raise BuildError(
                f"error: target.device {self.config.device}: DLA runs FP16 or INT8 networks; "
                "the recipe makes an fp32 model (use onnx_fp16 or trt_quantize_qdq)"
            )
        flags: tuple[str, ...] = ()
        if model.precision == "fp16":
            flags = ("FP16",)
        elif model.precision == "int8":
            flags = ("INT8", "FP16") if _has_qdq(model) else ("FP16",)
        profiles: dict[str, dict[str, list[int]]] = {}
        declared = shape_profiles(self.model) if self.model is not None else {}
        for name, dims in _onnx_inputs(model):
            if all(d is not None for d in dims):
                continue
            if name in declared:  # the spec's min/opt/max (model.inputs[].dynamic)
                profiles[name] = declared[name]
                continue
            if any(d is None for d in dims[1:]):
                raise BuildError(
                    f"error: input '{name}' of {model.path.name} has dynamic dimensions "
                    f"{dims} beyond the batch; export it with static shapes"
                )
            rest = [int(d) for d in dims[1:] if d is not None]
            profiles[name] = {"min": [1, *rest], "opt": [1, *rest], "max": [MAX_BATCH, *rest]}
        return engine_builder.EngineSettings(
            precision=model.precision,
            strongly_typed=True,
            precision_flags=flags,
            workspace_mb=WORKSPACE_MB,
            builder_optimization_level=OPTIMIZATION_LEVEL,
            profiles=profiles,
            dla_core=dla,
            gpu_fallback=True,
        )

    def load(self, model: ModelFile) -> Session:
        settings = self.engine_settings(model)
        reason = tensorrt_unavailable()
        if reason is None:
            built = engine_builder.build_engine(model.path, settings)
            log.info("TensorRT engine %s (cache hit: %s)", built["engine"], built["cache_hit"])
            return TensorRtSession(built["engine"])
        log.info("validating the ONNX with ONNX Runtime CPU: %s", reason)
        return ort_session(str(model.path), self.config.threads)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        settings = self.engine_settings(model)
        reason = tensorrt_unavailable()
        if reason is None:
            built = engine_builder.build_engine(model.path, settings)
            validation: dict[str, Any] = {
                "engine_validated": True,
                "validated_with": f"TensorRT {engine_builder.tensorrt_version()} on "
                f"{engine_builder.gpu_name()}",
                "engine_sha256": built["engine_sha256"],
            }
        else:
            ort = require("onnxruntime")
            validation = {
                "engine_validated": False,
                "validated_with": (
                    f"onnxruntime {ort.__version__} CPUExecutionProvider (the shipped ONNX)"
                ),
                "reason": (
                    f"{reason}; the device builds the engine at activation "
                    f"({ENGINE_BUILDER}) and validates it with the bundle's smoke test"
                ),
            }
        return {
            "engine": settings.to_json(),
            "engine_builder": ENGINE_BUILDER,
            "engine_cache_key": ["onnx_sha256", "tensorrt_version", "gpu", "settings_sha256"],
            "device": self.config.device,
            "validation": validation,
        }
