"""Loader for the BasicMotions wearable-sensor data set (UEA ``.ts`` format).

Each series holds six channels (3-D accelerometer then 3-D gyroscope) of 100
samples.  The TRAIN split provides the normalisation statistics and the
calibration samples; the TEST split is held out for evaluation only.
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DATA_DIR: Path = Path(__file__).resolve().parent / "basicmotions"
CHANNELS: list[str] = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
SERIES_LENGTH: int = 100
_FILES: dict[str, str] = {
    "train": "BasicMotions_TRAIN.ts",
    "test": "BasicMotions_TEST.ts",
}


class TsFormatError(ValueError):
    """Raised when a ``.ts`` file does not follow the expected layout."""


def _split_path(split: str) -> Path:
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_FILES)}")
    return DATA_DIR / _FILES[split]


def parse_ts(
    path: Path, n_channels: int = len(CHANNELS), length: int = SERIES_LENGTH
) -> tuple[list[str], np.ndarray, list[str]]:
    """Parse an equal-length multivariate ``.ts`` file.

    Args:
        path: File to read.
        n_channels: Number of ``:``-separated channels expected per series.
        length: Number of values expected per channel.

    Returns:
        The class labels declared by ``@classLabel`` (in header order), the data as
        float32 ``[N, n_channels, length]`` and the label string of each series.

    Raises:
        TsFormatError: If the header or any data line is malformed; the message
            names the file and the 1-based line number.
    """
    class_labels: list[str] | None = None
    in_data = False
    rows: list[np.ndarray] = []
    labels: list[str] = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            if not in_data:
                if line.startswith("#"):
                    continue
                if not line.startswith("@"):
                    raise TsFormatError(f"{where}: expected a header line before @data")
                key, _, rest = line.partition(" ")
                key = key.lower()
                if key == "@classlabel":
                    tokens = rest.split()
                    if not tokens or tokens[0].lower() != "true" or len(tokens) < 2:
                        raise TsFormatError(f"{where}: @classLabel must be 'true' plus labels")
                    class_labels = tokens[1:]
                elif key == "@data":
                    if class_labels is None:
                        raise TsFormatError(f"{where}: @data before any @classLabel header")
                    in_data = True
                continue
            parts = line.split(":")
            if len(parts) != n_channels + 1:
                raise TsFormatError(
                    f"{where}: expected {n_channels} channels and a label, "
                    f"found {len(parts)} ':'-separated fields"
                )
            label = parts[-1].strip()
            assert class_labels is not None
            if label not in class_labels:
                raise TsFormatError(f"{where}: unknown class label {label!r}")
            series = np.empty((n_channels, length), dtype=np.float32)
            for channel, text in enumerate(parts[:-1]):
                values = text.split(",")
                if len(values) != length:
                    raise TsFormatError(
                        f"{where}: channel {channel} has {len(values)} values, expected {length}"
                    )
                try:
                    series[channel] = np.asarray([float(v) for v in values], dtype=np.float32)
                except ValueError as exc:
                    raise TsFormatError(f"{where}: channel {channel}: {exc}") from exc
            if not np.all(np.isfinite(series)):
                raise TsFormatError(f"{where}: non-finite value")
            rows.append(series)
            labels.append(label)
    if class_labels is None or not in_data:
        raise TsFormatError(f"{path}: missing @classLabel or @data header")
    if not rows:
        raise TsFormatError(f"{path}: no data lines after @data")
    return class_labels, np.stack(rows), labels


@cache
def _load_cached(split: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    path = _split_path(split)
    class_labels, x, names = parse_ts(path)
    index = {name: i for i, name in enumerate(class_labels)}
    y = np.asarray([index[n] for n in names], dtype=np.int64)
    logger.debug("loaded %s: %d series from %s", split, len(y), path)
    x.setflags(write=False)
    y.setflags(write=False)
    return tuple(class_labels), x, y


def read_class_labels(path: Path) -> list[str]:
    """Class labels declared by the ``@classLabel`` header of a ``.ts`` file, in order."""
    with path.open("r", encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line.lower().startswith("@classlabel"):
                tokens = line.split()[1:]
                if len(tokens) < 2 or tokens[0].lower() != "true":
                    raise TsFormatError(f"{path}:{lineno}: @classLabel must be 'true' plus labels")
                return tokens[1:]
            if line.lower().startswith("@data"):
                break
    raise TsFormatError(f"{path}: no @classLabel header before @data")


CLASSES: list[str] = read_class_labels(DATA_DIR / _FILES["train"])


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split un-normalised.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        Raw float32 series ``[N, 6, 100]`` and int64 class indices ``[N]`` (indices into
        :data:`CLASSES`).

    Raises:
        ValueError: For an unknown split name.
        TsFormatError: For a malformed file (the message names file and line).
    """
    labels, x, y = _load_cached(split)
    if list(labels) != CLASSES:
        raise TsFormatError(f"{_split_path(split)}: class labels {labels} differ from {CLASSES}")
    return x.copy(), y.copy()


