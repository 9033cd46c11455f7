"""``edgeship build``: export -> recipe passes -> validate -> record, atomically.

The artifact is assembled in ``artifacts/.staging/``; only a build that passes
its gates replaces ``artifacts/<deployment>/`` (in one atomic swap). A build that
fails its gates lands in ``artifacts/.failed/<deployment>/`` and is recorded in
MLflow as failed, never registered as a candidate. An error or Ctrl-C removes the
staging directory and leaves the last good artifact untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build import generative, sources
from orchestrator.build import reference as ref
from orchestrator.build import speech as asr
from orchestrator.build.batching import calibration_batches, first_chunk, run_batched
from orchestrator.build.evidence import render_model_card, write_plots
from orchestrator.build.export import copy_model
from orchestrator.build.lab import DeviceMeasurer, validate_on_device
from orchestrator.build.provenance import code_provenance, environment, git_info
from orchestrator.build.report import render_report
from orchestrator.build.validate import Validation, eval_chunking, validate
from orchestrator.build.volumes import (
    ReferenceVolumes,
    load_volumes,
    reference_volumes,
    runtime_pipeline,
    validate_volumes,
)
from orchestrator.core import toolenv
from orchestrator.core.fsutil import copy_tree_atomic, install_dir, recover, write_json
from orchestrator.core.model_file import ModelFile, sha256_file
from orchestrator.core.runtime_imports import require
from orchestrator.core.schema import ModelConfig
from orchestrator.core.shapes import input_bounds, tensor_json
from orchestrator.errors import BuildError, EdgeshipError, GateFailure, MissingDependencyError
from orchestrator.passes.base import (
    HF_FOLDER,
    TORCH_PROGRAM,
    PassContext,
    export_format,
    make_options,
    registered_passes,
)
from orchestrator.passes.common.evaluation import make_evaluation
from orchestrator.project import artifacts_root, os_user
from orchestrator.spec.compose import ComposedSpec
from orchestrator.spec.gates import evaluate_gates, parse_gate
from targets.base import Target, get_target

log = logging.getLogger(__name__)

PIPELINE_PREFIXES = ("volume_", "reference_volume_")  # whole-volume metrics (model.pipeline)

Step = Callable[[str], None]


@dataclass
class BuildResult:
    deployment: str
    artifact_dir: Path
    validation: Validation
    run_id: str | None
    model_version: str | None
    seconds: float
    steps: list[tuple[str, float]] = field(default_factory=list)
    version_reused: bool = False  # the artifact equals a registered version: none was added

    @property
    def passed(self) -> bool:
        return self.validation.passed


@dataclass
class ExportCache:
    """The exports of a model (ONNX, a torch program), kept in ``folder`` for the next build
    of the same model spec: recipe selection exports once per format for all its candidates."""

    folder: Path
    models: dict[str, ModelFile] = field(default_factory=dict)  # format -> its export
    volumes: ReferenceVolumes | None = None  # the reference pipeline on whole volumes


def _check_available(target: Target, spec: ComposedSpec) -> None:
    reason = target.unavailable_reason()
    if reason:
        raise MissingDependencyError(
            f"{target.runtime} ({target.family})", target.install_hint, reason
        )
    passes = registered_passes()
    for p in spec.config.recipe.passes:
        require(passes[p.name].backend)
        if passes[p.name].tool_environment:  # missing: the error names the install command
            toolenv.toolenv(passes[p.name].tool_environment)


class _Steps:
    def __init__(self, on_step: Step | None) -> None:
        self.on_step = on_step
        self.done: list[tuple[str, float]] = []
        self._start = time.perf_counter()
        self._name: str | None = None

    def __call__(self, name: str) -> None:
        self.finish()
        self._name, self._start = name, time.perf_counter()
        if self.on_step:
            self.on_step(name)
        log.info("%s", name)

    def finish(self) -> None:
        if self._name is not None:
            self.done.append((self._name, time.perf_counter() - self._start))
            self._name = None


def run_build(
    spec: ComposedSpec,
    on_step: Step | None = None,
    record: bool = True,
    report_dir: Path | None = None,
    *,
    artifacts_dir: Path | None = None,
    parent_run: str | None = None,
    register: bool = True,
    measurer: DeviceMeasurer | None = None,
    export_cache: ExportCache | None = None,
) -> BuildResult:
    """Build, validate and record one deployment. Raises GateFailure when a gate fails.

    ``report_dir`` receives copies of metrics.json, validation.json and the plot data,
    whether the gates passed or not (DVC tracks them as metrics and plots).
    ``artifacts_dir`` replaces the artifacts root, ``parent_run`` nests the MLflow run
    under another, and ``register=False`` records a passing build without registering
    it (recipe selection builds its candidates this way; see orchestrator/auto.py).
    ``measurer`` (``deployment.validate_on.where: lab``) measures the artifact on a lab
    device after the build machine did; the device's figures gate (orchestrator/build/lab.py).
    ``export_cache`` holds the exports (and the reference pipeline's results on whole
    volumes) for the next build of the same model spec.
    """
    t0 = time.perf_counter()
    cfg = spec.config
    sources.check_source_files(cfg.model, spec.root, spec.files, spec.overrides)
    target = get_target(cfg.target, cfg.model)
    _check_available(target, spec)
    steps = _Steps(on_step)
    recording = None
    if record:  # MLflow opens in a recorder process while the build works (registry/recorder)
        from registry.recorder import begin

        recording = begin(spec.root)
    # the reference, its data and the project's code run before anything is written: an
    # error in any of them leaves no artifact folder behind
    steps("load reference and evaluation data")
    generative_task = cfg.model.task in ("speech-recognition", "text-generation")
    # a generative model's weights load only when its kept reference outputs do not match
    source = sources.open_source(cfg.model, spec.root, load=not generative_task)
    try:
        if cfg.model.task == "speech-recognition":
            return _build_speech(
                spec,
                target,
                source,
                steps,
                t0,
                report_dir,
                artifacts_dir,
                parent_run,
                register,
                recording,
            )
        if cfg.model.task == "text-generation":
            return _build_generation(
                spec,
                target,
                source,
                steps,
                t0,
                report_dir,
                artifacts_dir,
                parent_run,
                register,
                recording,
            )
        return _build(
            spec,
            target,
            source,
            steps,
            t0,
            report_dir,
            artifacts_dir,
            parent_run,
            register,
            measurer,
            export_cache,
            recording,
        )
    finally:
        source.close()


def _build(
    spec: ComposedSpec,
    target: Target,
    source: sources.Reference,
    steps: _Steps,
    t0: float,
    report_dir: Path | None,
    artifacts_dir: Path | None,
    parent_run: str | None,
    register: bool,
    measurer: DeviceMeasurer | None = None,
    export_cache: ExportCache | None = None,
    recording: Any = None,  # what records the build (registry/recorder); None: not recorded
) -> BuildResult:
    cfg = spec.config
    name = cfg.deployment.name
    data = ref.load_eval(cfg.model)
    size, pad = eval_chunking(cfg.model)
    reference_out = run_batched(lambda s: source.run([s], cfg.model)[0], data.samples, size, pad)
    preprocessing = ref.preprocessing(cfg.model)
    evidence = {
        "source": source.lineage,
        "code": code_provenance(spec.root, _spec_code_files(cfg.model)),
    }
    input_names = [t.name for t in cfg.model.inputs]
    out_root, staging = _open_staging(spec, artifacts_dir)
    try:
        work = staging / ".work"
        passes = registered_passes()
        first = passes[cfg.recipe.passes[0].name] if cfg.recipe.passes else None
        fmt = export_format(first)
        cached = export_cache.models.get(fmt) if export_cache is not None else None
        what = "ONNX" if fmt == "onnx" else "a torch program (torch.export, .pt2)"
        steps(f"export to {what}" if cached is None else f"export to {what}: the one made before")
        (work / "export").mkdir(parents=True)
        if cached is not None:
            model = copy_model(cached, work / "export")
        else:
            if fmt == TORCH_PROGRAM:
                model = source.export_program(cfg.model, work / "export" / "model.pt2")
            else:
                model = source.export(cfg.model, work / "export" / "model.onnx")
            if export_cache is not None:
                export_cache.models[fmt] = copy_model(model, export_cache.folder / fmt)
        calibration: list[Any] = []

        def calib() -> list[Any]:
            if not calibration:
                calibration.extend(calibration_batches(cfg.model, ref.load_calibration(cfg.model)))
            return calibration

        evaluation = (
            make_evaluation(
                cfg.model.task,
                data.samples,
                data.labels,
                reference_out,
                len(cfg.model.labels),
                size,
                pad,
            )
            if cfg.model.task in ("classification", "segmentation") and not cfg.model.multi_label
            else None
        )
        for i, p in enumerate(cfg.recipe.passes, start=1):
            steps(f"pass {i}/{len(cfg.recipe.passes)}: {p.name}")
            cls = passes[p.name]
            wd = work / f"{i:02d}-{p.name}"
            wd.mkdir(parents=True)
            ctx = PassContext(
                wd,
                input_names,
                calib,
                threads=cfg.target.threads,
                evaluate=evaluation,
                input_bounds=input_bounds(cfg.model),
                device=cfg.target.device,
                output_names=[t.name for t in cfg.model.outputs],
            )
            try:
                model = cls().run(model, make_options(cls, dict(p.options)), ctx)
            except EdgeshipError:
                raise
            except Exception as exc:
                raise BuildError(f"error: recipe.passes[{i - 1}] ({p.name}) failed: {exc}") from exc

        final = copy_model(model, staging / "model")
        if recording is not None:
            recording.ready()  # nothing else runs beside the latency measurement
        steps("validate (parity, latency, size, memory)")
        result = validate(cfg, target, final, data, reference_out)
        _note_runtime_validation(target, final, result)
        smoke_volume = None
        if cfg.model.pipeline is not None:
            steps("validate the pipeline on whole volumes (Dice, end-to-end time)")
            smoke_volume = _validate_pipeline(
                cfg.model, target, final, source, result, export_cache
            )
            result.gates = evaluate_gates(
                [parse_gate(g) for g in cfg.deployment.gates], result.metrics
            )
        runtime = runtime_config(staging, spec, target, final, preprocessing)
        if measurer is not None:
            before = result
            where = measurer.where
            steps(f"validate on lab device {where['device']} (fleet {where['fleet']})")
            result = validate_on_device(
                cfg, staging, final, runtime, data, reference_out, result, measurer
            )
            if cfg.model.pipeline is not None:  # whole volumes: measured on the build machine
                _keep_pipeline_figures(cfg.deployment.gates, before, result)

        steps("write artifact")
        _write_artifact(staging, spec, runtime, final, result, data, reference_out, evidence)
        if smoke_volume is not None:
            _write_smoke_volume(staging / "smoke", *smoke_volume)
        shutil.rmtree(work)
        status = "passed" if result.passed else "failed"
        run_id = version = None
        reused = False
        if recording is not None:  # the build records
            steps("record in MLflow")
            from registry.mlflow_model import artifact_digest
            from registry.tracking import ARTIFACT_DIGEST, flatten

            digest = artifact_digest(staging)
            tags = {**run_tags(spec, status), **validated_on_tags(result), ARTIFACT_DIGEST: digest}
            lineage_tags = sources.source_tags(source.lineage)
            with tempfile.TemporaryDirectory(prefix="edgeship-record-") as tmp:
                datasets = []
                for i, (dname, context, arrays, ddigest, loader) in enumerate(
                    _datasets(cfg.model, data, calibration)
                ):
                    path = Path(tmp) / f"dataset{i}.npz"
                    _save_npz(path, arrays)
                    datasets.append((dname, context, str(path), ddigest, loader))
                recorded = recording.record(
                    {
                        "deployment": name,
                        "run_name": f"{name}-{cfg.recipe.name}",
                        "tags": tags,
                        "parent": parent_run,
                        "started": time.time() - (time.perf_counter() - t0),
                        "staging": str(staging),
                        "build_info": _build_info(
                            spec, None, None, status, evidence, result.validated_on
                        ),
                        "params": {
                            **flatten(spec.data),
                            **{f"choice.{k}": v for k, v in spec.choices.items()},
                            **_evidence_params(evidence),
                        },
                        "metrics": dict(result.metrics),
                        "lineage_tags": lineage_tags,
                        "datasets": datasets,
                        "description": _description(spec, result),
                        "log_model": result.passed,
                        "register": result.passed and register,
                        "digest": digest,
                    }
                )
            run_id, version = recorded["run_id"], recorded["version"]
            reused = bool(recorded["reused"])
        write_json(
            staging / "build.json",
            _build_info(spec, run_id, version, status, evidence, result.validated_on),
        )
        steps.finish()
        (staging / ".pid").unlink()
        dest = out_root / name if result.passed else out_root / ".failed" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        install_dir(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if report_dir is not None:
        copy_reports(dest, report_dir)
    seconds = time.perf_counter() - t0
    build = BuildResult(name, dest, result, run_id, version, seconds, steps.done, reused)
    if not result.passed:
        raise GateFailure(name, result.failed_gates(), run_id)
    return build


def _validate_pipeline(
    model: ModelConfig,
    target: Target,
    final: ModelFile,
    source: sources.Reference,
    result: Validation,
    export_cache: ExportCache | None = None,
) -> tuple[np.ndarray, np.ndarray, list[float] | None]:
    """Whole-volume metrics into ``result``; the first volume and its label map (the
    device's pipeline smoke test). The reference pipeline's results are kept in
    ``export_cache`` for the next build of the same model spec."""
    reference = export_cache.volumes if export_cache is not None else None
    if reference is None:
        reference = reference_volumes(model, source, load_volumes(model))
        if export_cache is not None:
            export_cache.volumes = reference
    data = reference.data
    session = target.load(final)
    metrics, details, labels = validate_volumes(model, session, reference)
    result.metrics.update(metrics)
    result.details["pipeline"] = details
    return data.volumes[0], labels[0], data.spacing


def _keep_pipeline_figures(gates: list[str], build: Validation, lab: Validation) -> None:
    """A lab device's verdict keeps the whole-volume figures the build machine measured."""
    lab.metrics.update({k: v for k, v in build.metrics.items() if k.startswith(PIPELINE_PREFIXES)})
    lab.details["pipeline"] = dict(build.details["pipeline"], measured_on="build machine")
    lab.gates = evaluate_gates([parse_gate(g) for g in gates], lab.metrics)


def _write_smoke_volume(
    smoke: Path, volume: np.ndarray, labels: np.ndarray, spacing: list[float] | None
) -> None:
    """The pipeline's smoke test: a whole volume and the label map the artifact gave it."""
    np.savez_compressed(smoke / "volume.npz", volume=volume.astype(np.float32))
    np.savez_compressed(smoke / "volume_expected.npz", labels=labels)
    path = smoke / "smoke.json"
    info = json.loads(path.read_text())
    info["pipeline"] = {
        "input": "volume.npz",
        "expected": "volume_expected.npz",
        "spacing": spacing,
        "min_dice": 0.99,
    }
    write_json(path, info)


def _datasets(model: ModelConfig, data: Any, calibration: list[Any]) -> list[Any]:
    """The evaluation data (and the calibration data, when a pass used it) for MLflow."""
    names = [t.name for t in model.inputs]

    def stacked(samples: list[Any]) -> dict[str, np.ndarray]:
        return {n: np.concatenate([np.asarray(s[n]) for s in samples]) for n in names}

    out = [
        (f"{model.name}-eval", "evaluation", stacked(data.samples), data.sha256, model.data.eval.fn)
    ]
    if calibration and model.data.calibration is not None:
        arrays = stacked(calibration)
        digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays.values())).hexdigest()
        loader = model.data.calibration.fn
        out.append((f"{model.name}-calibration", "calibration", arrays, digest, loader))
    return out


