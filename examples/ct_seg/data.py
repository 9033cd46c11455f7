"""Data sets, sliding-window inference and Dice scoring for the CT segmentation example.

Phantom seeds are split into disjoint ranges: evaluation and calibration use small
seeds (defaults 1000 and 500) and must stay below :data:`TRAIN_SEED_START`; training
seeds are drawn at or above it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from examples.ct_seg.phantoms import NUM_CLASSES, make_volume, normalize
from examples.ct_seg.unet import PRESETS

logger = logging.getLogger(__name__)

Patch = tuple[int, int, int]
PredictFn = Callable[[np.ndarray], Any]

DEFAULT_PATCH: Patch = PRESETS["small"]["patch"]
TRAIN_SEED_START: int = 1_000_000
EVAL_SEED: int = 1000
CALIBRATION_SEED: int = 500


def _patch(patch: Sequence[int] | None) -> Patch:
    if patch is None:
        return DEFAULT_PATCH
    values = [int(v) for v in patch]
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"patch must be three positive sizes, got {patch}")
    return (values[0], values[1], values[2])


def make_batch(
    seeds: Sequence[int], patch: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Phantoms for ``seeds``: normalised float32 ``[N, 1, D, H, W]`` and int64 ``[N, D, H, W]``."""
    p = _patch(patch)
    xs, ys = [], []
    for s in seeds:
        hu, lab = make_volume(int(s), p)
        xs.append(normalize(hu)[None])
        ys.append(lab)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)


def _held_out(samples: int, seed: int, name: str) -> range:
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    seeds = range(seed, seed + samples)
    if seed < 0 or seeds.stop > TRAIN_SEED_START:
        raise ValueError(
            f"{name} seeds {seeds.start}..{seeds.stop - 1} must lie in [0, {TRAIN_SEED_START})"
        )
    return seeds


