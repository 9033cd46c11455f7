"""Shared step of the ONNX Runtime quantization passes: shape inference and clean-up first."""

from __future__ import annotations

import logging
from pathlib import Path

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
