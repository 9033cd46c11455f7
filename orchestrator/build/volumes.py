"""Whole-volume validation of a segmentation pipeline (``model.pipeline``).

The artifact runs the spec's pipeline (its optimisations as declared) on every volume of
``model.pipeline.data``; the reference model runs the reference pipeline (the same steps,
every optimisation off). Metrics, all gateable:

- ``volume_dice_vs_reference`` (mean over foreground classes and volumes),
  ``volume_min_dice_vs_reference`` (the worst class) and ``volume_dice_vs_reference.<label>``;
- with labels: ``volume_dice_vs_labels``, ``reference_volume_dice_vs_labels`` and
  ``volume_dice_drop``;
- ``volume_s`` and ``reference_volume_s``: mean end-to-end seconds per volume (pre-processing,
  every window, post-processing), and ``volume_speedup`` (their ratio).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.build import reference as ref
from orchestrator.build.reference_model import Reference
from orchestrator.core.schema import ModelConfig, PipelineConfig
from orchestrator.core.shapes import batch_dim
from orchestrator.device.agent import pipeline as steps_lib
from orchestrator.errors import BuildError, UserCodeError

log = logging.getLogger(__name__)

KEY = "model.pipeline.data"

REFERENCE_BATCH = 64  # windows per reference model call (PyTorch eager, whole volume)
Predict = Callable[[np.ndarray], np.ndarray]  # windows [B, 1, *patch] -> logits [B, C, *patch]


@dataclass
class Volumes:
    """Whole volumes in input units ``[D, H, W]``, their labels and voxel spacing (mm)."""

    volumes: list[np.ndarray]
    labels: list[np.ndarray] | None
    spacing: list[float] | None


def pipeline_steps(pipeline: PipelineConfig) -> list[dict[str, Any]]:
    """The spec's steps as runtime.json carries them."""
    return [{"name": s.name, "options": dict(s.options)} for s in pipeline.steps]


def runtime_pipeline(model: ModelConfig) -> dict[str, Any] | None:
    """runtime.json's ``pipeline``: the steps, the model's patch and input, its classes."""
    if model.pipeline is None:
        return None
    shape = list(model.inputs[0].shape)
    static = batch_dim(model)
    return {
        "steps": pipeline_steps(model.pipeline),
        "patch": [int(d) for d in shape[2:]],
        "input": model.inputs[0].name,
        "batch": static if isinstance(static, int) else None,
        "classes": len(model.labels),
        "labels": list(model.labels),
    }


def load_volumes(model: ModelConfig) -> Volumes:
    """Call ``model.pipeline.data``: ``(volumes, labels)`` or ``(volumes, labels, spacing)``."""
    assert model.pipeline is not None
    raw = ref.call(model.pipeline.data, KEY)
    if not isinstance(raw, tuple | list) or len(raw) not in (2, 3):
        raise BuildError(
            f"error: {KEY} ({model.pipeline.data.fn}) must return (volumes, labels) or "
            f"(volumes, labels, spacing); it returned {type(raw).__name__}"
        )
    volumes = [np.asarray(v, dtype=np.float32) for v in raw[0]]
    labels = None if raw[1] is None else [np.asarray(v) for v in raw[1]]
    spacing = [float(s) for s in raw[2]] if len(raw) == 3 and raw[2] is not None else None
    if not volumes or any(v.ndim != 3 for v in volumes):
        raise BuildError(f"error: {KEY} must return at least one [D, H, W] volume")
    if labels is not None and [v.shape for v in labels] != [v.shape for v in volumes]:
        raise BuildError(f"error: {KEY}: every label map must have its volume's shape")
    return Volumes(volumes, labels, spacing)


def reference_predict(source: Reference, model: ModelConfig) -> Predict:
    """The reference model as a pipeline's ``predict``: one window per call."""
    name = model.inputs[0].name

    batched = [source.module is not None]  # PyTorch: the windows as one batch, where it can

    def predict(tiles: np.ndarray) -> np.ndarray:
        if batched[0] and len(tiles) > 1:
            try:
                return np.asarray(source.run([{name: tiles}], model)[0][0])
            except UserCodeError:  # a program exported for one window at a time
                batched[0] = False
        outs = [source.run([{name: t[None]}], model)[0][0] for t in tiles]
        return np.concatenate([np.asarray(o) for o in outs])

    return predict


def session_predict(session: Any, model: ModelConfig) -> Predict:
    """A target session as a pipeline's ``predict`` (windows grouped by the model's batch)."""
    static = batch_dim(model)
    return steps_lib.runner_predict(
        session, model.inputs[0].name, static if isinstance(static, int) else None
    )


