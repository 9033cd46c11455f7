"""litert_quantize_static: static INT8 of a LiteRT model with ai-edge-quantizer.

The ``static_wi8_ai8`` scheme: INT8 weights (per channel) and INT8 activations whose
ranges are calibrated on the model's calibration data, run through the float model's
signature. The model's inputs and outputs are left out of the recipe (``no_quantize``),
so they stay float and the app feeds the same arrays as to the FP32 model. The
result's operators are checked like the conversion's (a quantized ``CONV_3D`` has no
kernel).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, first_rows, register_pass
from orchestrator.passes.litert.ops import check_runnable, op_counts

log = logging.getLogger(__name__)

ALGORITHMS = ("min_max_uniform_quant", "octav")


def signature_inputs(path: Any) -> tuple[str, list[str]]:
    """The default signature of a ``.tflite`` file and its input names in argument order."""
    interpreter = require("ai_edge_litert.interpreter", "ai_edge_litert")
    it = interpreter.Interpreter(model_path=str(path))
    signatures = it.get_signature_list()
    key = next(iter(signatures))
    return key, ordered_names(signatures[key]["inputs"])


def ordered_names(names: list[str]) -> list[str]:
    """litert-torch names inputs ``args_0, args_1, ...``: in argument order, not text order."""

    def index(name: str) -> tuple[int, str]:
        tail = name.rsplit("_", 1)[-1]
        return (int(tail), name) if tail.isdigit() else (1 << 30, name)

    return sorted(names, key=index)


def static_recipe(algorithm: str) -> Any:
    """``static_wi8_ai8`` with float inputs and outputs (ai-edge-quantizer's RecipeManager)."""
    aeq = require("ai_edge_quantizer.quantizer", "ai_edge_quantizer")
    recipe_manager = require("ai_edge_quantizer.recipe_manager", "ai_edge_quantizer")
    qtyping = require("ai_edge_quantizer.qtyping", "ai_edge_quantizer")
    names = aeq.AlgorithmName
    key = {"min_max_uniform_quant": names.MIN_MAX_UNIFORM_QUANT, "octav": names.OCTAV}[algorithm]
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
        algorithm_key=key,
    )
    for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        manager.add_quantization_config(
            regex=".*", operation_name=edge, algorithm_key=names.NO_QUANTIZE
        )
    return manager.get_quantization_recipe()


def quantize(
    model: ModelFile, recipe: Any, calibration: list[dict[str, Any]] | None, out: Any
) -> None:
    """Quantize ``model`` with an ai-edge-quantizer recipe into ``out``."""
    aeq = require("ai_edge_quantizer.quantizer", "ai_edge_quantizer")
    bars = io.StringIO()  # the calibration progress bar (tqdm, on stderr) goes to the log
    with (
        third_party_output("ai_edge_quantizer", ("ai_edge_quantizer", "absl")),
        contextlib.redirect_stderr(bars),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        qt = aeq.Quantizer(str(model.path), recipe)
        result = None
        if calibration is not None:
            key, _ = signature_inputs(model.path)
            result = qt.calibrate({key: calibration})
        quantized = qt.quantize(result, enable_progress_report=False)
    log.debug("ai-edge-quantizer: %s", bars.getvalue().strip()[-500:])
    if quantized.quantized_model is None:
        raise BuildError("error: ai-edge-quantizer returned no model")
    out.write_bytes(bytes(quantized.quantized_model))


@dataclass
class LitertStaticOptions:
    algorithm: str = field(
        default="min_max_uniform_quant", metadata={"choices": ALGORITHMS}
    )  # how activation and weight ranges become scales
    samples: int = 0  # calibration samples to use (0 = all)


@register_pass
class LitertQuantizeStatic(Pass):
    name = "litert_quantize_static"
    description = "static INT8 LiteRT model (ai-edge-quantizer static_wi8_ai8), calibrated"
    Options = LitertStaticOptions
    input_formats = ("tflite",)
    output_format = "tflite"
    runtimes = ("litert",)
    needs_calibration = True
    backend = "ai_edge_quantizer"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        _, arg_names = signature_inputs(model.path)
        if len(arg_names) != len(ctx.input_names):
            raise BuildError(
                f"error: {model.path.name} takes {len(arg_names)} input(s); the model has "
                f"{len(ctx.input_names)} ({', '.join(ctx.input_names)})"
            )
        batches = first_rows(ctx.calibration(), options.samples)
        calibration = [
            {a: b[n] for a, n in zip(arg_names, ctx.input_names, strict=True)} for b in batches
        ]
        out = ctx.workdir / "model.tflite"
        quantize(model, static_recipe(options.algorithm), calibration, out)
        ops = check_runnable(out, self.name)
        log.info("litert_quantize_static: operators %s", op_counts(ops))
        return ModelFile(out, "tflite", "int8")
