"""``recipe=auto``: build every candidate recipe, keep the fastest artifact that passes.

A selecting recipe (``select: true`` in ``conf/recipe/auto.yaml``) names candidate
recipes, or none to mean every recipe under ``conf/recipe/`` whose passes the
deployment's target can run (decided by composing and validating each candidate's
spec, the same check ``edgeship build`` runs). Each candidate is built and
validated by :func:`orchestrator.build.pipeline.run_build` into a scratch folder, recorded
as its own MLflow run nested under one parent run, and measured against the
deployment's gates. The winner is the candidate with the lowest ``select_by``
latency among those that pass every gate: chosen by measurement on this machine,
never by a rule about which recipe "should" be faster. It replaces
``artifacts/<deployment>/`` atomically and is registered with the alias
``candidate``; the parent run carries a comparison table (CSV and Markdown) and a
plot of latency against parity. When no candidate passes, nothing is installed
and :class:`NoCandidatePassedError` (exit code 4) lists every candidate's failures.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.build.lab import DeviceMeasurer
from orchestrator.build.pipeline import (
    BuildResult,
    ExportCache,
    artifacts_root,
    copy_reports,
    run_build,
    run_tags,
)
from orchestrator.build.sources import check_source_files, source_tags
from orchestrator.core.fsutil import (
    drop_dead_folders,
    install_dir,
    recover,
    write_json,
)
from orchestrator.errors import (
    BuildError,
    GateFailure,
    MissingDependencyError,
    Problem,
    SpecError,
)
from orchestrator.spec.compose import ComposedSpec, compose
from orchestrator.spec.files import list_options, read_option
from orchestrator.spec.rules import recipe_problems

log = logging.getLogger(__name__)

Step = Callable[[str], None]
# builds the candidates elsewhere (a Ray cluster, orchestrator/build/distributed.py):
# (result, candidate specs, scratch folder, on_step, record) -> result.candidates filled
CandidateBuilder = Callable[["SelectionResult", list[ComposedSpec], Path, Step | None, bool], None]

# the metric on the plot's parity axis, per task
PARITY_METRIC = {
    "classification": "agreement",
    "segmentation": "dice_vs_reference",
    "text-generation": "teacher_forced_agreement",
    "speech-recognition": "teacher_forced_agreement",
}
# the plot's error axis: generative builds compare the first decoding step's logits
ERROR_METRIC = {
    "text-generation": "step1_max_abs_error",
    "speech-recognition": "step1_max_abs_error",
}


@dataclass
class Candidate:
    """One candidate recipe's outcome."""

    recipe: str
    status: str  # passed | failed (a gate) | error (the build broke) | skipped (runtime missing)
    # | n/a (the target cannot run this recipe; never built)
    metrics: dict[str, float] = field(default_factory=dict)
    failed_gates: list[str] = field(default_factory=list)
    message: str = ""  # why it errored or was skipped
    run_id: str | None = None  # its MLflow run (nested under the parent)
    artifact_dir: Path | None = None
    seconds: float = 0.0
    build: BuildResult | None = None  # the passing build

    def summary(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "status": self.status,
            "failed_gates": self.failed_gates,
            "message": self.message,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class SelectionResult:
    """The candidates, the winner, and where the evidence went."""

    deployment: str
    target: str
    select_by: str
    parity_metric: str
    candidates: list[Candidate]
    winner: Candidate | None
    parent_run_id: str | None = None
    model_version: str | None = None
    artifact_dir: Path | None = None
    report_files: list[Path] = field(default_factory=list)
    measured_on: dict[str, str] | None = None  # the lab device (device, fleet); None: here
    error_metric: str = "max_abs_error"  # the plot's error axis (ERROR_METRIC)

    @property
    def passed(self) -> bool:
        return self.winner is not None

    def winner_build(self) -> BuildResult:
        """The winner's build, pointing at the installed artifact and registered version."""
        assert self.winner is not None and self.winner.build is not None
        b = self.winner.build
        return BuildResult(
            b.deployment,
            self.artifact_dir or b.artifact_dir,
            b.validation,
            b.run_id,
            self.model_version,
            b.seconds,
            b.steps,
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per candidate, in the order they were built."""
        rows = []
        for c in self.candidates:
            m = c.metrics
            rows.append(
                {
                    "recipe": c.recipe,
                    "status": "WINNER" if c is self.winner else c.status,
                    self.select_by: m.get(self.select_by),
                    "p95_ms": m.get("p95_ms"),
                    self.parity_metric: m.get(self.parity_metric),
                    "max_abs_error": m.get("max_abs_error"),
                    "size_mb": m.get("size_mb"),
                    # the precision the runtime ran (OpenVINO: bf16 asked, f32 without bf16)
                    "precision": (
                        c.build.validation.details.get("execution_precision") or ""
                        if c.build is not None
                        else ""
                    ),
                    **(
                        {
                            "measured_on": self.measured_on["device"],
                            f"build_machine.{self.select_by}": m.get(
                                f"build_machine.{self.select_by}"
                            ),
                        }
                        if self.measured_on
                        else {}
                    ),
                    "why_not": "; ".join(c.failed_gates) or c.message,
                    "run_id": c.run_id or "",
                }
            )
        return rows

    def markdown(self) -> str:
        """The comparison table as Markdown."""
        rows = self.rows()
        columns = list(rows[0]) if rows else []
        where = (
            f"lab device {self.measured_on['device']} of fleet {self.measured_on['fleet']}"
            if self.measured_on
            else "the build machine"
        )
        lines = [
            f"# {self.deployment}: recipe selection on {self.target} (by {self.select_by})",
            "",
            f"Gated and ranked by the figures measured on {where}.",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
        lines.append("")
        if self.winner is not None:
            lines.append(
                f"Winner: `{self.winner.recipe}`, the lowest {self.select_by} on {where} among "
                "the candidates that pass every gate."
            )
        else:
            lines.append("No candidate passed every gate; nothing was installed.")
        notes = {
            c.build.validation.details["runtime_validation"].get("reason", "")
            for c in self.candidates
            if c.build is not None and "runtime_validation" in c.build.validation.details
        }
        for note in sorted(n for n in notes if n):
            lines.append(f"\nMeasured on the build machine: {note}")
        return "\n".join(lines) + "\n"

    def summary(self, width: int = 100) -> str:
        """The comparison for a terminal: plain columns within ``width`` characters (the
        full table is comparison.md); a failed candidate's first reason, shortened."""
        where = f"lab device {self.measured_on['device']}" if self.measured_on else "build machine"
        head = (
            f"{self.deployment}: {len(self.candidates)} candidate(s) on {self.target}, "
            f"ranked by {self.select_by} measured on the {where}"
        )
        columns = ("recipe", "status", self.select_by, "p95_ms", self.parity_metric, "size_mb")
        rows = [[_cell(r.get(c)) for c in columns] for r in self.rows()]
        widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        lines = [head[:width], "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
        used = sum(widths) + 2 * len(widths)
        for row, data in zip(rows, self.rows(), strict=True):
            line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
            why = str(data.get("why_not") or "").split("; ")[0]
            room = width - used - 2
            if why and room > 12:
                line += "  " + (why if len(why) <= room else why[: room - 3] + "...")
            lines.append(line.rstrip()[:width])
        if self.winner is not None:
            lines.append(f"winner: {self.winner.recipe}")
        else:
            lines.append("No candidate passed every gate; nothing was installed.")
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


class NoCandidatePassedError(GateFailure):
    """recipe=auto built every candidate and none passed every gate (exit code 4)."""

    def __init__(self, result: SelectionResult) -> None:
        failed = []
        for c in result.candidates:
            if c.status == "failed":
                failed += [f"{c.recipe}: {g}" for g in c.failed_gates]
            elif c.status in ("error", "skipped"):
                failed.append(f"{c.recipe}: {c.status}: {c.message}")
        super().__init__(result.deployment, failed, result.parent_run_id)
        self.result = result


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _more(n: int) -> str:
    """How many further problems a one-line reason leaves out."""
    return f" (+{n} more problem{'s' if n > 1 else ''})" if n > 0 else ""


def candidate_specs(spec: ComposedSpec) -> tuple[list[ComposedSpec], list[Candidate]]:
    """The composed spec of every candidate recipe, and the recipes that cannot run here.

    Candidates are ``recipe.candidates`` or, when that is empty, every recipe under
    ``conf/recipe/`` except selecting ones; a recipe whose spec does not validate
    for this target (a pass for another runtime, a format or precision the target
    does not take) is skipped with the reason.
    """
    recipe = spec.config.recipe
    names = list(recipe.candidates) or list_options(spec.root, "recipe")
    base = [
        o
        for o in spec.overrides
        if _override_key(o) != "recipe" and not _override_key(o).startswith("recipe.")
    ]
    usable: list[ComposedSpec] = []
    skipped: list[Candidate] = []
    model_file = spec.files.get("model", "the model spec")
    for name in names:
        if name == spec.choices.get("recipe"):
            continue
        # the cheap check first: the same pass rules compose runs, without composing
        data = read_option(spec.root, "recipe", name)
        if data is not None:
            if data.get("select") is True:
                continue
            problems = recipe_problems(spec.data, data, model_file)
            if problems:
                more = _more(len(problems) - 1)
                skipped.append(Candidate(name, "n/a", message=problems[0] + more))
                continue
        try:
            # a deployment file that narrows recipe.candidates narrows them for the selecting
            # recipe; the candidate recipe itself runs passes and selects nothing
            candidate = compose([*base, f"recipe={name}", "recipe.candidates=[]"], spec.root)
            candidate.overrides = [*base, f"recipe={name}"]
        except SpecError as exc:
            reason = exc.problems[0].message if exc.problems else str(exc)
            if len(exc.problems) > 1:
                reason += _more(len(exc.problems) - 1)
            skipped.append(Candidate(name, "n/a", message=reason))
            continue
        if candidate.config.recipe.select:
            continue
        usable.append(candidate)
    return usable, skipped


def run_selection(
    spec: ComposedSpec,
    on_step: Step | None = None,
    record: bool = True,
    report_dir: Path | None = None,
    measurer: DeviceMeasurer | None = None,
    build_candidates: CandidateBuilder | None = None,
) -> SelectionResult:
    """Build every candidate of a selecting recipe and install the fastest passing one.

    With ``measurer`` (``deployment.validate_on.where: lab``) every candidate is measured
    on the lab device too, and the device's figures gate and rank them. With
    ``build_candidates`` the candidates are built by it (on a Ray cluster) instead of one
    after another here; the parent run, the choice and the install stay here.

    Raises :class:`NoCandidatePassedError` when no candidate passes every gate, and
    SpecError when no recipe can run on the target at all.
    """
    cfg = spec.config
    name = cfg.deployment.name
    check_source_files(cfg.model, spec.root, spec.files, spec.overrides)
    usable, skipped = candidate_specs(spec)
    if not usable:
        raise SpecError(
            [
                Problem(
                    spec.files.get("recipe", "command line"),
                    "recipe.candidates",
                    f"no candidate recipe runs on target '{cfg.target.name}': "
                    + "; ".join(f"{c.recipe}: {c.message}" for c in skipped),
                )
            ]
        )
    select_by = cfg.recipe.select_by
    result = SelectionResult(
        name,
        cfg.target.name,
        select_by,
        PARITY_METRIC.get(cfg.model.task, "max_abs_error"),
        [],
        None,
        error_metric=ERROR_METRIC.get(cfg.model.task, "max_abs_error"),
    )
    out_root = artifacts_root(spec.root)
    out_root.mkdir(parents=True, exist_ok=True)
    recover(out_root)
    drop_dead_folders(out_root / ".auto")
    scratch = out_root / ".auto" / f"{name}.{uuid.uuid4().hex[:12]}"
    scratch.mkdir(parents=True)
    (scratch / ".pid").write_text(str(os.getpid()))

    def build(
        result: SelectionResult,
        usable: list[ComposedSpec],
        scratch: Path,
        on_step: Step | None,
        record: bool,
    ) -> None:
        if build_candidates is not None:
            build_candidates(result, usable, scratch, on_step, record)
        else:
            _build_candidates(result, usable, scratch, on_step, record, measurer)

    tracker = None
    if record:
        from registry.tracking import open_tracker, prepare

        prepare(spec.root)
        tracker = open_tracker(spec.root)
    try:
        if tracker is not None:
            with tracker.run(
                name, f"{name}-auto", run_tags(spec, "running", selection="parent")
            ) as parent:
                result.parent_run_id = parent.info.run_id
                build(result, usable, scratch, on_step, record)
                result.candidates += skipped
                _choose(result)
                result.report_files = _write_reports(result, scratch / "selection")
                _record_parent(tracker, result, spec)
        else:
            build(result, usable, scratch, on_step, record)
            result.candidates += skipped
            _choose(result)
            result.report_files = _write_reports(result, scratch / "selection")
        if result.winner is None:
            failed_home = out_root / ".failed" / f"{name}.auto"
            failed_home.parent.mkdir(parents=True, exist_ok=True)
            (scratch / ".pid").unlink(missing_ok=True)
            install_dir(scratch, failed_home)
            result.report_files = [failed_home / "selection" / p.name for p in result.report_files]
            raise NoCandidatePassedError(result)
        _install_winner(result, tracker, out_root, report_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _announce(result: SelectionResult, on_step: Step | None) -> None:
    """The result of the candidate just built, as soon as it is known."""
    if on_step is None:
        return
    c = result.candidates[-1]
    m = c.metrics
    figures = [
        f"{name} {_cell(m.get(name))}"
        for name in (result.select_by, result.parity_metric)
        if m.get(name) is not None
    ]
    why = "; ".join(c.failed_gates) or c.message or ""
    text = f"  {c.recipe}: {c.status.upper()} in {c.seconds:.1f}s"
    text += (", " + ", ".join(figures)) if figures else ""
    text += f" ({why})" if why and c.status != "passed" else ""
    on_step(text)


def _build_candidates(
    result: SelectionResult,
    usable: list[ComposedSpec],
    scratch: Path,
    on_step: Step | None,
    record: bool,
    measurer: DeviceMeasurer | None = None,
) -> None:
    if measurer is not None:
        result.measured_on = dict(measurer.where)
    # every candidate starts from the same ONNX export of the same model spec
    export = ExportCache(scratch / ".export")
    for i, candidate in enumerate(usable, start=1):
        recipe = candidate.choices["recipe"]
        if on_step:
            on_step(f"candidate {i}/{len(usable)}: {recipe}")

        def step(text: str, recipe: str = recipe) -> None:
            if on_step:
                on_step(f"  {recipe}: {text}")

        home = scratch / recipe
        t0 = time.perf_counter()
        try:
            build = run_build(
                candidate,
                on_step=step,
                record=record,
                artifacts_dir=home,
                parent_run=result.parent_run_id,
                register=False,
                measurer=measurer,
                export_cache=export,
            )
        except GateFailure as exc:
            failed_dir = home / ".failed" / result.deployment
            metrics = json.loads((failed_dir / "metrics.json").read_text())
            result.candidates.append(
                Candidate(
                    recipe,
                    "failed",
                    metrics,
                    list(exc.failed),
                    run_id=exc.run_id,
                    artifact_dir=failed_dir,
                    seconds=time.perf_counter() - t0,
                )
            )
            _announce(result, on_step)
            continue
        except (BuildError, MissingDependencyError) as exc:
            status = "skipped" if isinstance(exc, MissingDependencyError) else "error"
            first = str(exc).splitlines()[0].removeprefix("error: ")
            log.warning("candidate %s: %s", recipe, first)
            result.candidates.append(
                Candidate(recipe, status, message=first, seconds=time.perf_counter() - t0)
            )
            _announce(result, on_step)
            continue
        result.candidates.append(
            Candidate(
                recipe,
                "passed",
                dict(build.validation.metrics),
                run_id=build.run_id,
                artifact_dir=build.artifact_dir,
                seconds=time.perf_counter() - t0,
                build=build,
            )
        )
        _announce(result, on_step)
    shutil.rmtree(export.folder, ignore_errors=True)


def _choose(result: SelectionResult) -> None:
    """The passing candidate with the lowest ``select_by`` latency (ties: the earlier one)."""
    passing = [c for c in result.candidates if c.status == "passed"]
    result.winner = min(passing, key=lambda c: c.metrics[result.select_by], default=None)


def _write_reports(result: SelectionResult, folder: Path) -> list[Path]:
    """comparison.csv, comparison.md and latency_vs_parity.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    csv_path = folder / "comparison.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = folder / "comparison.md"
    md_path.write_text(result.markdown())
    png_path = folder / "latency_vs_parity.png"
    _plot(result, png_path)
    return [csv_path, md_path, png_path]


def _plot(result: SelectionResult, path: Path) -> None:
    """Latency against the task's parity metric and against max |error| vs the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    error = result.error_metric
    for ax, metric in zip(axes, (result.parity_metric, error), strict=True):
        for k, c in enumerate(result.candidates):
            x, y = c.metrics.get(result.select_by), c.metrics.get(metric)
            if x is None or y is None:
                continue
            if c is result.winner:
                marker, size, color, label = "*", 220, "#2a9d3a", "winner"
            elif c.status == "passed":
                marker, size, color, label = "o", 60, "#3b75af", "passes every gate"
            else:
                marker, size, color, label = "x", 60, "#c44e52", "fails a gate"
            ax.scatter([x], [y], marker=marker, s=size, color=color, label=label)
            offset = (6, 6 if k % 2 == 0 else -10)  # alternate so close points stay legible
            ax.annotate(c.recipe, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        if unique:
            ax.legend(unique.values(), unique.keys(), loc="best", fontsize=8)
        ax.set_xscale("log")
        if metric == error:
            ax.set_yscale("symlog", linthresh=1e-6)
        ax.set(xlabel=f"{result.select_by} (ms, log scale)", ylabel=f"{metric} vs reference")
    fig.suptitle(f"{result.deployment} on {result.target}: latency vs parity per candidate recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _record_parent(tracker: Any, result: SelectionResult, spec: ComposedSpec) -> None:
    run_id = result.parent_run_id
    assert run_id is not None
    params = {
        "select_by": result.select_by,
        "candidates": ",".join(c.recipe for c in result.candidates),
        "target": spec.choices["target"],
        "model": spec.choices["model"],
    }
    metrics: dict[str, float] = {
        "candidates_built": float(sum(c.status in ("passed", "failed") for c in result.candidates)),
        "candidates_passed": float(sum(c.status == "passed" for c in result.candidates)),
    }
    if result.winner is not None:
        metrics.update(result.winner.metrics)
    tags = {
        "edgeship.status": "passed" if result.winner else "failed",
        "edgeship.selection.winner": result.winner.recipe if result.winner else "",
        "edgeship.selection.winner_run_id": (result.winner.run_id or "") if result.winner else "",
        "edgeship.validated_on": (result.measured_on or {}).get("device", "build machine"),
    }
    tags["mlflow.note.content"] = _parent_description(result, spec)
    tracker.log_build(run_id, params, metrics, None, tags)
    tracker.log_files(run_id, result.report_files, "selection")


def _parent_description(result: SelectionResult, spec: ComposedSpec) -> str:
    """The selection run's description (Markdown): the winner and every candidate's outcome."""
    name = spec.config.deployment.name
    verdict = (
        f"winner **{result.winner.recipe}** (by {result.select_by})"
        if result.winner
        else "no candidate passed"
    )
    lines = [
        f"**{name}**: `recipe=auto` over {len(result.candidates)} candidate(s); {verdict}",
        "",
        "| candidate | outcome | why |",
        "|---|---|---|",
    ]
    for c in result.candidates:
        why = ", ".join(f"`{g}`" for g in c.failed_gates) or c.message
        lines.append(f"| {c.recipe} | {c.status} | {why.replace('|', '/')} |")
    lines += ["", "The full comparison: `selection/comparison.md` among the run's artifacts."]
    return "\n".join(lines)


def _install_winner(
    result: SelectionResult, tracker: Any, out_root: Path, report_dir: Path | None
) -> None:
    winner = result.winner
    assert winner is not None and winner.artifact_dir is not None
    info_path = winner.artifact_dir / "build.json"
    info = json.loads(info_path.read_text())
    if tracker is not None and winner.run_id is not None:
        # the registered version names the source it was built from, as a plain build's does
        from registry.mlflow_model import artifact_digest

        lineage = source_tags(info["source"]) if info.get("source") else {}
        description = tracker.client.get_run(winner.run_id).data.tags.get("mlflow.note.content")
        result.model_version, _ = tracker.register_artifact(
            result.deployment,
            winner.run_id,
            artifact_digest(winner.artifact_dir),
            lineage,
            description,
        )
        tracker.set_tags(
            winner.run_id,
            {"edgeship.model_version": result.model_version, "edgeship.selection": "winner"},
        )
        if result.parent_run_id:
            tracker.set_tags(result.parent_run_id, {"edgeship.model_version": result.model_version})
    info["mlflow"]["model_version"] = result.model_version
    info["selection"] = {
        "recipe": "auto",
        "select_by": result.select_by,
        "measured_on": result.measured_on or "build machine",
        "winner": winner.recipe,
        "parent_run_id": result.parent_run_id,
        "candidates": [c.summary() for c in result.candidates],
    }
    write_json(info_path, info)
    # the comparison travels with the artifact: how it was chosen, and over what
    shutil.copytree(result.report_files[0].parent, winner.artifact_dir / "selection")
    dest = out_root / result.deployment
    install_dir(winner.artifact_dir, dest)
    result.artifact_dir = dest
    result.report_files = [dest / "selection" / p.name for p in result.report_files]
    if report_dir is not None:
        copy_reports(dest, report_dir)
