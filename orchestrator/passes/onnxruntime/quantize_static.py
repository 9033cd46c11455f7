"""Static INT8 quantization to explicit QDQ nodes, calibrated on the model's calibration data.

QDQ models run in ONNX Runtime (server and mobile) and OpenVINO. TensorRT's parser
rejects the INT32 bias DequantizeLinear nodes this pass writes; use
``trt_quantize_qdq`` for TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.onnxruntime.prep import quantize_static_qdq


@dataclass
class QuantizeStaticOptions:
    calibration_method: str = field(
        default="minmax", metadata={"choices": ("minmax", "entropy", "percentile")}
    )
    per_channel: bool = True  # one weight scale per output channel
    activation_type: str = field(default="qint8", metadata={"choices": ("qint8", "quint8")})
    weight_type: str = field(default="qint8", metadata={"choices": ("qint8", "quint8")})
    samples: int = 0  # calibration samples to use, in whole batches (0 = all the model provides)
    preprocess: bool = True  # shape inference + graph clean-up before quantizing
    op_types: list[str] = field(default_factory=list)  # quantize only these ops (empty = all)


@register_pass
class OrtQuantizeStatic(Pass):
    name = "ort_quantize_static"
    description = "static INT8 quantization to QDQ (per-channel, calibrated)"
    Options = QuantizeStaticOptions
    runtimes = ("onnxruntime", "onnxruntime_mobile", "openvino")
    needs_calibration = True
    backend = "onnxruntime"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        return quantize_static_qdq(
            model,
            options,
            ctx,
            activation_type=options.activation_type,
            weight_type=options.weight_type,
            extra_options={"ActivationSymmetric": options.activation_type == "qint8"},
        )