def _description(spec: ComposedSpec, result: Validation) -> str:
    """The run's and the version's description (Markdown): verdict, choices, gates."""
    cfg = spec.config
    lines = [
        f"**{cfg.deployment.name}**: {'PASSED' if result.passed else 'FAILED'} "
        f"({spec.choices['model']} / {spec.choices['recipe']} / {spec.choices['target']})",
        "",
        "| gate | value | |",
        "|---|---:|---|",
    ]
    for g in result.gates:
        value = "n/a" if g.value is None else f"{g.value:.4g}"
        lines.append(f"| `{g.gate}` | {value} | {'pass' if g.passed else 'FAIL'} |")
    if cfg.deployment.description:
        lines += ["", cfg.deployment.description]
    return "\n".join(lines)


def _note_runtime_validation(target: Target, model: ModelFile, result: Validation) -> None:
    """Record what the validation here could not cover (a target's ``settings.validation``).

    A target whose runtime cannot run on the build machine (TensorRT without a GPU)
    validates a stand-in and says so; the note lands in validation.json, and each
    boolean in it also as a 0/1 metric (e.g. ``engine_validated``).
    """
    note = target.runtime_settings(model).get("validation")
    if not isinstance(note, dict):
        return
    result.details["runtime_validation"] = note
    for key, value in note.items():
        if isinstance(value, bool):
            result.metrics[key] = float(value)


