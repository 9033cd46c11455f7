"""NNCF INT8 quantization with accuracy control (``nncf.quantize_with_accuracy_control``).

NNCF quantizes the IR, measures a metric on the evaluation data (the model's own:
accuracy, or Dice for segmentation; or, with ``against: reference``, parity with
the FP32 reference model; see :mod:`orchestrator.passes.common.evaluation`), and
reverts the layers that cost the most back to floating point until the drop from
the FP32 model is at most ``max_drop``. With ``float_precision: bf16`` the layers kept
in floating point run in bfloat16 on CPUs that have it (precision ``int8_bf16``); the
build's gates measure the artifact at the precision OpenVINO reports.

The evaluation data steers which layers stay in floating point, and the
deployment's gates are measured on the same data; held-out evidence comes from
data the build never saw (a benchmark volume, the device's smoke test).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Inputs, Pass, PassContext, register_pass
from orchestrator.passes.common.evaluation import Evaluation

if TYPE_CHECKING:
    import numpy as np
from orchestrator.passes.openvino.nncf_quantize import (
    NncfQuantizeOptions,
    advanced_parameters,
    calibration_dataset,
    quantization_preset,
    save_int8,
)

log = logging.getLogger(__name__)


@dataclass
class NncfAccuracyOptions(NncfQuantizeOptions):
    max_drop: float = 0.01  # largest allowed drop of the metric vs the FP32 model
    against: str = field(default="labels", metadata={"choices": ("labels", "reference")})
    # labels: the model's task metric on the evaluation data (accuracy, Dice vs labels);
    # reference: parity with the FP32 reference model's predictions (agreement, Dice vs reference)
    drop_type: str = field(default="absolute", metadata={"choices": ("absolute", "relative")})
    max_reverted_layers: int = 0  # stop after reverting this many layers (0 = no limit)
    float_precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16")})
    # what the layers kept in floating point run at: fp32, or bf16 where the CPU has it
    # (the artifact's precision is then int8_bf16)


@register_pass
class NncfQuantizeAccuracy(Pass):
    name = "nncf_quantize_accuracy"
    description = "NNCF INT8 with accuracy control (reverts layers until the metric drop fits)"
    Options = NncfAccuracyOptions
    input_formats = ("openvino_ir",)
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    needs_calibration = True
    backend = "nncf"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8_bf16" if options.float_precision == "bf16" else "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ov = require("openvino")
        nncf = require("nncf")
        evaluation = ctx.evaluate
        if not isinstance(evaluation, Evaluation) or not len(evaluation):
            raise BuildError(
                "error: nncf_quantize_accuracy needs the model's evaluation data "
                "(model.data.eval) to measure the metric it protects"
            )
        if options.against == "reference":
            evaluation = evaluation.against_reference()
        calibration, items = calibration_dataset(nncf, ctx, options.subset_size)
        # items are sample indices, so the validation function can score each one
        validation = nncf.Dataset(
            list(range(len(evaluation))), lambda i: dict(evaluation.samples[i])
        )

        def validate(compiled: Any, items: Iterable[int]) -> tuple[float, list[float]]:
            request = compiled.create_infer_request()
            outputs = list(compiled.outputs)

            def predict(sample: Inputs) -> list[np.ndarray]:
                import numpy as np

                result = request.infer(sample)
                return [np.asarray(result[o]) for o in outputs]

            return evaluation.score(predict, items)

        advanced = nncf.quantization.advanced_parameters.AdvancedAccuracyRestorerParameters()
        if options.max_reverted_layers:
            advanced.max_num_iterations = options.max_reverted_layers
        drop_type = {"absolute": nncf.DropType.ABSOLUTE, "relative": nncf.DropType.RELATIVE}[
            options.drop_type
        ]
        with third_party_output("nncf", ("nncf",)):
            quantized = nncf.quantize_with_accuracy_control(
                ov.Core().read_model(str(model.path)),
                calibration,
                validation,
                validate,
                max_drop=options.max_drop,
                drop_type=drop_type,
                preset=quantization_preset(nncf, options.preset),
                subset_size=items,
                fast_bias_correction=options.fast_bias_correction,
                advanced_quantization_parameters=advanced_parameters(nncf, options.overflow_fix),
                advanced_accuracy_restorer_parameters=advanced,
            )
        log.info("nncf accuracy control on %s (max drop %s)", evaluation.metric, options.max_drop)
        saved = save_int8(ov, quantized, ctx)
        return ModelFile(saved.path, saved.format, self.output_precision(options, model.precision))
