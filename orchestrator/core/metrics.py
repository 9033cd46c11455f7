"""Agreement measures used by validation and by accuracy-aware passes (one Dice)."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray, cls: int) -> float:
    """Dice of class ``cls`` between two label maps; 1.0 when neither has the class."""
    a, b = pred == cls, ref == cls
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom


def mean_foreground_dice(pred: np.ndarray, ref: np.ndarray, classes: int) -> float:
    """Mean Dice over classes 1..classes-1 (class 0 is background); 1.0 with no foreground."""
    scores = [dice(pred, ref, c) for c in range(1, classes)]
    return float(np.mean(scores)) if scores else 1.0
