"""NNCF post-training INT8 quantization of an OpenVINO IR model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, register_pass


@dataclass
class NncfQuantizeOptions:
    """The options of NNCF post-training quantization (the accuracy-control pass adds its own)."""

    preset: str = field(default="performance", metadata={"choices": ("performance", "mixed")})
    # performance: symmetric activations; mixed: asymmetric activations (better for ReLU-free nets)
    subset_size: int = 300  # calibration samples NNCF draws at most
    fast_bias_correction: bool = True  # False runs the slower, more exact bias correction


def calibration_dataset(nncf: Any, ctx: PassContext) -> tuple[Any, int]:
    """The model's calibration samples as an ``nncf.Dataset``, and how many there are."""
    samples = ctx.calibration()
    names = ctx.input_names
    return nncf.Dataset(samples, lambda s: {n: s[n] for n in names}), len(samples)


def quantization_preset(nncf: Any, name: str) -> Any:
    return {
        "performance": nncf.QuantizationPreset.PERFORMANCE,
        "mixed": nncf.QuantizationPreset.MIXED,
    }[name]


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
        dataset, count = calibration_dataset(nncf, ctx)
        quantized = nncf.quantize(
            ov.Core().read_model(str(model.path)),
            dataset,
            preset=quantization_preset(nncf, options.preset),
            subset_size=min(options.subset_size, count),
            fast_bias_correction=options.fast_bias_correction,
        )
        return save_int8(ov, quantized, ctx)
