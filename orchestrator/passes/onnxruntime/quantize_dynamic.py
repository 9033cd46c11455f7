"""ONNX Runtime dynamic INT8 quantization: weights quantized offline, activations at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.onnxruntime.prep import preprocess_for_quantization


@dataclass
class QuantizeDynamicOptions:
    weight_type: str = field(default="qint8", metadata={"choices": ("qint8", "quint8")})
    per_channel: bool = False  # one scale per output channel instead of per tensor
    op_types: list[str] = field(default_factory=list)  # quantize only these ops (empty = all)
    preprocess: bool = True  # shape inference + graph clean-up before quantizing


@register_pass
class OrtQuantizeDynamic(Pass):
    name = "ort_quantize_dynamic"
    description = "ONNX Runtime dynamic INT8 quantization (no calibration data)"
    Options = QuantizeDynamicOptions
    runtimes = ("onnxruntime", "onnxruntime_mobile")
    backend = "onnxruntime"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        q = require("onnxruntime.quantization", "onnxruntime")
        out = ctx.workdir / "model.onnx"
        weight_type = {"qint8": q.QuantType.QInt8, "quint8": q.QuantType.QUInt8}[
            options.weight_type
        ]
        source = model.path
        if options.preprocess:
            source = preprocess_for_quantization(source, ctx.workdir)
        q.quantize_dynamic(
            str(source),
            str(out),
            weight_type=weight_type,
            per_channel=options.per_channel,
            op_types_to_quantize=list(options.op_types) or None,
        )
        return ModelFile(out, "onnx", "int8")
