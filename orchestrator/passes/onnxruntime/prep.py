"""Shared steps of the ONNX Runtime quantization passes: clean-up, then calibrated QDQ."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Inputs, PassContext, first_rows

log = logging.getLogger(__name__)


def preprocess_for_quantization(source: Path, workdir: Path) -> Path:
    """onnxruntime's quant_pre_process; falls back to ``source`` for graphs it cannot handle."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(out), skip_symbolic_shape=False)
    except Exception as exc:  # symbolic shape inference does not know every op
        log.warning("quantization pre-processing skipped: %s", exc)
        return source
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of samples."""

    def __init__(self, samples: list[Inputs]) -> None:
        self._it = iter(samples)

    def get_next(self) -> Inputs | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        pass


def quantize_static_qdq(
    model: ModelFile,
    options: Any,
    ctx: PassContext,
    *,
    activation_type: str,
    weight_type: str,
    extra_options: dict[str, Any],
) -> ModelFile:
    """``quantize_static`` to QDQ, calibrated on the model's calibration data.

    ``options`` carries the fields both static passes share: ``preprocess``,
    ``samples``, ``calibration_method``, ``per_channel`` and ``op_types``.
    Types are ``qint8`` or ``quint8``.
    """
    q = require("onnxruntime.quantization", "onnxruntime")
    source = model.path
    if options.preprocess:
        source = preprocess_for_quantization(source, ctx.workdir)
    samples = first_rows(ctx.calibration(), options.samples)
    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }
    types = {"qint8": q.QuantType.QInt8, "quint8": q.QuantType.QUInt8}
    out = ctx.workdir / "model.onnx"
    q.quantize_static(
        str(source),
        str(out),
        _Reader(samples),
        quant_format=q.QuantFormat.QDQ,
        per_channel=options.per_channel,
        activation_type=types[activation_type],
        weight_type=types[weight_type],
        calibrate_method=methods[options.calibration_method],
        op_types_to_quantize=list(options.op_types) or None,
        extra_options=extra_options,
    )
    if source != model.path:
        source.unlink(missing_ok=True)
    return ModelFile(out, "onnx", "int8")
