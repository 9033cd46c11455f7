"""executorch_lower_int8: static INT8 with PT2E quantization (``XNNPACKQuantizer``),
calibrated on the model's calibration data, lowered to an ExecuTorch ``.pte`` with the
XNNPACK partitioner (see :mod:`orchestrator.passes.executorch.lower`)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import TORCH_PROGRAM, Pass, PassContext, first_rows, register_pass
from orchestrator.passes.common.torch_program import (
    dynamic_shapes,
    example_args,
    load_program,
    torch_batches,
)
from orchestrator.passes.executorch.lower import lower

log = logging.getLogger(__name__)


@dataclass
class LowerInt8Options:
    per_channel: bool = True  # weight scales per output channel (else per tensor)
    samples: int = 0  # calibration samples to use (0 = all)
    allow_portable_convolutions: bool = False  # keep 1-D/2-D convolutions XNNPACK did not take


@register_pass
class ExecutorchLowerInt8(Pass):
    name = "executorch_lower_int8"
    description = "ExecuTorch .pte, static INT8 (PT2E XNNPACKQuantizer, calibrated), XNNPACK"
    Options = LowerInt8Options
    input_formats = (TORCH_PROGRAM,)
    output_format = "pte"
    runtimes = ("executorch",)
    needs_calibration = True
    backend = "executorch"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        torch = require("torch")
        quantizer_mod = require(
            "executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch"
        )
        pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "torchao")
        program = load_program(model)
        args, shapes = example_args(program), dynamic_shapes(program)
        quantizer = quantizer_mod.XNNPACKQuantizer()
        quantizer.set_global(
            quantizer_mod.get_symmetric_quantization_config(is_per_channel=options.per_channel)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = pt2e.prepare_pt2e(program.module(), quantizer)
            with torch.no_grad():
                for batch in torch_batches(
                    first_rows(ctx.calibration(), options.samples), ctx.input_names
                ):
                    prepared(*batch)
            converted = pt2e.convert_pt2e(prepared)
            quantized = torch.export.export(converted, args, dynamic_shapes=shapes, strict=False)
        out = ctx.workdir / "model.pte"
        portable = lower(quantized, out, self.name, options.allow_portable_convolutions)
        log.info("executorch_lower_int8: operators outside XNNPACK %s", portable)
        return ModelFile(out, "pte", "int8")