def run_volumes(
    steps: list[dict[str, Any]], data: Volumes, predict: Predict, model: ModelConfig
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """The pipeline over every volume: label maps and per-volume timings."""
    patch = tuple(int(d) for d in model.inputs[0].shape[2:])
    outs, infos = [], []
    for vol in data.volumes:
        try:
            labels, info = steps_lib.run_pipeline(
                steps, vol, predict, patch, data.spacing, len(model.labels)
            )
        except steps_lib.PipelineError as exc:
            raise BuildError(f"error: model.pipeline: {exc}") from exc
        outs.append(labels)
        infos.append(info)
    return outs, infos


def volume_metrics(
    model: ModelConfig,
    data: Volumes,
    got: list[np.ndarray],
    want: list[np.ndarray],
    got_info: list[dict[str, Any]],
    want_info: list[dict[str, Any]],
) -> tuple[dict[str, float], dict[str, Any]]:
    """Dice of the artifact's pipeline against the reference pipeline and the labels, and
    end-to-end seconds per volume."""
    names = list(model.labels)
    k = len(names)
    vs_ref = np.array([steps_lib.dice_scores(g, w, k) for g, w in zip(got, want, strict=True)])
    per_class = vs_ref.mean(axis=0)
    metrics: dict[str, float] = {
        "volume_dice_vs_reference": float(vs_ref.mean()),
        "volume_min_dice_vs_reference": float(vs_ref.min()),
    }
    for name, d in zip(names[1:], per_class, strict=True):
        metrics[f"volume_dice_vs_reference.{name}"] = float(d)
    if data.labels is not None:
        mine = [steps_lib.dice_scores(g, y, k) for g, y in zip(got, data.labels, strict=True)]
        theirs = [steps_lib.dice_scores(w, y, k) for w, y in zip(want, data.labels, strict=True)]
        metrics["volume_dice_vs_labels"] = float(np.mean(mine))
        metrics["reference_volume_dice_vs_labels"] = float(np.mean(theirs))
        metrics["volume_dice_drop"] = (
            metrics["reference_volume_dice_vs_labels"] - metrics["volume_dice_vs_labels"]
        )
    metrics["volume_s"] = float(np.mean([i["total_s"] for i in got_info]))
    metrics["reference_volume_s"] = float(np.mean([i["total_s"] for i in want_info]))
    metrics["volume_speedup"] = metrics["reference_volume_s"] / max(metrics["volume_s"], 1e-9)
    details = {
        "volumes": len(data.volumes),
        "shapes": [list(v.shape) for v in data.volumes],
        "spacing": data.spacing,
        "pipeline": got_info,
        "reference_pipeline": want_info,
        "dice_vs_reference_per_volume": vs_ref.tolist(),
    }
    return metrics, details


@dataclass
class ReferenceVolumes:
    """The reference pipeline's label maps and timings on every volume (kept by recipe
    selection for all its candidates: the same reference, the same volumes)."""

    data: Volumes
    labels: list[np.ndarray]
    info: list[dict[str, Any]]


def reference_volumes(model: ModelConfig, source: Reference, data: Volumes) -> ReferenceVolumes:
    """The reference model through the reference pipeline (every optimisation off) on every
    volume. The reference model takes every window of a volume in one call: the same
    windows and outputs as one at a time, in a fraction of the time."""
    assert model.pipeline is not None
    reference = reference_predict(source, model)
    reference(_warm_window(model))  # the first call (kernel selection) is not timed
    steps = steps_lib.reference_steps(pipeline_steps(model.pipeline))
    for step in steps:
        if step["name"] == "sliding_window":
            step["options"]["batch"] = REFERENCE_BATCH
    labels, info = run_volumes(steps, data, reference, model)
    return ReferenceVolumes(data, labels, info)


def _warm_window(model: ModelConfig) -> np.ndarray:
    return np.zeros((1, 1, *(int(d) for d in model.inputs[0].shape[2:])), dtype=np.float32)


def validate_volumes(
    model: ModelConfig, session: Any, reference: ReferenceVolumes
) -> tuple[dict[str, float], dict[str, Any], list[np.ndarray]]:
    """Whole-volume metrics of ``session`` (the artifact) against the reference pipeline,
    and the artifact's label maps."""
    assert model.pipeline is not None
    data, want, want_info = reference.data, reference.labels, reference.info
    artifact = session_predict(session, model)
    artifact(_warm_window(model))  # the first call (kernel selection) is not timed
    got, got_info = run_volumes(pipeline_steps(model.pipeline), data, artifact, model)
    metrics, details = volume_metrics(model, data, got, want, got_info, want_info)
    log.info(
        "whole volumes: Dice vs reference %.4f (worst class %.4f), %.2fs per volume",
        metrics["volume_dice_vs_reference"],
        metrics["volume_min_dice_vs_reference"],
        metrics["volume_s"],
    )
    return metrics, details, got
