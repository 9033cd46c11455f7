"""The reference model and its data: resolving callables named in specs, loading weights,
training when weights are missing, and turning loader output into per-sample inputs."""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build.loaders import normalise
from orchestrator.core.schema import CallableRef, ModelConfig
from orchestrator.errors import BuildError
from orchestrator.passes.base import Inputs

log = logging.getLogger(__name__)


def resolve_callable(ref: str, key: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a clear error names the spec key when it fails."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise BuildError(f"error: {key}: expected 'package.module:function', found '{ref}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BuildError(f"error: {key}: cannot import module '{module_name}': {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BuildError(f"error: {key}: module '{module_name}' has no callable '{attr}'")
    return fn


def call(ref: CallableRef, key: str, **extra: Any) -> Any:
    return resolve_callable(ref.fn, f"{key}.fn")(**{**ref.args, **extra})


@dataclass
class Dataset:
    """Samples with batch dimension 1 each, in the model's input names, plus optional labels."""

    samples: list[Inputs]
    labels: np.ndarray | None
    sha256: str  # hash of every array, so provenance names exactly this data

    def __len__(self) -> int:
        return len(self.samples)


def to_dataset(
    raw: Any,
    input_names: list[str],
    key: str,
    limit: int = 0,
    ranks: dict[str, int] | None = None,
) -> Dataset:
    """Normalise a loader's output (see :mod:`orchestrator.build.loaders`) into samples."""
    samples, labels = normalise(raw, input_names, key, ranks)
    count = min(len(samples), limit) if limit else len(samples)
    samples = samples[:count]
    digest = hashlib.sha256()
    for sample in samples:
        for n in input_names:
            digest.update(sample[n].tobytes())
    label_array = None if labels is None else labels[:count]
    if label_array is not None:
        digest.update(np.ascontiguousarray(label_array).tobytes())
    return Dataset(samples, label_array, digest.hexdigest())


def load_eval(model: ModelConfig) -> Dataset:
    names = [t.name for t in model.inputs]
    raw = call(model.data.eval, "model.data.eval")
    ranks = {t.name: len(t.shape) for t in model.inputs}
    return to_dataset(raw, names, "model.data.eval", model.data.eval_samples, ranks)


def load_calibration(model: ModelConfig) -> list[Inputs]:
    if model.data.calibration is None:
        raise BuildError("error: model.data.calibration: a pass needs calibration data; none set")
    names = [t.name for t in model.inputs]
    raw = call(model.data.calibration, "model.data.calibration")
    ranks = {t.name: len(t.shape) for t in model.inputs}
    return to_dataset(raw, names, "model.data.calibration", ranks=ranks).samples


def preprocessing(model: ModelConfig) -> dict[str, Any]:
    if model.preprocessing is None:
        return {}
    out = call(model.preprocessing, "model.preprocessing")
    return dict(out)


def weights_path(model: ModelConfig, root: Path) -> Path | None:
    return (root / model.source.weights) if model.source.weights else None


def ensure_weights(model: ModelConfig, root: Path) -> Path | None:
    """Train the reference when its weights file is missing and the spec says how."""
    path = weights_path(model, root)
    if path is None or path.exists():
        return path
    if model.source.train is None:
        raise BuildError(
            f"error: model.source.weights: file {path} does not exist and model.source.train "
            "is not set"
        )
    log.info("training %s -> %s", model.name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    call(model.source.train, "model.source.train", weights=path)
    if not path.exists():
        raise BuildError(f"error: model.source.train: finished without writing {path}")
    return path


def load_reference(model: ModelConfig, root: Path) -> Any:
    """The reference torch.nn.Module in eval mode, with its weights."""
    import torch

    if model.source.kind != "pytorch" or model.source.factory is None:
        raise BuildError(
            f"error: model.source.kind: '{model.source.kind}' has no PyTorch reference"
        )
    net = call(model.source.factory, "model.source.factory")
    path = ensure_weights(model, root)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise BuildError(
                f"error: model.source.weights: {path} does not fit the model built by "
                f"{model.source.factory.fn}: {str(exc).splitlines()[0]}"
            ) from exc
    net.eval()
    return net


def run_reference(
    net: Any, samples: list[Inputs], input_names: list[str]
) -> list[list[np.ndarray]]:
    """PyTorch outputs for every sample."""
    import torch

    outs: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for s in samples:
            result = net(*[torch.from_numpy(s[n]) for n in input_names])
            if isinstance(result, torch.Tensor):
                result = (result,)
            outs.append([r.detach().cpu().numpy() for r in result])
    return outs
