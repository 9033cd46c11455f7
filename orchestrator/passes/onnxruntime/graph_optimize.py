"""ONNX Runtime graph optimisation, applied once at build time and saved offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, register_pass


@dataclass
class GraphOptimizeOptions:
    level: str = field(default="extended", metadata={"choices": ("basic", "extended", "all")})
    # "all" adds layout transforms specific to the build machine's CPU; "extended" stays portable


@register_pass
class OrtGraphOptimize(Pass):
    name = "ort_graph_optimize"
    description = "ONNX Runtime offline graph optimisation (constant folding, fusions)"
    Options = GraphOptimizeOptions
    runtimes = ("onnxruntime", "onnxruntime_mobile")
    backend = "onnxruntime"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ort = require("onnxruntime")
        levels = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        out = ctx.workdir / "model.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[options.level]
        so.optimized_model_filepath = str(out)
        if ctx.threads:
            so.intra_op_num_threads = ctx.threads
        ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
        return ModelFile(out, "onnx", model.precision)
