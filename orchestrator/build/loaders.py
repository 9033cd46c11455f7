"""What a data loader (``model.data.eval`` / ``calibration``) may return, normalised in one place.

A loader returns ``inputs`` or ``(inputs, labels)``, where ``inputs`` is any of:

- one array (numpy or a torch tensor), batch axis first, for a model with one input;
- a mapping input name -> array (numpy or torch), batch axis first;
- a list of samples, each a mapping input name -> array, with or without the batch
  axis of 1 (samples may differ in a dynamic dimension);
- an iterable of batches such as a ``torch.utils.data.DataLoader``, each batch an
  array, a mapping, or an ``(inputs, labels)`` pair of those; then ``labels`` come from
  the batches and the loader returns the iterable alone.

``labels`` is an array, a torch tensor or a list (one entry per sample), or None.
The result is one mapping per sample, each array with a batch axis of 1, and the
labels as one numpy array.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from orchestrator.errors import BuildError


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from numpy, a torch tensor (detached, on the CPU) or a nested list."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def _as_mapping(inputs: Any, names: list[str], key: str) -> dict[str, np.ndarray]:
    if _is_array(inputs):
        if len(names) != 1:
            raise BuildError(
                f"error: {key}: returned one array but the model has inputs {names}; "
                "return a mapping of input name -> array"
            )
        return {names[0]: to_numpy(inputs)}
    if isinstance(inputs, Mapping):
        if set(inputs) != set(names):
            raise BuildError(
                f"error: {key}: expected arrays for inputs {names}, found keys "
                f"{sorted(map(str, inputs))}"
            )
        return {n: to_numpy(inputs[n]) for n in names}
    raise BuildError(
        f"error: {key}: expected an array, a mapping of input name -> array, a list of such "
        f"mappings or a DataLoader, found {type(inputs).__name__}"
    )


def _split(
    arrays: dict[str, np.ndarray], names: list[str], key: str
) -> list[dict[str, np.ndarray]]:
    counts = {n: len(arrays[n]) for n in names}
    if len(set(counts.values())) > 1:
        raise BuildError(f"error: {key}: inputs hold different numbers of samples: {counts}")
    count = next(iter(counts.values()))
    return [{n: np.ascontiguousarray(arrays[n][i : i + 1]) for n in names} for i in range(count)]


def _sample(item: Any, names: list[str], ranks: Mapping[str, int], key: str) -> dict[str, Any]:
    arrays = _as_mapping(item, names, key)
    out = {}
    for n, a in arrays.items():
        rank = ranks.get(n)
        if rank is not None and a.ndim == rank - 1:
            a = a[None]
        elif rank is not None and (a.ndim != rank or a.shape[0] != 1):
            raise BuildError(
                f"error: {key}: input '{n}' of a sample has shape {list(a.shape)}; expected "
                f"{rank - 1} dims (one sample) or {rank} with a batch axis of 1"
            )
        out[n] = np.ascontiguousarray(a)
    return out


def normalise(
    raw: Any, names: list[str], key: str, ranks: Mapping[str, int] | None = None
) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Samples (batch axis 1 each) and labels from whatever a loader returned."""
    ranks = ranks or {}
    if isinstance(raw, tuple) and len(raw) == 2:
        inputs, labels = raw
    else:
        inputs, labels = raw, None
    if _is_array(inputs) or isinstance(inputs, Mapping):
        samples = _split(_as_mapping(inputs, names, key), names, key)
    elif isinstance(inputs, list) and inputs and all(isinstance(s, Mapping) for s in inputs):
        samples = [_sample(s, names, ranks, f"{key}[{i}]") for i, s in enumerate(inputs)]
    elif isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes | list):
        samples, batch_labels = [], []
        for batch in inputs:
            x, y = batch if isinstance(batch, tuple | list) and len(batch) == 2 else (batch, None)
            samples += _split(_as_mapping(x, names, key), names, key)
            if y is not None:
                batch_labels.append(to_numpy(y))
        if batch_labels and labels is None:
            labels = np.concatenate(batch_labels)
    else:
        _as_mapping(inputs, names, key)  # raises with what was found
        samples = []
    label_array = None if labels is None else to_numpy(labels)
    if label_array is not None and len(label_array) != len(samples):
        raise BuildError(f"error: {key}: {len(samples)} samples but {len(label_array)} labels")
    return samples, label_array
