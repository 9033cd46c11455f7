"""NNCF post-training INT8 quantization of an OpenVINO IR model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, first_rows, register_pass


@dataclass
class NncfQuantizeOptions:
    """The options of NNCF post-training quantization (the accuracy-control pass adds its own)."""

    preset: str = field(default="performance", metadata={"choices": ("performance", "mixed")})
    # performance: symmetric activations; mixed: asymmetric activations (better for ReLU-free nets)
    subset_size: int = 300  # calibration samples NNCF draws at most (whole batches of them)
    fast_bias_correction: bool = True  # False runs the slower, more exact bias correction
    # INT8 weights in 7 bits so that u8 x s8 products cannot saturate the 16-bit sums of
    # CPUs without VNNI (AVX2 only: many NUCs); NNCF's own default fixes the first layer
    # only, which lost 0.04-0.5 Dice on such a CPU: enable, first_layer_only, disable
    overflow_fix: str = field(
        default="enable", metadata={"choices": ("enable", "first_layer_only", "disable")}
    )


def calibration_dataset(nncf: Any, ctx: PassContext, subset_size: int) -> tuple[Any, int]:
    """The model's calibration batches as an ``nncf.Dataset``, and NNCF's ``subset_size``:
    how many of its items (batches) hold ``subset_size`` samples, at most all of them."""
    batches = ctx.calibration()
    names = ctx.input_names
    items = len(first_rows(batches, subset_size))
    return nncf.Dataset(batches, lambda s: {n: s[n] for n in names}), items


def quantization_preset(nncf: Any, name: str) -> Any:
    return {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }[name]


def advanced_parameters(nncf: Any, overflow_fix: str) -> Any:
    from nncf.quantization.advanced_parameters import OverflowFix

    return nncf.AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))


def save_int8(ov: Any, quantized: Any, ctx: PassContext) -> ModelFile:
    """The quantized IR, written uncompressed into the pass's work folder."""
    out = ctx.workdir / "model.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return ModelFile(out, "openvino_ir", "int8")


@register_pass
class NncfQuantize(Pass):
    name = "nncf_quantize"
    description = "NNCF post-training INT8 quantization (OpenVINO IR, calibrated)"
    Options = NncfQuantizeOptions
    input_formats = ("openvino_ir",)
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    needs_calibration = True
    backend = "nncf"

    def output_precision(self, options: Any, current: str) -> str:
        return "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ov = require("openvino")
        nncf = require("nncf")
        dataset, items = calibration_dataset(nncf, ctx, options.subset_size)
        with third_party_output("nncf", ("nncf",)):
            quantized = nncf.quantize(
                ov.Core().read_model(str(model.path)),
                dataset,
                preset=quantization_preset(nncf, options.preset),
                subset_size=items,
                fast_bias_correction=options.fast_bias_correction,
                advanced_parameters=advanced_parameters(nncf, options.overflow_fix),
            )
        return save_int8(ov, quantized, ctx)
