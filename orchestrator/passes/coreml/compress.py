"""INT8 weights for a Core ML package (coremltools.optimize.coreml.linear_quantize_weights).

Each weight of ``weight_threshold`` elements or more becomes INT8 with one scale per
output channel (``linear_symmetric``); Core ML dequantizes it at load
(``constexpr_affine_dequantize``), so activations keep the package's compute precision.
The package is checked again (operations, inputs and outputs) and the summary beside it
records the compression, which validation off Apple's systems reproduces in PyTorch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core import coreml_package as cm
from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.coreml.convert import check_package, write_summary


@dataclass
class CoremlCompressOptions:
    mode: str = field(default="linear_symmetric", metadata={"choices": ("linear_symmetric",)})
    weight_threshold: int = 2048  # weights with fewer elements stay as they are


@register_pass
class CoremlCompress(Pass):
    name = "coreml_compress"
    description = "Core ML INT8 weights, per-channel symmetric (linear_quantize_weights)"
    Options = CoremlCompressOptions
    input_formats = ("mlpackage",)
    output_format = "mlpackage"
    runtimes = ("coreml",)
    backend = "coremltools"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ct = cm.coremltools()
        from coremltools.optimize.coreml import (
            OpLinearQuantizerConfig,
            OptimizationConfig,
            linear_quantize_weights,
        )

        summary = cm.read_summary(model.path)
        if not summary:
            raise BuildError(
                f"error: {model.path.name}: no {cm.SUMMARY} beside it; coreml_compress takes "
                "the package coreml_convert makes"
            )
        source = model.path.parent / cm.SOURCE_PROGRAM
        mlmodel = ct.models.MLModel(str(model.path), skip_model_load=True)
        config = OptimizationConfig(
            global_config=OpLinearQuantizerConfig(
                mode=options.mode,
                dtype="int8",
                granularity="per_channel",
                weight_threshold=options.weight_threshold,
            )
        )
        try:
            with third_party_output("coremltools", ("coremltools",), stderr=True):
                compressed = linear_quantize_weights(mlmodel, config=config)
        except Exception as exc:
            raise BuildError(f"error: coremltools could not compress the weights: {exc}") from exc
        out = ctx.workdir / "model.mlpackage"
        compressed.save(str(out))
        inputs = [(i["name"], i["shape"]) for i in summary["inspection"]["inputs"]]
        target = str(summary["minimum_deployment_target"])
        info = check_package(out, target, inputs, list(summary["output_names"]))
        shutil.copy2(source, ctx.workdir / cm.SOURCE_PROGRAM)
        summary = {
            **summary,
            "weights": {
                "dtype": "int8",
                "mode": options.mode,
                "granularity": "per_channel",
                "weight_threshold": options.weight_threshold,
            },
            "inspection": info,
        }
        written = write_summary(ctx.workdir, json.loads(json.dumps(summary)))
        return ModelFile(out, "mlpackage", "int8", (written, ctx.workdir / cm.SOURCE_PROGRAM))
