"""Static INT8 quantization to explicit QDQ nodes, calibrated on the model's calibration data.

QDQ models run in ONNX Runtime (server and mobile) and OpenVINO. TensorRT's parser
rejects the INT32 bias DequantizeLinear nodes this pass writes; use
``trt_quantize_qdq`` for TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.model_file import ModelFile
from orchestrator.passes.base import Inputs, Pass, PassContext, register_pass
from orchestrator.passes.onnxruntime.prep import preprocess_for_quantization
from orchestrator.runtime_imports import require


@dataclass
class QuantizeStaticOptions:
    calibration_method: str = field(
        default="minmax", metadata={"choices": ("minmax", "entropy", "percentile")}
    )
    per_channel: bool = True  # one weight scale per output channel
    activation_type: str = field(default="qint8", metadata={"choices": ("qint8", "quint8")})
    weight_type: str = field(default="qint8", metadata={"choices": ("qint8", "quint8")})
    samples: int = 0  # calibration samples to use (0 = all the model provides)
    preprocess: bool = True  # shape inference + graph clean-up before quantizing
    op_types: list[str] = field(default_factory=list)  # quantize only these ops (empty = all)


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of samples."""

    def __init__(self, samples: list[Inputs]) -> None:
        self._it = iter(samples)

    def get_next(self) -> Inputs | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        pass


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
        q = require("onnxruntime.quantization", "onnxruntime")
        source = model.path
        if options.preprocess:
            source = preprocess_for_quantization(source, ctx.workdir)
        samples = ctx.calibration()
        if options.samples:
            samples = samples[: options.samples]
        methods = {
            "minmax": q.CalibrationMethod.MinMax,
            "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile,
        }
        types = {"qint8": q.QuantType.QInt8, "quint8": q.QuantType.QUInt8}
        out = ctx.workdir / "model.onnx"
        q.quantize_static(
            str(source),
            str(out),
            _Reader(samples),
            quant_format=q.QuantFormat.QDQ,
            per_channel=options.per_channel,
            activation_type=types[options.activation_type],
            weight_type=types[options.weight_type],
            calibrate_method=methods[options.calibration_method],
            op_types_to_quantize=list(options.op_types) or None,
            extra_options={"ActivationSymmetric": options.activation_type == "qint8"},
        )
        if source != model.path:
            source.unlink(missing_ok=True)
        return ModelFile(out, "onnx", "int8")