def validated_on_tags(result: Validation) -> dict[str, str]:
    """MLflow tags saying where the gated figures were measured."""
    where = result.validated_on
    if where is None:
        return {"edgeship.device_validated": "false", "edgeship.validated_on": "build machine"}
    return {
        "edgeship.device_validated": "true",
        "edgeship.validated_on": str(where.get("device")),
        "edgeship.validated_on.fleet": str(where.get("fleet")),
        "edgeship.validated_on.runtime": f"{where.get('runtime')} {where.get('runtime_version')}",
        "edgeship.validated_on.python": str(where.get("python")),
    }


def copy_reports(artifact_dir: Path, report_dir: Path) -> None:
    """The DVC metrics and plots of an artifact (``metrics.json``, ``validation.json``,
    ``plots/*.json`` and ``plots/*.png``), replaced as a whole in ``report_dir``."""
    reports = {
        "metrics.json": artifact_dir / "metrics.json",
        "validation.json": artifact_dir / "validation.json",
    }
    for plot in sorted((artifact_dir / "plots").glob("*.json")):
        reports[f"plots/{plot.name}"] = plot
    for image in sorted((artifact_dir / "plots").glob("*.png")):  # `dvc plots`, offline
        reports[f"plots/{image.name}"] = image
    copy_tree_atomic(reports, report_dir)


