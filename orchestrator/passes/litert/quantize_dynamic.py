"""litert_quantize_dynamic: INT8 weights of a LiteRT model with ai-edge-quantizer, no
calibration.

``dynamic``: the ``dynamic_wi8_afp32`` recipe (INT8 weights, activations quantized at run
time by the kernels that can); ``weight_only``: ``weight_only_wi8_afp32`` (INT8 weights
stored, computed in float).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.litert.ops import check_runnable, op_counts
from orchestrator.passes.litert.quantize_static import quantize

log = logging.getLogger(__name__)


@dataclass
class LitertDynamicOptions:
    mode: str = field(
        default="dynamic", metadata={"choices": ("dynamic", "weight_only")}
    )  # dynamic: INT8 weights and run-time activation quantization; weight_only: weights only


@register_pass
class LitertQuantizeDynamic(Pass):
    name = "litert_quantize_dynamic"
    description = "INT8 weights of a LiteRT model, dynamic or weight-only (ai-edge-quantizer)"
    Options = LitertDynamicOptions
    input_formats = ("tflite",)
    output_format = "tflite"
    runtimes = ("litert",)
    backend = "ai_edge_quantizer"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        recipe_mod = require("ai_edge_quantizer.recipe", "ai_edge_quantizer")
        recipe = (
            recipe_mod.dynamic_wi8_afp32()
            if options.mode == "dynamic"
            else recipe_mod.weight_only_wi8_afp32()
        )
        out = ctx.workdir / "model.tflite"
        quantize(model, recipe, None, out)
        ops = check_runnable(out, self.name)
        log.info("litert_quantize_dynamic: operators %s", op_counts(ops))
        return ModelFile(out, "tflite", "int8")
