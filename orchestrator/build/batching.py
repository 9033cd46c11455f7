"""Run per-sample data through a model that takes batches, and split the outputs again.

Evaluation data is kept one sample per entry (batch axis 1). A model with a static
batch of 16 takes exactly 16 samples at a time, and a dynamic batch is validated
at its ``opt`` size; :func:`run_batched` (in :mod:`orchestrator.core.batches`) groups
consecutive samples of equal shapes into chunks of that size (padding the last chunk
with copies of its last sample when the batch is static), runs each chunk and hands
back one output list per sample. Calibration data is stacked the same way.
"""

from __future__ import annotations

import numpy as np

from orchestrator.core.batches import Run, chunks, padding, run_batched
from orchestrator.core.schema import ModelConfig
from orchestrator.core.shapes import batch_dim, dim_bounds
from orchestrator.passes.base import Inputs

__all__ = ["Run", "calibration_batches", "chunks", "first_chunk", "padding", "run_batched"]


def calibration_batches(model: ModelConfig, samples: list[Inputs]) -> list[Inputs]:
    """Calibration samples stacked to batches the model takes.

    A static batch takes chunks of its size, the last one filled up with the first
    samples again (then with copies of its last sample, where shapes differ); a dynamic
    batch takes chunks of its max. Large, varied chunks matter to range estimators that
    average each chunk's min and max (NNCF's defaults): such a chunk's range is close to
    the whole data's, where a single sample's (or copies of one) is narrower.
    """
    dim = batch_dim(model)
    size = dim if isinstance(dim, int) else dim_bounds(model)[dim].max
    if size <= 1 or not samples:
        return samples
    if isinstance(dim, int) and len(samples) % size:
        fill = size - len(samples) % size
        samples = samples + [samples[i % len(samples)] for i in range(fill)]
    return [inputs for inputs, _ in chunks(samples, size, pad=isinstance(dim, int))]


def first_chunk(
    samples: list[Inputs], per_sample: list[list[np.ndarray]], size: int, pad: bool
) -> tuple[Inputs, list[np.ndarray]]:
    """The first chunk validation ran (the smoke test's input) and its outputs, stacked."""
    inputs, real = chunks(samples[: max(size, 1)], max(size, 1), pad)[0]
    rows = per_sample[:real] + [per_sample[real - 1]] * (len(next(iter(inputs.values()))) - real)
    return inputs, [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]
