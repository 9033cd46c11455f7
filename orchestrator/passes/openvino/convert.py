"""Convert ONNX to OpenVINO IR (.xml + .bin), optionally with FP16-compressed weights or
for bfloat16 execution (FP32 weights; the device runs bf16 where its CPU has it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.core.shapes import openvino_shapes
from orchestrator.passes.base import Pass, PassContext, register_pass


@dataclass
class ConvertOptions:
    compress_to_fp16: bool = False  # store weights as FP16 (half the size on disk)
    bf16: bool = False  # run in bfloat16 (INFERENCE_PRECISION_HINT bf16), FP32 weights on disk


@register_pass
class OvConvert(Pass):
    name = "ov_convert"
    description = "OpenVINO IR conversion (FP32, FP16-compressed weights, or bf16 execution)"
    Options = ConvertOptions
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    backend = "openvino"

    def output_precision(self, options: Any, current: str) -> str:
        if options.bf16 and current == "fp32":
            return "bf16"
        return "fp16" if options.compress_to_fp16 and current == "fp32" else current

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ov = require("openvino")
        ov_model = ov.convert_model(str(model.path))
        if ctx.input_bounds:
            # dynamic dims bounded to the declared range: the CPU plugin sizes its buffers once
            ov_model.reshape(openvino_shapes(ov, ctx.input_bounds))
        out = ctx.workdir / "model.xml"
        ov.save_model(ov_model, str(out), compress_to_fp16=options.compress_to_fp16)
        return ModelFile(out, "openvino_ir", self.output_precision(options, model.precision))
