"""The build of a speech-recognition deployment: passes, validation, artifact, record.

The recipe starts from the Whisper folder (its first pass exports the OpenVINO GenAI
folder); validation transcribes the clip set with the artifact as a device would
(:mod:`orchestrator.build.speech`). Called by :func:`orchestrator.build.pipeline.run_build`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build import sources
from orchestrator.build import speech as asr
from orchestrator.build.evidence import write_plots
from orchestrator.build.export import copy_model
from orchestrator.build.pipeline import (
    BuildResult,
    _build_info,
    _description,
    _evidence_params,
    _run_passes,
    _save_npz,
    _spec_code_files,
    _Steps,
    copy_reports,
    run_tags,
    runtime_config,
    validated_on_tags,
)
from orchestrator.build.provenance import code_provenance
from orchestrator.build.validate import Validation
from orchestrator.core.fsutil import install_dir, recover, write_json
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import GateFailure
from orchestrator.passes.base import HF_FOLDER
from orchestrator.project import artifacts_root
from orchestrator.spec.compose import ComposedSpec
from orchestrator.spec.gates import evaluate_gates, parse_gate
from targets.base import Target

ENCODER = "openvino_encoder_model"


def build_speech(
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
    name = cfg.deployment.name
    s = asr.settings(cfg.model)
    asr.check_features(cfg.model, spec.root)
    clips = asr.load_clips(cfg.model)
    if s.health_clip >= len(clips):
        from orchestrator.errors import BuildError

        raise BuildError(
            f"error: model.speech.health_clip: {s.health_clip}, but the evaluation set has "
            f"{len(clips)} clips"
        )
    steps("reference: greedy transcription in PyTorch (computed once, kept in .edgeship/reference)")
    net = getattr(source.module, "net", source.module)
    reference = asr.reference(
        cfg.model, spec.root, net, str(source.lineage.get("sha256")), clips, cfg.target.threads
    )
    evidence = {
        "source": source.lineage,
        "code": code_provenance(spec.root, _spec_code_files(cfg.model)),
    }
    out_root = artifacts_dir or artifacts_root(spec.root)
    out_root.mkdir(parents=True, exist_ok=True)
    recover(out_root)
    staging = out_root / ".staging" / f"{name}.{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    (staging / ".pid").write_text(str(os.getpid()))
    try:
        work = staging / ".work"
        work.mkdir()
        assert cfg.model.source.path is not None
        folder = ModelFile(spec.root / cfg.model.source.path, HF_FOLDER)
        model = _run_passes(spec, folder, work, steps)
        final = copy_model(model, staging / "model", stem=ENCODER)
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
        write_json(staging / "runtime.json", runtime)
        write_json(staging / "metrics.json", result.metrics)
        write_json(staging / "validation.json", result.to_json() | {"data": data_info})
        (staging / "spec.yaml").write_text(spec.to_yaml())
        smoke = staging / "smoke"
        smoke.mkdir()
        h = s.health_clip
        np.save(smoke / "clip.npy", clips.samples[h])
        write_json(
            smoke / "smoke.json",
            {
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
        )
        (staging / "report.md").write_text(speech_report(spec, result, data_info))
        write_plots(staging / "plots", spec, result, reference_logits)
        shutil.rmtree(work)
        status = "passed" if result.passed else "failed"
        run_id = version = None
        reused = False
        if recording is not None:
            steps("record in MLflow")
            from registry.mlflow_model import artifact_digest
            from registry.tracking import ARTIFACT_DIGEST, flatten

            digest = artifact_digest(staging)
            tags = {**run_tags(spec, status), **validated_on_tags(result), ARTIFACT_DIGEST: digest}
            with tempfile.TemporaryDirectory(prefix="edgeship-record-") as tmp:
                path = Path(tmp) / "clips.npz"
                width = max(len(c) for c in clips.samples)
                audio = np.zeros((len(clips), width), dtype=np.float32)
                for row, c in enumerate(clips.samples):
                    audio[row, : len(c)] = c
                _save_npz(path, {"audio": audio})
                fn = cfg.model.data.eval.fn
                datasets = [(f"{cfg.model.name}-clips", "evaluation", str(path), clips.sha256, fn)]
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
                        "lineage_tags": sources.source_tags(source.lineage),
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


def speech_report(spec: ComposedSpec, result: Validation, data: dict[str, Any]) -> str:
    """report.md of a speech-recognition artifact: verdict, gates, figures, every clip."""
    cfg = spec.config
    lines = [
        f"# {cfg.deployment.name}: {'PASSED' if result.passed else 'FAILED'}",
        "",
        f"model `{spec.choices['model']}`, recipe `{spec.choices['recipe']}`, "
        f"target `{spec.choices['target']}` ({cfg.target.threads} threads); "
        f"{data['eval_samples']} clips",
        "",
        "| gate | value | |",
        "|---|---:|---|",
    ]
    for g in result.gates:
        value = "n/a" if g.value is None else f"{g.value:.4g}"
        lines.append(f"| `{g.gate}` | {value} | {'pass' if g.passed else 'FAIL'} |")
    lines += ["", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(result.metrics.items())]
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