def run_tags(spec: ComposedSpec, status: str, **extra: str) -> dict[str, str]:
    """The MLflow tags of a build's run (``extra``: more ``edgeship.<key>`` tags)."""
    git = git_info(spec.root)
    return {
        **{f"edgeship.{k}": v for k, v in extra.items()},
        "edgeship.deployment": spec.config.deployment.name,
        "edgeship.model": spec.choices["model"],
        "edgeship.recipe": spec.choices["recipe"],
        "edgeship.target": spec.choices["target"],
        "edgeship.target_family": spec.config.target.family,
        "edgeship.status": status,
        "edgeship.overrides": " ".join(spec.overrides),
        "git.commit": str(git["commit"]),
        "git.dirty": str(git["dirty"]).lower(),
        "mlflow.source.git.commit": str(git["commit"]),
    }


def _spec_code_files(model: ModelConfig) -> list[tuple[str, Path]]:
    """The module files of every callable the model spec names, by spec key."""
    refs = {
        "model.source.factory": model.source.factory,
        "model.source.train": model.source.train,
        "model.preprocessing": model.preprocessing,
        "model.data.eval": model.data.eval,
        "model.data.calibration": model.data.calibration,
    }
    out = []
    for key, callable_ref in refs.items():
        path = ref.callable_file(callable_ref.fn) if callable_ref is not None else None
        if path is not None:
            out.append((key, path))
    return out


def _evidence_params(evidence: dict[str, Any]) -> dict[str, str]:
    """MLflow params: the source's hash and files, the project's files, package versions."""
    source = evidence.get("source") or {}
    code = evidence.get("code") or {}
    params = {"source.sha256": str(source.get("sha256"))}
    for entry in [*source.get("files", []), *code.get("files", [])]:
        params[f"file.{entry['key']}.path"] = str(entry["path"])
        params[f"file.{entry['key']}.sha256"] = str(entry["sha256"])
        params[f"file.{entry['key']}.git"] = str(entry["git"])
    packages = {**(code.get("packages") or {}), **(source.get("packages") or {})}
    for dist, version in packages.items():
        params[f"package.{dist}"] = version
    return params


def _build_info(
    spec: ComposedSpec,
    run_id: str | None,
    version: str | None,
    status: str,
    evidence: dict[str, Any] | None = None,
    validated_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "deployment": spec.config.deployment.name,
        "status": status,
        "choices": spec.choices,
        "overrides": spec.overrides,
        "mlflow": {
            "run_id": run_id,
            "model_version": version,
            "model_name": spec.config.deployment.name,
        },
        "git": git_info(spec.root),
        "built_by": os_user(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(),
        "device_validated": validated_on is not None,
        "validated_on": validated_on,
        **(evidence or {}),
    }


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]


def runtime_config(
    staging: Path,
    spec: ComposedSpec,
    target: Target,
    model: ModelFile,
    preprocessing: dict[str, Any],
) -> dict[str, Any]:
    """The artifact's runtime.json: what a device needs to run the model as validated."""
    cfg = spec.config
    events = cfg.deployment.events
    extra: dict[str, Any] = {}
    if events.enabled:  # only then: an artifact without events keeps its runtime.json digest
        extra["events"] = {
            "fields": list(events.fields),
            "include_inputs": bool(events.include_inputs),
            "outbox_max": int(events.outbox_max),
            "multi_label": bool(cfg.model.multi_label),
            "threshold": float(cfg.model.threshold),
        }
    pipeline = runtime_pipeline(cfg.model)
    if pipeline is not None:  # segmentation on whole volumes: the steps the device runs
        extra["pipeline"] = pipeline
    return extra | {
        "schema": 1,
        "deployment": cfg.deployment.name,
        "task": cfg.model.task,
        "target": {
            "name": cfg.target.name,
            "family": cfg.target.family,
            "runtime": target.runtime,
            "device": cfg.target.device,
            "threads": cfg.target.threads,
        },
        "runtime_version_built_with": target.runtime_version(),
        "runtime_requirement": cfg.target.runtime_version,
        "model": {
            "file": str(model.path.relative_to(staging)),
            "files": [str(p.relative_to(staging)) for p in model.files()],
            "format": model.format,
            "precision": model.precision,
            "sha256": sha256_file(model.path),
        },
        "inputs": [tensor_json(t) for t in cfg.model.inputs],
        "outputs": [tensor_json(t) for t in cfg.model.outputs],
        "labels": list(cfg.model.labels),
        "preprocessing": preprocessing,
        "settings": target.runtime_settings(model),
    }


