"""Validation on a lab device (``deployment.validate_on.where: lab``): the device's figures gate.

After an artifact is validated on the build machine, :func:`validate_on_device` writes a
candidate folder: runtime.json, the model files and ``measure/`` (``eval.npz``: the
evaluation chunks exactly as the build machine ran them; ``measure.json``: the latency
plan of ``deployment.validation``). A :class:`DeviceMeasurer` (the ship half's
``orchestrator.ship.lab.LabMeasurer``, handed in by the CLI: the build never talks SSH)
signs it, runs it on the lab device and returns the device's answer and outputs.

The device's outputs are judged against the reference by the same code as the build
machine's (:func:`orchestrator.build.validate.judge`), with its latency figures; those
metrics are the gated ones. The build machine's metrics stay beside them, each named
``build_machine.<metric>``, and its gate verdicts in ``details.build_machine``. The
validation says where its figures come from (``validated_on``: device, fleet, runtime,
runtime version, Python).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from orchestrator.build.batching import chunks
from orchestrator.build.reference import Dataset
from orchestrator.build.validate import Validation, eval_chunking, judge, latency_batches
from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import EdgeshipConfig
from orchestrator.errors import LabMeasurementError

BUILD_MACHINE = "build_machine"  # prefix of the build machine's metrics beside a device's


class DeviceMeasurer(Protocol):
    """Measures a candidate folder on a lab device (see orchestrator/ship/lab.py)."""

    @property
    def where(self) -> dict[str, str]:
        """``device`` and ``fleet`` names."""
        ...

    def __call__(self, candidate: Path, workdir: Path) -> dict[str, Any]:
        """The agent's answer (``metrics``, ``by_batch``, ``latency_samples_ms``,
        ``runtime``, ``python``, ``device``) plus ``outputs_npz``: a local file."""
        ...


def write_candidate(
    folder: Path,
    spec: EdgeshipConfig,
    staging: Path,
    model: ModelFile,
    runtime: dict[str, Any],
    data: Dataset,
) -> int:
    """The candidate folder a lab device measures; returns the number of evaluation chunks."""
    folder.mkdir(parents=True)
    (folder / "runtime.json").write_text(json.dumps(runtime, indent=2, sort_keys=True))
    for path in model.files():
        dest = folder / path.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    size, pad = eval_chunking(spec.model)
    names = [t.name for t in spec.model.inputs]
    arrays: dict[str, np.ndarray] = {}
    parts = chunks(data.samples, max(size, 1), pad)
    for i, (inputs, _) in enumerate(parts):
        for j, name in enumerate(names):
            arrays[f"c{i}_{j}"] = np.asarray(inputs[name])
    (folder / "measure").mkdir()
    np.savez(folder / "measure" / "eval.npz", **arrays)  # type: ignore[arg-type]
    v = spec.deployment.validation
    plan = {
        "schema": 1,
        "eval": "eval.npz",
        "chunks": len(parts),
        "warmup": v.latency_warmup,
        "runs": v.latency_runs,
        "seed": 0,
        "batches": latency_batches(spec),
    }
    (folder / "measure" / "measure.json").write_text(json.dumps(plan, indent=2))
    return len(parts)


def device_outputs(
    path: Path, spec: EdgeshipConfig, data: Dataset, count: int
) -> list[list[np.ndarray]]:
    """The device's outputs per sample (batch axis 1 each), split as the build machine's are."""
    size, pad = eval_chunking(spec.model)
    parts = chunks(data.samples, max(size, 1), pad)
    n_out = len(spec.model.outputs)
    per_sample: list[list[np.ndarray]] = []
    with np.load(path, allow_pickle=False) as npz:
        if len(parts) != count:
            raise LabMeasurementError(
                f"error: the device ran {count} evaluation chunks; expected {len(parts)}"
            )
        for i, (_, real) in enumerate(parts):
            keys = [f"c{i}_{k}" for k in range(n_out)]
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise LabMeasurementError(
                    f"error: the device's outputs lack {', '.join(missing)} (expected "
                    f"{n_out} output(s) per chunk, as model.outputs declares)"
                )
            outs = [np.asarray(npz[k]) for k in keys]
            for r in range(real):
                per_sample.append([o[r : r + 1] for o in outs])
    return per_sample


def validate_on_device(
    spec: EdgeshipConfig,
    staging: Path,
    model: ModelFile,
    runtime: dict[str, Any],
    data: Dataset,
    reference: list[list[np.ndarray]],
    local: Validation,
    measurer: DeviceMeasurer,
) -> Validation:
    """Measure the artifact on the lab device; its figures gate, the build machine's stay beside."""
    work = staging / ".work-lab"
    try:
        count = write_candidate(work / "candidate", spec, staging, model, runtime, data)
        answer = measurer(work / "candidate", work)
        outputs = device_outputs(Path(answer["outputs_npz"]), spec, data, count)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = dict(answer.get("metrics") or {})
    timing = {
        **figures,
        "latency_samples_ms": answer.get("latency_samples_ms") or {},
        "by_batch": answer.get("by_batch") or [],
        "load_ms": figures.get("load_ms"),
    }
    result = judge(spec, model, data, reference, outputs, timing)
    runtime_info = answer.get("runtime") or {}
    where = measurer.where
    result.validated_on = {
        "device": where.get("device") or (answer.get("device") or {}).get("name"),
        "fleet": where.get("fleet"),
        "family": (answer.get("device") or {}).get("family"),
        "runtime": runtime_info.get("name"),
        "runtime_version": runtime_info.get("version"),
        "runtime_details": {k: v for k, v in runtime_info.items() if k not in ("name", "version")},
        "python": answer.get("python"),
        "uid": answer.get("uid"),
        "manifest_sha256": answer.get("manifest_sha256"),
    }
    for key, value in local.metrics.items():
        result.metrics[f"{BUILD_MACHINE}.{key}"] = value
    result.metrics["device_validated"] = 1.0
    result.details[BUILD_MACHINE] = {
        "passed": local.passed,
        "gates": [{"gate": str(g.gate), "value": g.value, "passed": g.passed} for g in local.gates],
        "latency_by_batch": local.details.get("latency_by_batch"),
        "load_ms": local.details.get("load_ms"),
    }
    if "runtime_validation" in local.details:
        result.details["runtime_validation"] = local.details["runtime_validation"]
    return result
