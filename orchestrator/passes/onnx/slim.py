"""onnxslim: constant folding, dead-node removal and pattern fusions in plain ONNX ops.

Unlike ONNX Runtime's offline optimisation, the result uses only standard ONNX
operators, so every runtime that loads ONNX (OpenVINO, TensorRT, ONNX Runtime,
ONNX Runtime Mobile) can take it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass

log = logging.getLogger(__name__)


OPTIMIZATIONS = (
    "constant_folding",
    "graph_fusion",
    "dead_node_elimination",
    "subexpression_elimination",
    "weight_tying",
)


@dataclass
class SlimOptions:
    skip_optimizations: list[str] = field(
        default_factory=list, metadata={"choices": OPTIMIZATIONS}
    )  # onnxslim steps not to run (all run by default)
    shape_inference: bool = True  # infer shapes first (more folding opportunities)
    skip_fusion_patterns: list[str] = field(default_factory=list)  # e.g. FusionConvBN


@register_pass
class OnnxSlim(Pass):
    name = "onnxslim"
    description = "onnxslim graph simplification (standard ONNX ops only, any ONNX runtime)"
    Options = SlimOptions
    runtimes = ("onnxruntime", "onnxruntime_mobile", "openvino", "tensorrt")
    backend = "onnxslim"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        onnx = require("onnx")
        onnxslim = require("onnxslim")
        before = onnx.load(str(model.path))
        nodes_before = len(before.graph.node)
        slimmed = onnxslim.slim(
            before,
            no_shape_infer=not options.shape_inference,
            skip_optimizations=list(options.skip_optimizations) or None,
            skip_fusion_patterns=list(options.skip_fusion_patterns) or None,
        )
        if slimmed is None:
            raise BuildError("error: onnxslim returned no model")
        out = ctx.workdir / "model.onnx"
        onnx.save_model(slimmed, str(out))
        onnx.checker.check_model(str(out))
        log.info("onnxslim: %d -> %d nodes", nodes_before, len(slimmed.graph.node))
        return ModelFile(out, "onnx", model.precision)
