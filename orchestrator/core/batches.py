"""Per-sample data through a model that takes batches, and the outputs split per sample again.

Pure helpers over samples (one mapping input name -> array per sample, batch axis 1):
consecutive samples of equal shapes are stacked into chunks of a given size, a chunk
short of the size is filled with copies of its last sample when the model's batch is
static, and the outputs of the copies are dropped again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Inputs = dict[str, np.ndarray]
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
