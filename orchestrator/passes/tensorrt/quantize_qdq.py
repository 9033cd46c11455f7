"""Static INT8 as explicit Q/DQ in the form TensorRT's ONNX parser takes.

TensorRT's explicit quantization wants symmetric INT8 (zero point 0) for
activations and weights, per-channel weight scales, and float biases: its parser
rejects a DequantizeLinear of an INT32 bias, which ONNX Runtime's quantizer writes
by default. Scales are calibrated here with ONNX Runtime on the model's
calibration data, so no TensorRT calibrator (and no GPU) is needed at build time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.onnxruntime.prep import quantize_static_qdq

# operators whose inputs TensorRT fuses with Q/DQ into INT8 kernels
TENSORRT_INT8_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


@dataclass
class QuantizeQdqOptions:
    calibration_method: str = field(
        default="minmax", metadata={"choices": ("minmax", "entropy", "percentile")}
    )
    per_channel: bool = True  # one weight scale per output channel
    samples: int = 0  # calibration samples to use, in whole batches (0 = all the model provides)
    op_types: list[str] = field(default_factory=lambda: list(TENSORRT_INT8_OPS))
    # operators to quantize; the rest stay in the network's float precision
    preprocess: bool = True  # shape inference + graph clean-up before quantizing


@register_pass
class TensorRtQuantizeQdq(Pass):
    name = "trt_quantize_qdq"
    description = "static INT8 Q/DQ for TensorRT (symmetric, per-channel, float bias, calibrated)"
    Options = QuantizeQdqOptions
    runtimes = ("tensorrt",)
    needs_calibration = True
    backend = "onnxruntime"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        return quantize_static_qdq(
            model,
            options,
            ctx,
            activation_type="qint8",
            weight_type="qint8",
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            },
        )
