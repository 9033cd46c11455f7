"""Run per-sample data through a model that takes batches, and split the outputs again.

Evaluation data is kept one sample per entry (batch axis 1). A model with a static
batch of 16 takes exactly 16 samples at a time, and a dynamic batch is validated
at its ``opt`` size; :func:`run_batched` groups consecutive samples of equal shapes
into chunks of that size (padding the last chunk with copies of its last sample
when the batch is static), runs each chunk and hands back one output list per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from orchestrator.core.schema import ModelConfig
from orchestrator.core.shapes import batch_dim, dim_bounds
from orchestrator.passes.base import Inputs

Run = Callable[[Inputs], Sequence[np.ndarray]]


def _key(sample: Inputs) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((n, tuple(a.shape)) for n, a in sample.items())


def _groups(samples: list[Inputs], size: int) -> list[list[Inputs]]:
    """Consecutive samples in groups of at most ``size``, a new group at each shape change."""
    out: list[list[Inputs]] = []
    for s in samples:
        if out and len(out[-1]) < size and _key(out[-1][0]) == _key(s):
            out[-1].append(s)
        else:
            out.append([s])
    return out


def chunks(samples: list[Inputs], size: int, pad: bool) -> list[tuple[Inputs, int]]:
    """Samples stacked into chunks of ``size`` (fewer at a shape change or at the end);
    each with how many of its rows are real samples. ``pad`` fills every chunk to ``size``."""
    out: list[tuple[Inputs, int]] = []
    for group in _groups(samples, max(size, 1)):
        rows = group + [group[-1]] * (size - len(group) if pad else 0)
        out.append(({n: np.concatenate([r[n] for r in rows]) for n in rows[0]}, len(group)))
    return out


def padding(samples: list[Inputs], size: int, pad: bool) -> int:
    """How many copies :func:`chunks` adds to fill its chunks (rows no metric counts)."""
    if not pad or size <= 1:
        return 0
    return sum(size - len(g) for g in _groups(samples, size))


def calibration_batches(model: ModelConfig, samples: list[Inputs]) -> list[Inputs]:
    """Calibration samples stacked to a batch the model takes: a static batch's size, else
    the dynamic batch's min (padded with copies of the last sample)."""
    dim = batch_dim(model)
    size = dim if isinstance(dim, int) else dim_bounds(model)[dim].min
    if size <= 1:
        return samples
    return [inputs for inputs, _ in chunks(samples, size, pad=True)]


def first_chunk(
    samples: list[Inputs], per_sample: list[list[np.ndarray]], size: int, pad: bool
) -> tuple[Inputs, list[np.ndarray]]:
    """The first chunk validation ran (the smoke test's input) and its outputs, stacked."""
    inputs, real = chunks(samples[: max(size, 1)], max(size, 1), pad)[0]
    rows = per_sample[:real] + [per_sample[real - 1]] * (len(next(iter(inputs.values()))) - real)
    return inputs, [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]


def run_batched(run: Run, samples: list[Inputs], size: int, pad: bool) -> list[list[np.ndarray]]:
    """Outputs per sample (batch axis 1 each) from running ``run`` on chunks of ``size``."""
    if size <= 1:
        return [[np.asarray(o) for o in run(s)] for s in samples]
    per_sample: list[list[np.ndarray]] = []
    for inputs, real in chunks(samples, size, pad):
        outs = [np.asarray(o) for o in run(inputs)]
        for i in range(real):
            per_sample.append([o[i : i + 1] for o in outs])
    return per_sample