def _write_artifact(
    staging: Path,
    spec: ComposedSpec,
    runtime: dict[str, Any],
    model: ModelFile,
    result: Validation,
    data: ref.Dataset,
    reference_out: list[list[np.ndarray]],
    evidence: dict[str, Any],
) -> None:
    cfg = spec.config
    weights = ref.weights_path(cfg.model, spec.root)
    write_json(staging / "runtime.json", runtime)
    write_json(staging / "metrics.json", result.metrics)
    data_info = {
        "eval_data_sha256": data.sha256,
        "eval_samples": len(data),
        "weights_sha256": sha256_file(weights) if weights and weights.exists() else None,
        "source_kind": cfg.model.source.kind,
        "source_sha256": evidence["source"].get("sha256"),
    }
    train = ref.load_train(cfg.model)
    if train is not None and cfg.model.data.train is not None:
        data_info["train_data"] = cfg.model.data.train.fn
        data_info["train_data_sha256"] = train.sha256
        data_info["train_samples"] = len(train)
    write_json(staging / "validation.json", result.to_json() | {"data": data_info})
    (staging / "spec.yaml").write_text(spec.to_yaml())
    # smoke test: the first evaluation sample, the artifact's own output and the reference's
    smoke = staging / "smoke"
    smoke.mkdir()
    size, pad = eval_chunking(cfg.model)
    smoke_in, expected = first_chunk(data.samples, result.outputs, size, pad)
    _, from_reference = first_chunk(data.samples, reference_out, size, pad)
    _save_npz(smoke / "input.npz", smoke_in)
    out_names = [t.name for t in cfg.model.outputs]
    _save_npz(smoke / "expected.npz", dict(zip(out_names, expected, strict=False)))
    _save_npz(smoke / "reference.npz", dict(zip(out_names, from_reference, strict=False)))
    scale = float(max(np.abs(e).max() if e.size else 0.0 for e in expected)) or 1.0
    argmax = cfg.model.task in ("classification", "segmentation") and not cfg.model.multi_label
    write_json(
        smoke / "smoke.json",
        {
            "input": "input.npz",
            "expected": "expected.npz",
            "atol": max(1e-3, 0.05 * scale),
            "rtol": 0.0,
            "min_argmax_agreement": (
                0.0 if not argmax else 0.999 if cfg.model.task == "segmentation" else 1.0
            ),
            "argmax_axis": 1 if cfg.model.task == "segmentation" else -1,
        },
    )
    (staging / "report.md").write_text(render_report(spec, runtime, result, data_info))
    write_plots(staging / "plots", spec, result, reference_out)
    status = "passed" if result.passed else "failed"
    provenance = _build_info(spec, None, None, status, evidence, result.validated_on)
    (staging / "model_card.md").write_text(
        render_model_card(spec, runtime, result, data_info, provenance)
    )


def _run_passes(spec: ComposedSpec, model: ModelFile, work: Path, steps: _Steps) -> ModelFile:
    """The recipe's passes in order, each in its own folder under ``work``."""
    cfg = spec.config
    passes = registered_passes()
    for i, p in enumerate(cfg.recipe.passes, start=1):
        steps(f"pass {i}/{len(cfg.recipe.passes)}: {p.name}")
        cls = passes[p.name]
        wd = work / f"{i:02d}-{p.name}"
        wd.mkdir(parents=True)
        ctx = PassContext(
            wd,
            [t.name for t in cfg.model.inputs],
            lambda: [],
            threads=cfg.target.threads,
            device=cfg.target.device,
            output_names=[t.name for t in cfg.model.outputs],
        )
        try:
            model = cls().run(model, make_options(cls, dict(p.options)), ctx)
        except EdgeshipError:
            raise
        except Exception as exc:
            raise BuildError(f"error: recipe.passes[{i - 1}] ({p.name}) failed: {exc}") from exc
    return model


def _open_staging(spec: ComposedSpec, artifacts_dir: Path | None) -> tuple[Path, Path]:
    """The artifacts folder (interrupted builds recovered) and a fresh staging folder in it
    holding this process's id."""
    out_root = artifacts_dir or artifacts_root(spec.root)
    out_root.mkdir(parents=True, exist_ok=True)
    recover(out_root)
    staging = out_root / ".staging" / f"{spec.config.deployment.name}.{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    (staging / ".pid").write_text(str(os.getpid()))
    return out_root, staging


def _padded(rows: Any, dtype: Any) -> np.ndarray:
    """Sequences of different lengths as one zero-padded 2-D array (the MLflow dataset)."""
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass
class _FolderBuild:
    """A validated build from a model folder (text generation, speech recognition): what
    is left is to write its artifact, record it and install it."""

    spec: ComposedSpec
    source: sources.Reference
    evidence: dict[str, Any]
    result: Validation
    runtime: dict[str, Any]
    data_info: dict[str, Any]
    smoke: dict[str, Any]  # smoke/smoke.json: what the device's health check compares
    report: str  # report.md
    reference_logits: list[Any]  # the reference's step-1 logits, for the parity plot
    dataset: tuple[str, dict[str, np.ndarray], str]  # MLflow dataset: name, arrays, sha256


@dataclass
class _Installed:
    name: str
    dest: Path
    run_id: str | None
    version: Any
    reused: bool


def _finish_folder_build(
    b: _FolderBuild,
    staging: Path,
    out_root: Path,
    steps: _Steps,
    t0: float,
    parent_run: str | None,
    register: bool,
    recording: Any,
) -> _Installed:
    """Write the artifact's files, record it in MLflow (when recording) and install it."""
    spec, result, evidence = b.spec, b.result, b.evidence
    cfg = spec.config
    name = cfg.deployment.name
    write_json(staging / "runtime.json", b.runtime)
    write_json(staging / "metrics.json", result.metrics)
    write_json(staging / "validation.json", result.to_json() | {"data": b.data_info})
    (staging / "spec.yaml").write_text(spec.to_yaml())
    (staging / "smoke").mkdir(exist_ok=True)
    write_json(staging / "smoke" / "smoke.json", b.smoke)
    (staging / "report.md").write_text(b.report)
    write_plots(staging / "plots", spec, result, b.reference_logits)
    shutil.rmtree(staging / ".work")
    status = "passed" if result.passed else "failed"
    run_id = version = None
    reused = False
    if recording is not None:
        steps("record in MLflow")
        from registry.mlflow_model import artifact_digest
        from registry.tracking import ARTIFACT_DIGEST, flatten

        digest = artifact_digest(staging)
        tags = {**run_tags(spec, status), **validated_on_tags(result), ARTIFACT_DIGEST: digest}
        label, arrays, sha256 = b.dataset
        with tempfile.TemporaryDirectory(prefix="edgeship-record-") as tmp:
            path = Path(tmp) / f"{label}.npz"
            _save_npz(path, arrays)
            fn = cfg.model.data.eval.fn
            recorded = recording.record(
                {
                    "deployment": name,
                    "run_name": f"{name}-{cfg.recipe.name}",
                    "tags": tags,
                    "parent": parent_run,
                    "started": time.time() - (time.perf_counter() - t0),
                    "staging": str(staging),
                    "build_info": _build_info(
                        spec, None, None, status, evidence, result.validated_on
                    ),
                    "params": {
                        **flatten(spec.data),
                        **{f"choice.{k}": v for k, v in spec.choices.items()},
                        **_evidence_params(evidence),
                    },
                    "metrics": dict(result.metrics),
                    "lineage_tags": sources.source_tags(b.source.lineage),
                    "datasets": [
                        (f"{cfg.model.name}-{label}", "evaluation", str(path), sha256, fn)
                    ],
                    "description": _description(spec, result),
                    "log_model": result.passed,
                    "register": result.passed and register,
                    "digest": digest,
                }
            )
        run_id, version = recorded["run_id"], recorded["version"]
        reused = bool(recorded["reused"])
    write_json(
        staging / "build.json",
        _build_info(spec, run_id, version, status, evidence, result.validated_on),
    )
    steps.finish()
    (staging / ".pid").unlink()
    dest = out_root / name if result.passed else out_root / ".failed" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    install_dir(staging, dest)
    return _Installed(name, dest, run_id, version, reused)


