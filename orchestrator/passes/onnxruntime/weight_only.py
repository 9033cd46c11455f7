"""Weight-only quantization of MatMul weights: INT8 or INT4 blocks, float activations.

ONNX Runtime's ``MatMulNBitsQuantizer`` replaces every MatMul whose weight is a constant
with a ``MatMulNBits`` node (contrib domain) holding the weight in ``bits``-bit blocks of
``block_size`` values along the input dimension, one scale (and, asymmetric, one zero
point) per block. Activations stay float, so the decoder's arithmetic and its KV cache
are those of the float model; what shrinks is the weight memory that bounds decoding
speed. It runs after a single export, on the exported graph: one export serves every
precision. The model's companion files (config, tokenizer) travel along; the weights go to
``model.onnx.data`` beside the graph (``external_data``), which ONNX Runtime maps.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, register_pass


@dataclass
class WeightOnlyOptions:
    bits: int = field(default=8, metadata={"choices": (4, 8)})  # weight bits per value
    block_size: int = 32  # values per quantization block (a power of two, 16 or more)
    symmetric: bool = True  # no zero points: scales only
    accuracy_level: int = 4  # MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8
    # the weights in model.onnx.data beside the graph: ONNX Runtime memory-maps that file
    # instead of copying the weights out of the graph (a lower peak memory), and a graph
    # over protobuf's 2 GB (a real-size LLM) can only be saved that way
    external_data: bool = True


@register_pass
class OrtWeightOnly(Pass):
    name = "ort_weight_only"
    description = "ONNX Runtime MatMulNBits: weight-only INT8/INT4 blocks, float activations"
    Options = WeightOnlyOptions
    runtimes = ("onnxruntime",)
    backend = "onnxruntime"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8" if options.bits == 8 else "int4"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        onnx = require("onnx")
        nbits = require("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime")
        proto = onnx.load(str(model.path))
        quant = nbits.MatMulNBitsQuantizer(
            proto,
            bits=int(options.bits),
            block_size=int(options.block_size),
            is_symmetric=bool(options.symmetric),
            accuracy_level=int(options.accuracy_level) or None,
        )
        quant.process()
        out = ctx.workdir / "model.onnx"
        external = bool(options.external_data)
        quant.model.save_model_to_file(str(out), use_external_data_format=external)
        extra = []
        if external:
            data = out.with_name(out.name + ".data")
            data.chmod(0o644)  # onnx writes it owner-only; it travels like the graph
            extra.append(data)
        for p in model.extra:
            if p.name.endswith((".onnx_data", ".onnx.data")):
                continue  # the input's weights: the new graph has its own
            shutil.copy2(p, ctx.workdir / p.name)
            extra.append(ctx.workdir / p.name)
        return ModelFile(out, "onnx", self.output_precision(options, model.precision), tuple(extra))
