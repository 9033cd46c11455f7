"""Validate an artifact against its reference: parity on real data, latency, size, memory."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.build.batching import padding, run_batched
from orchestrator.build.metrics_user import user_metrics
from orchestrator.build.reference import Dataset
from orchestrator.build.tasks import task_metrics
from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import EdgeshipConfig, ModelConfig
from orchestrator.core.shapes import batch_dim, declared_batches, eval_batch, input_shapes
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
    # where the gated figures were measured: None for the build machine, else the lab device
    # (device, fleet, runtime, runtime_version, python); see orchestrator/build/lab.py
    validated_on: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[str]:
        return [g.describe() for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "device_validated": self.validated_on is not None,
            "validated_on": self.validated_on,
            "metrics": self.metrics,
            "gates": [
                {"gate": str(g.gate), "value": g.value, "passed": g.passed} for g in self.gates
            ],
            "details": self.details,
        }


def eval_chunking(model: ModelConfig) -> tuple[int, bool]:
    """How validation batches samples: (size, pad). A static batch is filled up to its size."""
    return eval_batch(model), isinstance(batch_dim(model), int)


def run_artifact(
    target: Target, model: ModelFile, data: Dataset, spec_model: ModelConfig | None = None
) -> tuple[list[list[np.ndarray]], str | None]:
    """The artifact's outputs per sample, and the precision its runtime reports it ran at
    (None where the runtime does not say)."""
    session = target.load(model)
    size, pad = eval_chunking(spec_model) if spec_model is not None else (1, False)
    precision = getattr(session, "execution_precision", None)
    return run_batched(session.run, data.samples, size, pad), precision


def latency_batches(spec: EdgeshipConfig) -> list[dict[str, Any]]:
    """The batch sizes latency is measured at, each with its inputs' names, shapes and dtypes."""
    v = spec.deployment.validation
    batches = declared_batches(spec.model, v.latency_batches)
    return [
        {
            "batch": b,
            "inputs": [
                {"name": t.name, "shape": shape, "dtype": t.dtype}
                for t, shape in zip(
                    spec.model.inputs,
                    input_shapes(spec.model, "opt", b).values(),
                    strict=True,
                )
            ],
        }
        for b in batches
    ]


def measure_in_subprocess(
    spec: EdgeshipConfig, target: Target, model: ModelFile, timeout: float = 1800
) -> dict[str, Any]:
    """Latency percentiles (per declared batch size) and peak memory from a fresh interpreter."""
    v = spec.deployment.validation
    request = {
        "target": dataclasses.asdict(target.config),
        "model": {"path": str(model.path), "format": model.format, "precision": model.precision},
        "batches": latency_batches(spec),
        "warmup": v.latency_warmup,
        "runs": v.latency_runs,
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


def output_parity(
    names: list[str], outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[dict[str, Any]]]:
    """Every output over every sample, the artifact's and the reference's, and per output
    its shape and |artifact - reference| (max, mean). A differing shape is a BuildError."""
    out_all: dict[str, np.ndarray] = {}
    ref_all: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    if outputs and len(outputs[0]) != len(names):
        raise BuildError(
            f"error: the artifact returns {len(outputs[0])} outputs; model.outputs declares "
            f"{len(names)} ({', '.join(names)})"
        )
    if reference and len(reference[0]) != len(names):
        raise BuildError(
            f"error: the reference model returns {len(reference[0])} outputs; model.outputs "
            f"declares {len(names)} ({', '.join(names)})"
        )
    for k, name in enumerate(names):
        out = np.concatenate([o[k] for o in outputs])
        ref = np.concatenate([r[k] for r in reference])
        if out.shape != ref.shape:
            raise BuildError(
                f"error: model.outputs[{k}] ({name}): artifact output shape {list(out.shape)} "
                f"differs from the reference's {list(ref.shape)}"
            )
        err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        rows.append(
            {
                "output": name,
                "shape": list(out.shape[1:]),
                "max_abs_error": float(err.max()) if err.size else 0.0,
                "mean_abs_error": float(err.mean()) if err.size else 0.0,
            }
        )
        out_all[name], ref_all[name] = out, ref
    return out_all, ref_all, rows


def validate(
    spec: EdgeshipConfig,
    target: Target,
    model: ModelFile,
    data: Dataset,
    reference: list[list[np.ndarray]],
) -> Validation:
    """Measure the artifact and check the deployment's gates."""
    outputs, precision = run_artifact(target, model, data, spec.model)
    timing = measure_in_subprocess(spec, target, model)
    result = judge(spec, model, data, reference, outputs, timing)
    if precision:  # what the runtime ran, which may differ from what was asked
        result.details["execution_precision"] = precision
    return result


def judge(
    spec: EdgeshipConfig,
    model: ModelFile,
    data: Dataset,
    reference: list[list[np.ndarray]],
    outputs: list[list[np.ndarray]],
    timing: dict[str, Any],
) -> Validation:
    """Parity of ``outputs`` (per sample) against the reference, the latency figures of
    ``timing`` (as :mod:`orchestrator.build.measure` reports them), and the gates' verdict.
    The same code judges the build machine's figures and a lab device's."""
    timing = dict(timing)
    names = [t.name for t in spec.model.outputs]
    out_all, ref_all, parity = output_parity(names, outputs, reference)
    metrics, details = task_metrics(spec.model, out_all[names[0]], ref_all[names[0]], data.labels)
    metrics.update(user_metrics(list(spec.model.metrics), out_all, ref_all, data.labels))
    for row in parity:
        metrics[f"max_abs_error.{row['output']}"] = row["max_abs_error"]
        metrics[f"mean_abs_error.{row['output']}"] = row["mean_abs_error"]
    metrics["max_abs_error"] = max(r["max_abs_error"] for r in parity)
    metrics["mean_abs_error"] = float(np.mean([r["mean_abs_error"] for r in parity]))
    details["outputs"] = parity
    metrics["size_mb"] = model.size_bytes() / 1e6
    details["latency_samples_ms"] = timing.pop("latency_samples_ms")
    details["load_ms"] = timing.pop("load_ms")
    details["latency_by_batch"] = timing.pop("by_batch")
    metrics.update(timing)
    details["eval_samples"] = len(data)
    size, pad = eval_chunking(spec.model)
    details["eval_batch"] = size
    # a static batch's last chunk is filled with copies of its last sample; the copies'
    # outputs are dropped before any metric, so metrics count eval_samples rows only
    details["eval_padding"] = padding(data.samples, size, pad)
    details["eval_data_sha256"] = data.sha256
    gates = evaluate_gates([parse_gate(g) for g in spec.deployment.gates], metrics)
    return Validation(metrics, gates, details, outputs)
