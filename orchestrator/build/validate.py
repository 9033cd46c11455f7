"""Validate an artifact against its reference: parity on real data, latency, size, memory."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.build.reference import Dataset
from orchestrator.core.metrics import dice
from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import EdgeshipConfig
from orchestrator.core.shapes import declared_batches
from orchestrator.errors import BuildError
from orchestrator.spec.gates import GateResult, evaluate_gates, parse_gate
from targets.base import Target


@dataclass
class Validation:
    """What validation measured, and the verdict of the deployment's gates."""

    metrics: dict[str, float]
    gates: list[GateResult]
    details: dict[str, Any] = field(default_factory=dict)  # confusion matrix, per-class, latencies
    outputs: list[list[np.ndarray]] = field(default_factory=list)  # artifact outputs per sample

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[str]:
        return [g.describe() for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metrics": self.metrics,
            "gates": [
                {"gate": str(g.gate), "value": g.value, "passed": g.passed} for g in self.gates
            ],
            "details": self.details,
        }


def classification_metrics(
    out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None, names: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    pred, ref_pred = out.argmax(-1), ref.argmax(-1)
    metrics = {"agreement": float((pred == ref_pred).mean())}
    details: dict[str, Any] = {}
    if labels is not None:
        metrics["accuracy"] = float((pred == labels).mean())
        metrics["reference_accuracy"] = float((ref_pred == labels).mean())
        metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
        k = out.shape[-1]
        confusion = np.zeros((k, k), dtype=int)
        for t, p in zip(labels, pred, strict=True):
            confusion[int(t), int(p)] += 1
        details["confusion_matrix"] = {"labels": names, "rows_true_cols_pred": confusion.tolist()}
    return metrics, details


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


def run_artifact(target: Target, model: ModelFile, data: Dataset) -> list[list[np.ndarray]]:
    session = target.load(model)
    return [session.run(sample) for sample in data.samples]


def measure_in_subprocess(
    spec: EdgeshipConfig, target: Target, model: ModelFile, timeout: float = 1800
) -> dict[str, Any]:
    """Latency percentiles and peak memory from a fresh interpreter."""
    v = spec.deployment.validation
    request = {
        "target": dataclasses.asdict(target.config),
        "model": {"path": str(model.path), "format": model.format, "precision": model.precision},
        "inputs": [dataclasses.asdict(t) for t in spec.model.inputs],
        "warmup": v.latency_warmup,
        "runs": v.latency_runs,
        "batch": declared_batches(spec.model, v.latency_batches)[0],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.build.measure"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BuildError(f"error: latency measurement failed for {model.path.name}:\n{tail}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def validate(
    spec: EdgeshipConfig,
    target: Target,
    model: ModelFile,
    data: Dataset,
    reference: list[list[np.ndarray]],
) -> Validation:
    """Measure the artifact and check the deployment's gates."""
    outputs = run_artifact(target, model, data)
    out = np.concatenate([o[0] for o in outputs])
    ref = np.concatenate([r[0] for r in reference])
    if out.shape != ref.shape:
        raise BuildError(
            f"error: artifact output shape {out.shape} differs from the reference's {ref.shape}"
        )
    names = list(spec.model.labels)
    if spec.model.task == "classification":
        metrics, details = classification_metrics(out, ref, data.labels, names)
    else:
        metrics, details = segmentation_metrics(out, ref, data.labels, names)
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    metrics["max_abs_error"] = float(err.max())
    metrics["mean_abs_error"] = float(err.mean())
    metrics["size_mb"] = model.size_bytes() / 1e6
    timing = measure_in_subprocess(spec, target, model)
    details["latency_samples_ms"] = timing.pop("latency_samples_ms")
    details["load_ms"] = timing.pop("load_ms")
    metrics.update(timing)
    details["eval_samples"] = len(data)
    details["eval_data_sha256"] = data.sha256
    gates = evaluate_gates([parse_gate(g) for g in spec.deployment.gates], metrics)
    return Validation(metrics, gates, details, outputs)
