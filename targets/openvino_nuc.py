"""Intel NUCs (and other Intel CPU/iGPU boxes) running OpenVINO, e.g. beside a CT scanner."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.core.shapes import input_bounds, openvino_shapes
from targets.base import Session, Target, register_target

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class OvSession:
    """A compiled OpenVINO model behind the Session protocol."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.outputs = list(compiled.outputs)
        # the precision the compiled model runs at, as OpenVINO reports it (a CPU without
        # bf16 falls back to f32 whatever was asked)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.execution_precision = str(getattr(hint, "get_type_name", lambda: hint)())

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        result = self.request.infer(inputs)
        return [np.array(result[o]) for o in self.outputs]


def execution_precision(model: ModelFile, device: str) -> str:
    """The OpenVINO inference precision that matches the artifact's declared precision.

    OpenVINO's CPU plugin runs bf16 by default on CPUs that have it; edgeship sets
    the precision explicitly: FP32 and INT8 artifacts run f32 for every
    non-quantized op, FP16 artifacts run f16, bf16 artifacts (and INT8 ones whose float
    layers are bf16, ``int8_bf16``) bf16 where the device supports it (else f32).
    """
    if model.precision in ("fp16", "bf16", "int8_bf16"):
        core = require("openvino").Core()
        caps = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if model.precision in ("bf16", "int8_bf16"):
            return "bf16" if "BF16" in caps else "f32"
        return "f16" if "FP16" in caps else "f32"
    return "f32"


def ov_config(
    model: ModelFile, device: str, threads: int, generation: bool = False
) -> dict[str, Any]:
    """The compile settings of an artifact. A text-generation decoder (``generation``) also
    keeps its KV cache at the inference precision: the CPU plugin stores it in f16 unless
    told (``KV_CACHE_PRECISION``), which moves an FP32 decoder's tokens away from PyTorch's."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": execution_precision(model, device),
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
    }
    if generation:
        config["KV_CACHE_PRECISION"] = config["INFERENCE_PRECISION_HINT"]
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


@register_target
class OpenVinoNucTarget(Target):
    family = "intel_nuc"
    runtime = "openvino"
    description = "Intel NUC / Intel CPU edge boxes, OpenVINO (IR or ONNX)"
    formats = ("openvino_ir", "onnx")
    install_hint = "pip install openvino"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            require("openvino")
        except ImportError as exc:  # pragma: no cover - openvino is a dependency
            return str(exc)
        return None

    def runtime_version(self) -> str:
        return str(require("openvino").get_version())

    def load(self, model: ModelFile) -> Session:
        ov = require("openvino")
        core = ov.Core()
        config = ov_config(model, self.config.device, self.config.threads)
        net = core.read_model(str(model.path))
        bounds = input_bounds(self.model) if self.model is not None else None
        if bounds:  # dynamic dims bounded to the declared range
            net.reshape(openvino_shapes(ov, bounds))
        compiled = core.compile_model(net, self.config.device, config)
        return OvSession(compiled)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        generation = self.model is not None and self.model.task == "text-generation"
        return {
            "device": self.config.device,
            **ov_config(model, self.config.device, self.config.threads, generation),
        }
