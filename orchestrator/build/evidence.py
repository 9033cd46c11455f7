"""Evidence a reviewer would rather look at than read: plots and the model card.

Written into the artifact folder (and so into its MLflow run): ``plots/*.png``,
plot data as JSON for ``dvc plots`` (``plots/*.json``), and ``model_card.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build.report import render
from orchestrator.build.validate import Validation
from orchestrator.spec.compose import ComposedSpec


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_rows(result: Validation) -> list[dict[str, Any]]:
    """Every timed run of every measured batch size: ``{run, batch, latency_ms}``, ``run``
    counting on across the batch sizes in the order they were measured."""
    samples = result.details.get("latency_samples_ms") or {}
    rows: list[dict[str, Any]] = []
    for entry in result.details.get("latency_by_batch", []):
        for t in samples.get(str(entry["batch"]), []):
            rows.append({"run": len(rows), "batch": int(entry["batch"]), "latency_ms": t})
    return rows


def _gates_on(result: Validation, *metrics: str) -> list[Any]:
    """The deployment's gates on any of ``metrics`` (drawn on the plot of that metric)."""
    return [g.gate for g in result.gates if g.gate.metric in metrics]


def _latency_plot(folder: Path, name: str, result: Validation) -> str:
    """One histogram per measured batch size, with its p50/p95/p99 and the latency gates on
    that batch size (red), and the data as JSON."""
    plt = _pyplot()
    rows = latency_rows(result)
    by_batch = result.details.get("latency_by_batch", [])
    fig, axes = plt.subplots(
        max(1, len(by_batch)), 1, figsize=(6, 1.2 + 2.3 * max(1, len(by_batch))), squeeze=False
    )
    for ax, entry in zip(axes[:, 0], by_batch, strict=False):
        batch = int(entry["batch"])
        times = [r["latency_ms"] for r in rows if r["batch"] == batch]
        ax.hist(times, bins=min(30, max(5, len(times) // 2)), color="#3b75af")
        for q, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
            ax.axvline(entry[q], color="k", linestyle=style, label=f"{q[:-3]} {entry[q]:.2f} ms")
        plain = ("p50_ms", "p95_ms", "p99_ms", "mean_ms") if entry is by_batch[0] else ()
        suffixed = tuple(f"{q}.batch{batch}" for q in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"))
        for gate in _gates_on(result, *plain, *suffixed):
            ax.axvline(gate.threshold, color="#c44e52", linewidth=2, label=f"gate: {gate}")
        ax.set(xlabel="latency (ms)", ylabel="runs", title=f"{name}: latency, batch {batch}")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(folder / "latency_histogram.png", dpi=100)
    plt.close(fig)
    (folder / "latency.json").write_text(json.dumps(rows))
    return "latency_histogram.png"


def write_plots(
    folder: Path,
    spec: ComposedSpec,
    result: Validation,
    reference: list[list[np.ndarray]],
) -> list[str]:
    """Latency histograms (one per batch size), parity scatter, and confusion matrix or
    per-class Dice."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    name = spec.config.deployment.name
    written = []

    written.append(_latency_plot(folder, name, result))

    out = np.concatenate([o[0] for o in result.outputs]).ravel()
    ref = np.concatenate([r[0] for r in reference]).ravel()
    if out.size > 20000:
        idx = np.random.default_rng(0).choice(out.size, 20000, replace=False)
        out, ref = out[idx], ref[idx]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(ref, out, s=2, alpha=0.4, color="#c44e52")
    lo, hi = float(min(ref.min(), out.min())), float(max(ref.max(), out.max()))
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1)
    ax.set(
        xlabel="reference output (PyTorch)",
        ylabel="artifact output",
        title=f"{name}: parity, max |error| {result.metrics['max_abs_error']:.3g}",
    )
    fig.tight_layout()
    fig.savefig(folder / "parity_scatter.png", dpi=100)
    plt.close(fig)
    written.append("parity_scatter.png")

    confusion = result.details.get("confusion_matrix")
    if confusion:
        labels = confusion["labels"]
        matrix = np.array(confusion["rows_true_cols_pred"])
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set(xlabel="artifact prediction", ylabel="true label", title=f"{name}: confusion")
        fig.tight_layout()
        fig.savefig(folder / "confusion_matrix.png", dpi=100)
        plt.close(fig)
        written.append("confusion_matrix.png")
        rows = [
            {"actual": labels[i], "predicted": labels[j]}
            for i, row in enumerate(matrix)
            for j, count in enumerate(row)
            for _ in range(int(count))
        ]
        (folder / "confusion.json").write_text(json.dumps(rows))
    if spec.config.model.task == "segmentation":
        classes = list(spec.config.model.labels)[1:]
        vs_ref = [result.metrics[f"dice_vs_reference.{c}"] for c in classes]
        vs_lab = [result.metrics.get(f"dice_vs_labels.{c}", float("nan")) for c in classes]
        x = np.arange(len(classes))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(x - 0.2, vs_ref, 0.4, label="vs reference output")
        ax.bar(x + 0.2, vs_lab, 0.4, label="vs labels")
        ax.set_xticks(x, classes, rotation=30, ha="right")
        gates = _gates_on(result, "dice_vs_reference", "min_dice_vs_reference", "dice_vs_labels")
        for gate in gates:
            ax.axhline(gate.threshold, color="#c44e52", linewidth=1.5, label=f"gate: {gate}")
        # the gates speak of 0.99-level differences: the axis starts just below the lowest
        # bar or threshold instead of at 0, so those differences are visible
        shown = [v for v in [*vs_ref, *vs_lab, *(g.threshold for g in gates)] if v == v]
        low = max(0.0, min(shown, default=0.0) - 0.02)
        ax.set(ylim=(low, 1.002), ylabel="Dice", title=f"{name}: Dice per class")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(folder / "dice_per_class.png", dpi=100)
        plt.close(fig)
        written.append("dice_per_class.png")
        (folder / "dice.json").write_text(
            json.dumps(
                [
                    {"class": c, "dice_vs_reference": r, "dice_vs_labels": lab}
                    for c, r, lab in zip(classes, vs_ref, vs_lab, strict=True)
                ]
            )
        )
    return written


def render_model_card(
    spec: ComposedSpec,
    runtime: dict[str, Any],
    result: Validation,
    data: dict[str, Any],
    provenance: dict[str, Any],
) -> str:
    return render("model_card.md.j2", spec, runtime, result, data, provenance=provenance)
