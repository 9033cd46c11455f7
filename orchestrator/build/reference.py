"""The reference model and its data: resolving callables named in specs, loading weights,
the explicit training step, and turning loader output into per-sample inputs.

Builds never train: :func:`load_reference` refuses a missing weights file, and
:func:`ensure_weights` (``edgeship train``, the DVC train stage, test fixtures) is the
one place a train function runs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build import usercode
from orchestrator.build.loaders import normalise
from orchestrator.core.schema import CallableRef, ModelConfig
from orchestrator.errors import BuildError
from orchestrator.passes.base import Inputs

log = logging.getLogger(__name__)


def resolve_callable(ref: str, key: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a clear error names the spec key when it fails."""
    return usercode.resolve_callable(ref, key)


def call(ref: CallableRef, key: str, **extra: Any) -> Any:
    """Call the project's function named at ``key``; its errors name the key and file:line."""
    fn = resolve_callable(ref.fn, f"{key}.fn")
    return usercode.call_user(fn, key, ref.fn, **{**ref.args, **extra})


def callable_file(ref: str) -> Path | None:
    """The source file of the module of ``package.module:function`` (without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(ref.partition(":")[0])
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin not in ("built-in", "frozen") else None


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


def load_train(model: ModelConfig) -> Dataset | None:
    """The training set the spec names (``model.data.train``), or None when it names none."""
    if model.data.train is None:
        return None
    names = [t.name for t in model.inputs]
    raw = call(model.data.train, "model.data.train")
    ranks = {t.name: len(t.shape) for t in model.inputs}
    return to_dataset(raw, names, "model.data.train", ranks=ranks)


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
    """The file (or, for a trained Hugging Face folder, the folder) the train step writes."""
    if model.source.kind == "huggingface" and model.source.train is not None and model.source.path:
        return root / model.source.path
    return (root / model.source.weights) if model.source.weights else None


def ensure_weights(model: ModelConfig, root: Path) -> Path | None:
    """The explicit training step: run ``model.source.train`` when the weights file is missing.

    Called by ``edgeship train`` (and test fixtures); never by a build.
    """
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


def training_record(weights: Path | None) -> dict[str, Any] | None:
    """What the explicit training step wrote beside the weights (``<weights>.json``), if any."""
    import json

    if weights is None:
        return None
    sidecar = weights.with_name(weights.name + ".json")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_reference(model: ModelConfig, root: Path) -> Any:
    """The reference torch.nn.Module of a factory source in eval mode, with its weights.

    A weights file the spec names must exist; it is never trained for here.
    """
    import torch

    factory = model.source.factory
    if model.source.kind != "pytorch" or factory is None:
        raise BuildError(f"error: model.source.kind: '{model.source.kind}' has no PyTorch factory")
    path = weights_path(model, root)
    if path is not None and not path.is_file():
        raise BuildError(
            f"error: model.source.weights: file {model.source.weights} does not exist ({path}); "
            "builds never train: write it with `edgeship train` or correct the path"
        )
    net = call(factory, "model.source.factory")
    if not isinstance(net, torch.nn.Module):
        raise usercode.UserCodeError(
            "model.source.factory",
            f"{factory.fn} returned {type(net).__name__}; expected a torch.nn.Module",
            usercode.function_location(usercode.resolve_callable(factory.fn, "")),
        )
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise BuildError(
                f"error: model.source.weights: {path} does not fit the model built by "
                f"{factory.fn}: {str(exc).splitlines()[0]}"
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