def _folder_build_result(
    installed: _Installed, result: Validation, steps: _Steps, t0: float, report_dir: Path | None
) -> BuildResult:
    """The BuildResult of an installed folder build; raises GateFailure if a gate failed."""
    if report_dir is not None:
        copy_reports(installed.dest, report_dir)
    seconds = time.perf_counter() - t0
    build = BuildResult(
        installed.name,
        installed.dest,
        result,
        installed.run_id,
        installed.version,
        seconds,
        steps.done,
        installed.reused,
    )
    if not result.passed:
        raise GateFailure(installed.name, result.failed_gates(), installed.run_id)
    return build


def _gate_report_head(spec: ComposedSpec, result: Validation, what: str) -> list[str]:
    """The first lines of a folder build's report.md: verdict, gates, every metric."""
    cfg = spec.config
    lines = [
        f"# {cfg.deployment.name}: {'PASSED' if result.passed else 'FAILED'}",
        "",
        f"model `{spec.choices['model']}`, recipe `{spec.choices['recipe']}`, "
        f"target `{spec.choices['target']}` ({cfg.target.threads} threads); {what}",
        "",
        "| gate | value | |",
        "|---|---:|---|",
    ]
    for g in result.gates:
        value = "n/a" if g.value is None else f"{g.value:.4g}"
        lines.append(f"| `{g.gate}` | {value} | {'pass' if g.passed else 'FAIL'} |")
    lines += ["", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(result.metrics.items())]
    return lines


