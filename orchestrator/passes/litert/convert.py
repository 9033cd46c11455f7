"""litert_convert: a torch.export program to a LiteRT (TensorFlow Lite) model with litert-torch.

``litert_torch.convert`` traces the program's module at its example inputs (with its
dynamic dimensions) and writes a ``.tflite`` flatbuffer, FP32. The operators of the
result are checked against what a phone's LiteRT interpreter runs (see
:mod:`orchestrator.passes.litert.ops`): a model with an operator it lacks is refused
here, not on the phone.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import TORCH_PROGRAM, Pass, PassContext, register_pass
from orchestrator.passes.common.torch_program import dynamic_shapes, example_args, load_program
from orchestrator.passes.litert.ops import check_runnable, op_counts

log = logging.getLogger(__name__)


def eval_module(program: Any) -> Any:
    """The program's module flagged as in evaluation mode, as converters expect.

    The graph was traced from the module in evaluation mode already; an exported module
    refuses ``eval()``, so only the flag is set.
    """
    module = program.module()
    for sub in module.modules():
        sub.training = False
    return module


@register_pass
class LitertConvert(Pass):
    name = "litert_convert"
    description = (
        "LiteRT .tflite from the torch program (litert-torch, FP32); refuses ops a phone lacks"
    )
    input_formats = (TORCH_PROGRAM,)
    output_format = "tflite"
    runtimes = ("litert",)
    backend = "litert_torch"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        litert_torch = require("litert_torch")
        program = load_program(model)
        out = ctx.workdir / "model.tflite"
        with (
            third_party_output("litert_torch", ("litert_torch", "absl")),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            edge = litert_torch.convert(
                eval_module(program), example_args(program), dynamic_shapes=dynamic_shapes(program)
            )
            edge.export(str(out))
        ops = check_runnable(out, self.name)
        log.info("litert_convert: operators %s", op_counts(ops))
        return ModelFile(out, "tflite", "fp32")
