"""FP16 conversion of an ONNX model, inputs and outputs kept FP32.

Weights and activations become float16 (ONNX Runtime's converter,
``onnxruntime.transformers.float16``); casts at the graph's edges keep the
inputs and outputs float32, so an app feeds and reads the same arrays as before.
TensorRT builds such a model as a strongly typed FP16 network.

ONNX Runtime's CPU execution provider has FP16 kernels for few operators; for the
rest it inserts casts and computes in FP32 while tensors between operators stay
FP16, so parity measured on a CPU approximates (and slightly flatters) FP16
execution on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass


@dataclass
class Float16Options:
    keep_io_types: bool = True  # inputs and outputs stay float32 (casts at the graph's edges)
    op_block_list: list[str] = field(default_factory=list)  # ops kept FP32 besides the defaults
    # values beyond float16's range are clamped to these when weights are converted
    min_positive_val: float = 5.96e-08
    max_finite_val: float = 65504.0


@register_pass
class OnnxFloat16(Pass):
    name = "onnx_fp16"
    description = "FP16 weights and activations, FP32 inputs/outputs (ONNX float16 conversion)"
    Options = Float16Options
    runtimes = ("onnxruntime", "tensorrt")
    backend = "onnxruntime"

    def output_precision(self, options: Any, current: str) -> str:
        return "fp16" if current == "fp32" else current

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        onnx = require("onnx")
        f16 = require("onnxruntime.transformers.float16", "onnxruntime")
        proto = onnx.load(str(model.path))
        blocked = list(f16.DEFAULT_OP_BLOCK_LIST) + list(options.op_block_list)
        converted = f16.convert_float_to_float16(
            proto,
            min_positive_val=options.min_positive_val,
            max_finite_val=options.max_finite_val,
            keep_io_types=options.keep_io_types,
            op_block_list=blocked,
        )
        topological_sort(converted.graph)
        out = ctx.workdir / "model.onnx"
        onnx.save_model(converted, str(out))
        onnx.checker.check_model(str(out))
        return ModelFile(out, "onnx", self.output_precision(options, model.precision))


def topological_sort(graph: Any) -> None:
    """Order ``graph.node`` so each node follows the producers of its inputs.

    The converter appends the casts of kept-FP32 inputs after the nodes that read
    them; ONNX (and TensorRT's parser) require producers first. Already ordered
    nodes keep their order.
    """
    known = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in known})
            raise BuildError(f"error: onnx_fp16: graph has inputs nothing produces: {missing[:5]}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
