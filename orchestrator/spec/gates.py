"""Acceptance gates: ``"<metric> <op> <number>"`` strings in a deployment spec."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
_GATE = re.compile(
    r"^\s*([A-Za-z_][\w./-]*)\s*(>=|<=|==|>|<)\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$"
)

COMMON_METRICS = (
    "max_abs_error",
    "mean_abs_error",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "size_mb",
    "peak_memory_mb",
    "throughput",
)
# a segmentation model with a pipeline (model.pipeline): whole volumes, end to end
PIPELINE_METRICS = (
    "volume_dice_vs_reference",
    "volume_min_dice_vs_reference",
    "volume_dice_vs_labels",
    "reference_volume_dice_vs_labels",
    "volume_dice_drop",
    "volume_s",
    "reference_volume_s",
    "volume_speedup",
)
LATENCY_METRICS = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput")
TASK_METRICS = {
    "classification": ("agreement", "accuracy", "reference_accuracy", "accuracy_drop"),
    "segmentation": (
        "dice_vs_reference",
        "min_dice_vs_reference",
        "dice_vs_labels",
        "reference_dice_vs_labels",
        "dice_drop",
    ),
    "multi_label": (
        "agreement",
        "label_agreement",
        "accuracy",
        "reference_accuracy",
        "accuracy_drop",
        "f1",
        "reference_f1",
        "f1_drop",
    ),
    # text generation: teacher-forced parity against the reference's greedy tokens, decoding
    # speed at the stated prompt length; max_abs_error is the step-1 logits' (see build/generative)
    "text-generation": (
        "teacher_forced_agreement",
        "min_teacher_forced_agreement",
        "first_divergence",
        "exact_generations",
        "tokenizer_exact",
        "step1_max_abs_error",
        "ttft_ms",
        "tokens_per_s",
        "reference_tokens_per_s",
        "speedup",
        "prompt_tokens",
        "perplexity",  # on model.generation.heldout, when set
        "reference_perplexity",
        "perplexity_ratio",  # the artifact's perplexity / the reference's
        "openvino_tokenizer_exact",  # OpenVINO artifacts: openvino_tokenizer.xml's ids
        "genai_exact",  # LLMPipeline (OpenVINO) or onnxruntime-genai: greedy tokens = the loop's
        "genai_tokens_per_s",
        "genai_ttft_ms",
    ),
    # speech recognition: word error rate against the reference transcripts and against the
    # PyTorch reference's, teacher-forced token agreement, real-time factor (see build/speech)
    "speech-recognition": (
        "wer",
        "reference_wer",
        "wer_drop",
        "wer_vs_reference",
        "heldout_wer",
        "reference_heldout_wer",
        "teacher_forced_agreement",
        "min_teacher_forced_agreement",
        "exact_transcripts",
        "step1_max_abs_error",
        "real_time_factor",
        "reference_real_time_factor",
        "speedup",
        "audio_seconds",
    ),
    "regression": (
        "mae",
        "rmse",
        "r2",
        "reference_mae",
        "reference_rmse",
        "reference_r2",
        "mae_increase",
        "rmse_increase",
        "r2_drop",
    ),
}


def measured_metrics(
    task: str,
    labels: Iterable[str],
    *,
    multi_label: bool = False,
    outputs: Iterable[str] = (),
    user: Iterable[str] = (),
    batches: Iterable[int] = (),
    pipeline: bool = False,
) -> list[str]:
    """Every metric validation reports for a model of this task.

    ``outputs``: output names (``max_abs_error.<output>``); ``user``: the names of the
    model's own metrics (each also as ``reference_<name>`` and ``<name>_drop``);
    ``batches``: the batch sizes latency is measured at (``p95_ms.batch8``); ``pipeline``:
    the model declares a whole-volume pipeline (``volume_*`` metrics).
    """
    kind = "multi_label" if task == "classification" and multi_label else task
    names = list(COMMON_METRICS) + list(TASK_METRICS.get(kind, ()))
    for u in user:
        names += [u, f"reference_{u}", f"{u}_drop"]
    for o in outputs:
        names += [f"max_abs_error.{o}", f"mean_abs_error.{o}"]
    for b in batches:
        names += [f"{m}.batch{b}" for m in LATENCY_METRICS]
    if task == "segmentation":
        for label in list(labels)[1:]:
            names.append(f"dice_vs_reference.{label}")
            names.append(f"dice_vs_labels.{label}")
        if pipeline:
            names += list(PIPELINE_METRICS)
            for label in list(labels)[1:]:
                names.append(f"volume_dice_vs_reference.{label}")
    return names


def metric_names(entry: Any) -> list[str]:
    """The names a ``model.metrics`` entry reports: its ``names``, else the function's name."""
    get = entry.get if isinstance(entry, Mapping) else lambda k: getattr(entry, k, None)
    names, fn = get("names"), get("fn")
    if names:
        return [str(n) for n in names]
    return [fn.rpartition(":")[2]] if isinstance(fn, str) and fn else []


@dataclass(frozen=True)
class Gate:
    """One acceptance rule on one metric."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def check(self, value: float | None) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return OPS[self.op](float(value), self.threshold)


class GateSyntaxError(ValueError):
    """A gate string is not ``<metric> <op> <number>``."""


def parse_gate(text: str) -> Gate:
    """Parse ``"agreement >= 0.99"``."""
    m = _GATE.match(text)
    if not m:
        raise GateSyntaxError(
            f"expected '<metric> <op> <number>' with op one of {', '.join(OPS)}, found '{text}'"
        )
    return Gate(m.group(1), m.group(2), float(m.group(3)))


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    def describe(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.6g}"
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.gate}: {verdict} (measured {shown})"


def evaluate_gates(gates: Iterable[Gate], metrics: Mapping[str, float]) -> list[GateResult]:
    """Check every gate against the measured metrics."""
    out = []
    for g in gates:
        value = metrics.get(g.metric)
        out.append(GateResult(g, value, g.check(value) if value is not None else False))
    return out