def eval_set(
    samples: int = 4, patch: Sequence[int] | None = None, seed: int = EVAL_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out evaluation phantoms of exactly the model's patch size.

    Args:
        samples: Number of volumes (seeds ``seed .. seed + samples - 1``).
        patch: ``(D, H, W)``; defaults to the small preset's patch.
        seed: First seed; the range must stay below :data:`TRAIN_SEED_START`.

    Returns:
        Normalised float32 ``[N, 1, D, H, W]`` and int64 labels ``[N, D, H, W]``.
    """
    return make_batch(_held_out(samples, seed, "eval"), patch)


def calibration_set(
    samples: int = 8, patch: Sequence[int] | None = None, seed: int = CALIBRATION_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration phantoms (for quantisation) from seeds disjoint from eval and training.

    Returns:
        Normalised float32 ``[N, 1, D, H, W]`` and int64 labels ``[N, D, H, W]``.
    """
    seeds = _held_out(samples, seed, "calibration")
    if seeds.start < EVAL_SEED + 500 and seeds.stop > EVAL_SEED:
        raise ValueError(f"calibration seeds {seeds} overlap the evaluation seed range")
    return make_batch(seeds, patch)


def train_seeds(seed: int, count: int) -> np.ndarray:
    """``count`` distinct-on-average phantom seeds at or above :data:`TRAIN_SEED_START`."""
    rng = np.random.default_rng(seed)
    return TRAIN_SEED_START + rng.integers(0, 2**40, size=count, dtype=np.int64)


def train_batches(
    steps: int, batch_size: int = 2, patch: Sequence[int] | None = None, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``steps`` freshly generated training batches (see :func:`make_batch`)."""
    seeds = train_seeds(seed, steps * batch_size).reshape(steps, batch_size)
    for row in seeds:
        yield make_batch(row.tolist(), patch)


def compute_steps(
    image_size: Sequence[int], patch: Sequence[int], step_fraction: float
) -> list[list[int]]:
    """Window start offsets per axis, as nnU-Net's ``compute_steps_for_sliding_window``.

    Args:
        image_size: Volume size (each at least the patch size).
        patch: Window size.
        step_fraction: Step as a fraction of the patch (``1 - overlap``), in ``(0, 1]``.
    """
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step fraction must be in (0, 1], got {step_fraction}")
    steps: list[list[int]] = []
    for size, p in zip(image_size, patch, strict=True):
        if size < p:
            raise ValueError(f"image size {size} is smaller than the patch {p}")
        target = p * step_fraction
        n = math.ceil((size - p) / target) + 1
        if n == 1:
            steps.append([0])
            continue
        actual = (size - p) / (n - 1)
        steps.append([round(actual * i) for i in range(n)])
    return steps


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Gaussian importance map of ``patch`` size (max 1, strictly positive), as nnU-Net."""
    axes = []
    for p in patch:
        center = p // 2
        sigma = max(p * sigma_scale, 1e-3)
        t = np.arange(p, dtype=np.float64)
        axes.append(np.exp(-0.5 * ((t - center) / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    positive = g[g > 0]
    g[g <= 0] = positive.min()
    return np.maximum(g, np.finfo(np.float32).tiny).astype(np.float32)


def sliding_window_logits(
    volume: np.ndarray,
    patch: Sequence[int],
    predict: PredictFn,
    overlap: float = 0.5,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Gaussian-weighted average of window logits over the whole volume.

    Args:
        volume: Normalised ``[C_in, D, H, W]`` (or ``[D, H, W]``) volume.
        patch: Window ``(pd, ph, pw)``; the network's static input size.
        predict: Maps float32 ``[1, C_in, pd, ph, pw]`` to logits ``[1, C, pd, ph, pw]``
            (NumPy array or anything :func:`numpy.asarray` accepts).
        overlap: Fraction of the patch shared by neighbouring windows, in ``[0, 1)``.
        pad_value: Value used to pad axes smaller than the patch (symmetrically).

    Returns:
        Float32 logits ``[C, D, H, W]`` aligned with the input volume.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 3:
        vol = vol[None]
    if vol.ndim != 4:
        raise ValueError(f"volume must be [C, D, H, W] or [D, H, W], got shape {vol.shape}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    p = _patch(patch)
    spatial = vol.shape[1:]
    pads = []
    for size, ps in zip(spatial, p, strict=True):
        total = max(ps - size, 0)
        pads.append((total // 2, total - total // 2))
    if any(a or b for a, b in pads):
        vol = np.pad(vol, [(0, 0), *pads], mode="constant", constant_values=pad_value)
    padded = vol.shape[1:]
    steps = compute_steps(padded, p, 1.0 - overlap)
    weight_map = gaussian_importance(p)
    acc: np.ndarray | None = None
    weights = np.zeros(padded, dtype=np.float32)
    windows = 0
    for sd in steps[0]:
        for sh in steps[1]:
            for sw in steps[2]:
                sl = (slice(sd, sd + p[0]), slice(sh, sh + p[1]), slice(sw, sw + p[2]))
                tile = np.ascontiguousarray(vol[(slice(None), *sl)][None])
                out = np.asarray(predict(tile), dtype=np.float32)
                if out.ndim != 5 or out.shape[0] != 1 or out.shape[2:] != p:
                    raise ValueError(f"predict returned shape {out.shape}, expected [1, C, *{p}]")
                if acc is None:
                    acc = np.zeros((out.shape[1], *padded), dtype=np.float32)
                acc[(slice(None), *sl)] += out[0] * weight_map
                weights[sl] += weight_map
                windows += 1
    assert acc is not None
    logger.debug("sliding window: %d windows over %s", windows, padded)
    logits = acc / weights
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial, strict=True))
    return np.ascontiguousarray(logits[(slice(None), *crop)])


def sliding_window_predict(
    volume: np.ndarray,
    patch: Sequence[int],
    predict: PredictFn,
    overlap: float = 0.5,
    pad_value: float = 0.0,
) -> np.ndarray:
    """nnU-Net-style sliding-window segmentation; returns int64 labels ``[D, H, W]``.

    See :func:`sliding_window_logits` for the arguments.  The callable may wrap any
    backend (PyTorch, ONNX Runtime, OpenVINO).
    """
    logits = sliding_window_logits(volume, patch, predict, overlap, pad_value)
    return logits.argmax(axis=0).astype(np.int64)


def dice_per_class(
    pred: np.ndarray, ref: np.ndarray, num_classes: int = NUM_CLASSES
) -> dict[int, float]:
    """Dice coefficient of every class ``0 .. num_classes - 1``.

    The Dice of a class absent from both ``pred`` and ``ref`` is defined as 1.0.
    """
    a = np.asarray(pred)
    b = np.asarray(ref)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    out: dict[int, float] = {}
    for c in range(num_classes):
        pa = a == c
        rb = b == c
        denom = int(pa.sum()) + int(rb.sum())
        out[c] = 1.0 if denom == 0 else 2.0 * int((pa & rb).sum()) / denom
    return out


def mean_foreground_dice(scores: dict[int, float]) -> float:
    """Mean of the Dice scores of all classes except 0 (background)."""
    fg = [v for k, v in scores.items() if k != 0]
    if not fg:
        raise ValueError("no foreground classes")
    return float(np.mean(fg))


VOLUME_SEED: int = 2000


def volume_set(
    volumes: int = 2, shape: Sequence[int] = (48, 64, 64), seed: int = VOLUME_SEED
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Whole phantoms for pipeline validation, in Hounsfield units (not normalised).

    Returns:
        ``volumes`` float32 ``[D, H, W]`` arrays, their int64 labels and the voxel spacing
        (1 mm, the spacing the network was trained at).
    """
    seeds = _held_out(volumes, seed, "volume")
    size = _patch(shape)
    pairs = [make_volume(int(s), size) for s in seeds]
    return [hu for hu, _ in pairs], [lab for _, lab in pairs], [1.0, 1.0, 1.0]