def _build_generation(
    spec: ComposedSpec,
    target: Target,
    source: sources.Reference,
    steps: _Steps,
    t0: float,
    report_dir: Path | None,
    artifacts_dir: Path | None,
    parent_run: str | None,
    register: bool,
    recording: Any = None,
) -> BuildResult:
    """A text-generation build: the recipe starts from the Hugging Face folder (its first
    pass exports the decoder with its KV cache); validation decodes the prompt set
    (see :mod:`orchestrator.build.generative`)."""
    cfg = spec.config
    gen = generative.settings(cfg.model)
    prompts = generative.load_prompts(cfg.model, spec.root)
    steps("reference: greedy generation in PyTorch (computed once, then kept: references/)")
    reference = generative.reference(
        cfg.model,
        spec.root,
        lambda: sources.reference_net(cfg.model, spec.root),
        str(source.lineage.get("sha256")),
        prompts,
        cfg.target.threads,
    )
    evidence = {
        "source": source.lineage,
        "code": code_provenance(spec.root, _spec_code_files(cfg.model)),
    }
    out_root, staging = _open_staging(spec, artifacts_dir)
    try:
        work = staging / ".work"
        work.mkdir()
        assert cfg.model.source.path is not None
        folder = ModelFile(spec.root / cfg.model.source.path, HF_FOLDER)
        model = _run_passes(spec, folder, work, steps)
        # the graph keeps its name (model.onnx, openvino_model.xml): runtimes load the folder
        final = copy_model(model, staging / "model", stem=model.path.stem)
        runtime = runtime_config(staging, spec, target, final, {})
        if recording is not None:
            recording.ready()
        steps("validate (teacher-forced parity, time to first token, tokens/s, memory)")
        measured = generative.measure_artifact(
            final,
            prompts,
            reference,
            cfg.target.threads,
            gen.prompt_tokens,
            target.runtime,
            runtime["settings"] if target.runtime == "openvino" else None,
        )
        metrics, per_prompt = generative.parity_metrics(
            measured, reference, prompts, gen.max_new_tokens
        )
        tokens_per_s = float(measured["tokens_per_s"])
        tokenizer_exact = generative.tokenizer_exact(staging / "model", prompts)
        ov_tokenizer = generative.openvino_tokenizer_exact(staging / "model", prompts)
        if ov_tokenizer is not None:  # what LLMPipeline encodes with: both must be exact
            metrics["openvino_tokenizer_exact"] = ov_tokenizer
            tokenizer_exact = min(tokenizer_exact, ov_tokenizer)
        heldout = measured.get("perplexity")
        if heldout and reference.perplexity:  # the held-out text: reference vs artifact
            metrics["perplexity"] = float(heldout["perplexity"])
            metrics["reference_perplexity"] = float(reference.perplexity)
            metrics["perplexity_ratio"] = metrics["perplexity"] / metrics["reference_perplexity"]
            metrics["heldout_tokens"] = float(heldout["tokens"])
        genai = measured.get("genai") or {}
        if target.runtime == "onnxruntime":  # onnxruntime-genai, in its tool environment
            genai = (
                generative.measure_genai(
                    staging / "model", prompts, measured, cfg.target.threads, gen.prompt_tokens
                )
                or {}
            )
        if genai.get("available"):  # OpenVINO GenAI's LLMPipeline / onnxruntime-genai
            metrics["genai_exact"] = float(genai["exact"])
            metrics["genai_tokens_per_s"] = float(genai["tokens_per_s"])
            metrics["genai_ttft_ms"] = float(genai["ttft_ms"])
        metrics.update(
            {
                "tokenizer_exact": tokenizer_exact,
                "ttft_ms": float(measured["ttft_ms"]),
                "prompt_tokens": float(measured["ttft_prompt_tokens"]),
                "tokens_per_s": tokens_per_s,
                "throughput": tokens_per_s,
                "reference_tokens_per_s": reference.tokens_per_s,
                "speedup": tokens_per_s / reference.tokens_per_s if reference.tokens_per_s else 0.0,
                "p50_ms": float(measured["step_p50_ms"]),
                "p95_ms": float(measured["step_p95_ms"]),
                "p99_ms": float(measured["step_p99_ms"]),
                "mean_ms": float(measured["step_mean_ms"]),
                "size_mb": final.size_bytes() / 1e6,
                "peak_memory_mb": float(measured["peak_memory_mb"]),
            }
        )
        result = Validation(
            metrics,
            evaluate_gates([parse_gate(g) for g in cfg.deployment.gates], metrics),
            details={
                "generation": {
                    "prompts": per_prompt,
                    "decode_steps": measured["decode_steps"],
                    "runtime": target.runtime,
                    "execution": measured.get("properties") or {},
                    "genai": genai or None,
                    "latency": "p50/p95/p99/mean_ms: one decoding step (one token, KV cache)",
                    "reference": {
                        "runtime": "PyTorch eager, FP32",
                        "tokens_per_s": reference.tokens_per_s,
                        "ttft_ms": reference.ttft_ms,
                        "cached": reference.cached,
                        "stored": reference.stored,
                        "key": reference.key,
                        "file": str(reference.path.relative_to(spec.root)),
                    },
                }
            },
        )
        # the plots every build has: one decoding step's latency, step-1 logits' parity
        result.details["latency_by_batch"] = [
            {"batch": 1, **{k: metrics[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}}
        ]
        result.details["latency_samples_ms"] = {"1": list(measured["steps_ms"])}
        result.outputs = [
            [np.asarray(p["first_logits"], dtype=np.float32)[None]] for p in measured["prompts"]
        ]
        reference_logits = [[row[None]] for row in reference.first_logits]
        openvino = target.runtime == "openvino"
        runtime["generation"] = {
            "decoder": (
                "stateful OpenVINO decoder (OpenVINO GenAI LLMPipeline, else "
                "orchestrator/device/agent/generate.py)"
                if openvino
                else "onnx decoder with KV cache (orchestrator/device/agent/generate.py)"
            ),
            "tokenizer": "model/tokenizer.json",
            "chat": gen.chat,
            "system": gen.system,
            "decoding": gen.decoding,
            "max_new_tokens": gen.max_new_tokens,
            "max_context": gen.max_context,
            "eos_token_id": prompts.eos,
        }
        if openvino:  # what the device's LLMPipeline reads, and the precision it ran at
            runtime["generation"]["openvino_tokenizer"] = "model/" + generative.OV_TOKENIZER
            runtime["generation"]["execution"] = measured.get("properties") or {}
        steps("write artifact")
        data_info = {
            "eval_data_sha256": prompts.sha256,
            "eval_samples": len(prompts),
            "weights_sha256": None,
            "source_kind": cfg.model.source.kind,
            "source_sha256": evidence["source"].get("sha256"),
        }
        count = min(gen.health_tokens, len(reference.tokens[0]))
        installed = _finish_folder_build(
            _FolderBuild(
                spec=spec,
                source=source,
                evidence=evidence,
                result=result,
                runtime=runtime,
                data_info=data_info,
                smoke={
                    "generation": {
                        "prompt_ids": prompts.ids[0],
                        "expected_tokens": measured["prompts"][0]["greedy"][:count],
                        "reference_tokens": reference.tokens[0][:count],
                        "max_new_tokens": count,
                        "min_agreement": 1.0,
                    }
                },
                report=_generation_report(spec, result, data_info),
                reference_logits=reference_logits,
                dataset=("prompts", {"input_ids": _padded(prompts.ids, np.int64)}, prompts.sha256),
            ),
            staging,
            out_root,
            steps,
            t0,
            parent_run,
            register,
            recording,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _folder_build_result(installed, result, steps, t0, report_dir)


def _generation_report(spec: ComposedSpec, result: Validation, data: dict[str, Any]) -> str:
    """report.md of a text-generation artifact: verdict, gates, figures, every prompt."""
    lines = _gate_report_head(spec, result, f"{data['eval_samples']} prompts")
    lines += [
        "",
        "| prompt | tokens | teacher-forced agreement | first divergence | exact |",
        "|---|---:|---:|---:|---|",
    ]
    for p in result.details["generation"]["prompts"]:
        exact = "yes" if p["greedy_tokens"] == p["reference_tokens"] else "no"
        lines.append(
            f"| {p['prompt']} | {p['prompt_tokens']} | {p['teacher_forced_agreement']:.3f} | "
            f"{p['first_divergence']} | {exact} |"
        )
    return "\n".join(lines) + "\n"


SPEECH_ENCODER = "openvino_encoder_model"  # the primary file of a speech artifact


def _build_speech(
    spec: ComposedSpec,
    target: Target,
    source: sources.Reference,
    steps: _Steps,
    t0: float,
    report_dir: Path | None,
    artifacts_dir: Path | None,
    parent_run: str | None,
    register: bool,
    recording: Any = None,
) -> BuildResult:
    """Build, validate and record a speech-recognition deployment."""
    cfg = spec.config
    s = asr.settings(cfg.model)
    asr.check_features(cfg.model, spec.root)
    clips = asr.load_clips(cfg.model)
    if s.health_clip >= len(clips):
        raise BuildError(
            f"error: model.speech.health_clip: {s.health_clip}, but the evaluation set has "
            f"{len(clips)} clips"
        )
    steps("reference: greedy transcription in PyTorch (computed once, then kept: references/)")
    reference = asr.reference(
        cfg.model,
        spec.root,
        lambda: sources.reference_net(cfg.model, spec.root),
        str(source.lineage.get("sha256")),
        clips,
        cfg.target.threads,
    )
    evidence = {
        "source": source.lineage,
        "code": code_provenance(spec.root, _spec_code_files(cfg.model)),
    }
    out_root, staging = _open_staging(spec, artifacts_dir)
    try:
        work = staging / ".work"
        work.mkdir()
        assert cfg.model.source.path is not None
        folder = ModelFile(spec.root / cfg.model.source.path, HF_FOLDER)
        model = _run_passes(spec, folder, work, steps)
        final = copy_model(model, staging / "model", stem=SPEECH_ENCODER)
        if recording is not None:
            recording.ready()
        steps("validate (word error rate, teacher-forced parity, real-time factor, memory)")
        model_dir = staging / "model"
        measured = asr.measure_artifact(model_dir, cfg.model, clips, cfg.target.threads)
        forced = asr.teacher_forced(
            model_dir, cfg.model, spec.root, clips, reference, cfg.target.threads
        )
        metrics, shares, errors = asr.parity_metrics(forced, reference)
        metrics.update(asr.wer_metrics(clips, measured, reference))
        times_ms = [1000.0 * c["seconds"] for c in measured["clips"]]
        rtf = float(measured["real_time_factor"])
        metrics.update(
            {
                "real_time_factor": rtf,
                "reference_real_time_factor": reference.real_time_factor,
                "speedup": reference.real_time_factor / rtf if rtf else 0.0,
                "audio_seconds": float(measured["audio_seconds"]),
                "p50_ms": float(np.percentile(times_ms, 50)),
                "p95_ms": float(np.percentile(times_ms, 95)),
                "p99_ms": float(np.percentile(times_ms, 99)),
                "mean_ms": float(np.mean(times_ms)),
                "throughput": 1000.0 / float(np.mean(times_ms)),
                "size_mb": final.size_bytes() / 1e6,
                "peak_memory_mb": float(measured["peak_memory_mb"]),
            }
        )
        per_clip = [
            {
                "transcript": clips.texts[i],
                "held_out": clips.held_out[i],
                "seconds": round(len(clips.samples[i]) / s.sampling_rate, 3),
                "reference_text": reference.texts[i],
                "text": measured["clips"][i]["text"],
                "reference_tokens": reference.tokens[i],
                "tokens": measured["clips"][i]["tokens"],
                "teacher_forced_agreement": shares[i],
                "step1_max_abs_error": errors[i],
                "processing_ms": times_ms[i],
            }
            for i in range(len(clips))
        ]
        result = Validation(
            metrics,
            evaluate_gates([parse_gate(g) for g in cfg.deployment.gates], metrics),
            details={
                "speech": {
                    "clips": per_clip,
                    "latency": "p50/p95/p99/mean_ms: one clip transcribed (features, encoder, "
                    "greedy decoding) by WhisperPipeline",
                    "runtime": measured["runtime"],
                    "reference": {
                        "runtime": "PyTorch eager, FP32",
                        "real_time_factor": reference.real_time_factor,
                        "cached": reference.cached,
                        "stored": reference.stored,
                        "key": reference.key,
                        "file": str(reference.path.relative_to(spec.root)),
                    },
                }
            },
        )
        result.details["latency_by_batch"] = [
            {"batch": 1, **{k: metrics[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}}
        ]
        result.details["latency_samples_ms"] = {"1": times_ms}
        result.outputs = [[f["first_logits"][None]] for f in forced]
        reference_logits = [[row[None]] for row in reference.first_logits]
        runtime = runtime_config(staging, spec, target, final, {})
        runtime["speech"] = {
            "pipeline": "openvino_genai.WhisperPipeline (orchestrator/device/agent/speech.py)",
            "sampling_rate": s.sampling_rate,
            "chunk_seconds": s.chunk_seconds,
            "language": asr.language_token(s),
            "task": s.task,
            "decoding": s.decoding,
            "max_new_tokens": s.max_new_tokens,
            "inference_precision": "f32",
        }
        steps("write artifact")
        data_info = {
            "eval_data_sha256": clips.sha256,
            "eval_samples": len(clips),
            "weights_sha256": None,
            "source_kind": cfg.model.source.kind,
            "source_sha256": evidence["source"].get("sha256"),
        }
        h = s.health_clip
        (staging / "smoke").mkdir()
        np.save(staging / "smoke" / "clip.npy", clips.samples[h])
        installed = _finish_folder_build(
            _FolderBuild(
                spec=spec,
                source=source,
                evidence=evidence,
                result=result,
                runtime=runtime,
                data_info=data_info,
                smoke={
                    "speech": {
                        "clip": "clip.npy",
                        "transcript": clips.texts[h],
                        "expected_tokens": measured["clips"][h]["tokens"],
                        "expected_text": measured["clips"][h]["text"],
                        "reference_tokens": reference.tokens[h],
                        "language": asr.language_token(s),
                        "task": s.task,
                        "max_new_tokens": s.max_new_tokens,
                    }
                },
                report=_speech_report(spec, result, data_info),
                reference_logits=reference_logits,
                dataset=("clips", {"audio": _padded(clips.samples, np.float32)}, clips.sha256),
            ),
            staging,
            out_root,
            steps,
            t0,
            parent_run,
            register,
            recording,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _folder_build_result(installed, result, steps, t0, report_dir)


def _speech_report(spec: ComposedSpec, result: Validation, data: dict[str, Any]) -> str:
    """report.md of a speech-recognition artifact: verdict, gates, figures, every clip."""
    lines = _gate_report_head(spec, result, f"{data['eval_samples']} clips")
    lines += [
        "",
        "| transcript | held out | PyTorch | artifact | teacher-forced agreement |",
        "|---|---|---|---|---:|",
    ]
    for c in result.details["speech"]["clips"]:
        lines.append(
            f"| {c['transcript']} | {'yes' if c['held_out'] else 'no'} | "
            f"{c['reference_text'].strip()} | {c['text'].strip()} | "
            f"{c['teacher_forced_agreement']:.3f} |"
        )
    return "\n".join(lines) + "\n"
