"""Convert ONNX to OpenVINO IR (.xml + .bin), optionally with FP16-compressed weights."""

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


@register_pass
class OvConvert(Pass):
    name = "ov_convert"
    description = "OpenVINO IR conversion (FP32, or FP16-compressed weights)"
    Options = ConvertOptions
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    backend = "openvino"

    def output_precision(self, options: Any, current: str) -> str:
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
