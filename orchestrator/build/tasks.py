"""What a model's outputs mean, per task, and the metrics validation derives from them.

Every task compares the artifact with the reference on every output (``max_abs_error``,
``mean_abs_error``, and per output ``max_abs_error.<output>``). On top, on the first
output:

- classification, one label per sample: ``agreement`` (top-1 vs the reference); with
  labels ``accuracy``, ``reference_accuracy``, ``accuracy_drop`` and a confusion matrix;
- classification with ``multi_label: true`` (independent classes, a class is predicted
  when its sigmoid is at least ``threshold``): ``agreement`` (the whole label set equals
  the reference's), ``label_agreement`` (per class and sample); with labels (multi-hot)
  ``accuracy`` (exact set), ``f1`` (micro), their ``reference_`` values and ``_drop``;
- segmentation (class axis 1): Dice against the reference and the labels;
- regression: with labels ``mae``, ``rmse``, ``r2``, their ``reference_`` values and
  ``mae_increase``, ``rmse_increase``, ``r2_drop``;
- custom: none; the model's own metrics (``model.metrics``) say what is good.

The names are listed by :func:`orchestrator.spec.gates.measured_metrics`, which the
spec rules check gates against before any work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.core.metrics import dice
from orchestrator.core.schema import ModelConfig


def classification_metrics(
    out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, names: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    pred, ref_pred = out.argmax(-1), ref.argmax(-1)
    metrics = {"agreement": float((pred == ref_pred).mean())}
    k = out.shape[-1]
    # the reference of live drift monitoring: what the artifact predicts on the evaluation set
    counts = np.bincount(pred.ravel().astype(int), minlength=k)
    details: dict[str, Any] = {
        "prediction_distribution": {
            "labels": names or [str(i) for i in range(k)],
            "counts": [int(c) for c in counts],
        }
    }
    if labels is not None:
        labels = labels.reshape(pred.shape)
        metrics["accuracy"] = float((pred == labels).mean())
        metrics["reference_accuracy"] = float((ref_pred == labels).mean())
        metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
        confusion = np.zeros((k, k), dtype=int)
        for t, p in zip(labels.ravel(), pred.ravel(), strict=True):
            confusion[int(t), int(p)] += 1
        details["confusion_matrix"] = {"labels": names, "rows_true_cols_pred": confusion.tolist()}
    return metrics, details


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def _micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.logical_and(pred, truth).sum())
    fp = float(np.logical_and(pred, ~truth).sum())
    fn = float(np.logical_and(~pred, truth).sum())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def multi_label_metrics(
    out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, threshold: float
) -> tuple[dict[str, float], dict[str, Any]]:
    cut = _logit(threshold)  # sigmoid(x) >= t  <=>  x >= logit(t)
    pred, ref_pred = out >= cut, ref >= cut
    flat = (len(pred), -1)
    exact = np.all(pred.reshape(flat) == ref_pred.reshape(flat), axis=1)
    metrics = {
        "agreement": float(exact.mean()),
        "label_agreement": float((pred == ref_pred).mean()),
    }
    if labels is not None:
        truth = np.asarray(labels).reshape(pred.shape).astype(bool)
        for prefix, p in (("", pred), ("reference_", ref_pred)):
            same = np.all(p.reshape(flat) == truth.reshape(flat), axis=1)
            metrics[f"{prefix}accuracy"] = float(same.mean())
            metrics[f"{prefix}f1"] = _micro_f1(p, truth)
        metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
        metrics["f1_drop"] = metrics["reference_f1"] - metrics["f1"]
    return metrics, {"threshold": threshold}


def segmentation_metrics(
    out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, names: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    pred, ref_pred = out.argmax(1), ref.argmax(1)
    metrics: dict[str, float] = {}
    vs_ref = {n: dice(pred, ref_pred, c) for c, n in enumerate(names) if c > 0}
    for n, d in vs_ref.items():
        metrics[f"dice_vs_reference.{n}"] = d
    metrics["dice_vs_reference"] = float(np.mean(list(vs_ref.values())))
    metrics["min_dice_vs_reference"] = float(min(vs_ref.values()))
    if labels is not None:
        vs_lab = {n: dice(pred, labels, c) for c, n in enumerate(names) if c > 0}
        ref_lab = {n: dice(ref_pred, labels, c) for c, n in enumerate(names) if c > 0}
        for n, d in vs_lab.items():
            metrics[f"dice_vs_labels.{n}"] = d
        metrics["dice_vs_labels"] = float(np.mean(list(vs_lab.values())))
        metrics["reference_dice_vs_labels"] = float(np.mean(list(ref_lab.values())))
        metrics["dice_drop"] = metrics["reference_dice_vs_labels"] - metrics["dice_vs_labels"]
    return metrics, {"classes": names}


def _regression(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = pred - truth
    ss_tot = float(((truth - truth.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": r2,
    }


def regression_metrics(
    out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None
) -> tuple[dict[str, float], dict[str, Any]]:
    if labels is None:
        return {}, {}
    truth = np.asarray(labels, dtype=np.float64).reshape(out.shape)
    mine = _regression(out.astype(np.float64), truth)
    theirs = _regression(ref.astype(np.float64), truth)
    metrics = {**mine, **{f"reference_{k}": v for k, v in theirs.items()}}
    metrics["mae_increase"] = mine["mae"] - theirs["mae"]
    metrics["rmse_increase"] = mine["rmse"] - theirs["rmse"]
    metrics["r2_drop"] = theirs["r2"] - mine["r2"]
    return metrics, {}


def task_metrics(
    model: ModelConfig, out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """The task's metrics of the first output (artifact ``out`` against reference ``ref``)."""
    names = list(model.labels)
    if model.task == "classification" and model.multi_label:
        return multi_label_metrics(out, ref, labels, model.threshold)
    if model.task == "classification":
        return classification_metrics(out, ref, labels, names)
    if model.task == "segmentation":
        return segmentation_metrics(out, ref, labels, names)
    if model.task == "regression":
        return regression_metrics(out, ref, labels)
    return {}, {}