@lru_cache(maxsize=1)
def _stats_cached() -> tuple[np.ndarray, np.ndarray]:
    x, _ = _load_cached("train")[1:]
    mean = x.mean(axis=(0, 2), dtype=np.float64).astype(np.float32)
    std = x.std(axis=(0, 2), dtype=np.float64).astype(np.float32)
    std = np.maximum(std, np.float32(1e-6))
    mean.setflags(write=False)
    std.setflags(write=False)
    return mean, std


def channel_stats() -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the TRAIN split (float32 ``[6]`` each)."""
    mean, std = _stats_cached()
    return mean.copy(), std.copy()


def normalize(x: np.ndarray) -> np.ndarray:
    """Standardise ``[..., 6, T]`` series per channel with the TRAIN statistics (float32)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim < 2 or arr.shape[-2] != len(CHANNELS):
        raise ValueError(f"expected [..., {len(CHANNELS)}, T] input, got shape {arr.shape}")
    mean, std = _stats_cached()
    return ((arr - mean[:, None]) / std[:, None]).astype(np.float32)


def train_set(**kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The TRAIN split the reference model is trained on, normalised (``[40, 6, 100]``).

    Named in the model spec as ``data.train`` so builds record its hash.
    """
    if kwargs:
        logger.debug("train_set ignores arguments %s", sorted(kwargs))
    x, y = load_split("train")
    return normalize(x), y


def eval_set(**kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Held-out TEST split, normalised: float32 ``[40, 6, 100]`` and int64 labels ``[40]``.

    Keyword arguments are accepted for interface compatibility with other example
    data modules and ignored.
    """
    if kwargs:
        logger.debug("eval_set ignores arguments %s", sorted(kwargs))
    x, y = load_split("test")
    return normalize(x), y


def calibration_indices(samples: int = 32, seed: int = 0) -> np.ndarray:
    """Indices into the TRAIN split that :func:`calibration_set` draws.

    Draws without replacement while ``samples`` does not exceed the split size, and
    with replacement beyond it.
    """
    if samples <= 0:
        raise ValueError(f"samples must be positive, got {samples}")
    n = len(_load_cached("train")[2])
    rng = np.random.default_rng(seed)
    return rng.choice(n, size=samples, replace=samples > n).astype(np.int64)


def calibration_set(samples: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised samples drawn from the TRAIN split only (for quantisation calibration).

    Returns:
        float32 ``[samples, 6, 100]`` and int64 labels ``[samples]``.
    """
    x, y = load_split("train")
    idx = calibration_indices(samples, seed)
    return normalize(x[idx]), y[idx]


def preprocessing() -> dict[str, Any]:
    """Preprocessing constants an application must apply before inference."""
    mean, std = _stats_cached()
    return {
        "type": "per_channel_standardize",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "channels": list(CHANNELS),
    }
