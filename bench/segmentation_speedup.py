"""Benchmark: the full-size TotalSegmentator 3-D U-Net on a whole CT volume, PyTorch eager FP32
vs the artifacts edgeship picks with recipe=auto for intel_nuc and for server.

    .venv/bin/python bench/segmentation_speedup.py [--volume 160 192 192] [--threads 2]

What it does, in one run:

1. Sets up a bench-only edgeship project in ``bench/results/segmentation_speedup/project``:
   the repository's ``conf/`` plus a model spec for the full-size network (nnU-Net's
   plain 3-D U-Net in TotalSegmentator's 3d_fullres configuration: 32..320 features,
   6 stages, 128^3 patch; 6 output classes for the phantoms' organs) and two
   deployments using ``recipe: auto``. The repository's own ``conf/`` is untouched,
   so CI and ``dvc repro`` never build or train this network.
2. Weights: the full-size network cannot be trained to convergence on this
   machine. It is trained briefly (``--train-steps`` Adam steps under bf16 autocast,
   FP32 master weights, the loss and class weights of ``examples/ct_seg/train.py``)
   on random ``--train-patch`` crops of full-size training phantoms (a pool of
   ``--train-volumes`` volumes of the benchmark's shape, so organs have the size in
   voxels they have at inference; crops centred on a foreground voxel half of the
   time, as nnU-Net oversamples foreground). 500 steps take about 40 minutes on 2
   cores and reach a Dice of about 0.24 against the labels: the outputs are
   structured, far from a converged model's, and so much less sure of themselves,
   which is what makes INT8 parity hard for this network (see the README). The
   weights are reused by later runs (``--retrain``). The benchmark's accuracy
   measure is Dice against the PyTorch reference's own segmentation.
3. ``recipe=auto`` for each target: every candidate recipe is built, validated on
   held-out 128^3 windows of full-size phantoms (evaluation and calibration seeds
   disjoint from training and from the benchmark volume) against the deployment's
   gates and timed per window; the fastest passing artifact wins (see
   orchestrator/build/select.py).
4. A whole synthetic CT volume (``examples/ct_seg/phantoms.make_volume``) is
   segmented end to end by each backend with the same code: HU normalisation,
   nnU-Net sliding-window inference (128^3 windows, 50 % overlap, Gaussian
   weighting; ``examples/ct_seg/data.sliding_window_predict``) and argmax. Every
   backend runs with the same number of threads in this one process. The table
   reports the median wall time, the speed-up over PyTorch and Dice against the
   PyTorch segmentation.

The default candidate lists keep the run within a 2-core machine's time and memory:
ONNX Runtime's dynamic INT8 runs 3-D convolutions about 5x slower than its FP32
(measured on the small configuration), NNCF's accuracy control on the task metric
(``int8_nncf_accuracy``) means little for a barely trained network (its parity
variant ``int8_nncf_parity`` is tried instead), and ONNX Runtime's static-INT8 calibration holds
every activation of every calibration sample in memory (about 4.5 GB per 128^3
sample). ``--nuc-candidates`` / ``--server-candidates`` with no names try every
recipe the target can run.

Results: ``bench/results/segmentation_speedup/results.json`` and the printed table.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "segmentation_speedup"
PROJECT = OUT / "project"
WEIGHTS = OUT / "ct_seg_full.pt"
PATCH = 128
CLASSES = 6
VOLUME_SEED = 4242  # the benchmark volume; below the training seeds
EVAL_SEED = 1000  # examples/ct_seg/data.py's evaluation range
CALIBRATION_SEED = 500  # and its calibration range

log = logging.getLogger("segmentation_speedup")

MODEL_YAML = """\
# Bench only: the full-size TotalSegmentator-architecture 3-D U-Net (see
# bench/segmentation_speedup.py). Weights are trained briefly by the benchmark.
name: ct_seg_full
task: segmentation
description: Full-size nnU-Net 3-D U-Net (TotalSegmentator 3d_fullres config), 128^3 patch
source:
  kind: pytorch
  factory:
    fn: examples.ct_seg.unet:build
    args: {{in_channels: 1, num_classes: {classes}, preset: totalsegmentator}}
  weights: {weights}
inputs:
  - {{name: ct, shape: [1, 1, {p}, {p}, {p}], dtype: float32}}
outputs:
  - {{name: logits, shape: [1, {classes}, {p}, {p}, {p}], dtype: float32}}
labels: [background, liver, spleen, kidney_left, kidney_right, spine]
preprocessing:
  fn: examples.ct_seg.phantoms:preprocessing
data:
  eval:
    fn: bench.segmentation_speedup:volume_windows
    args: {{samples: {eval_samples}, seed: {eval_seed}, shape: {shape}}}
  calibration:
    fn: bench.segmentation_speedup:volume_windows
    args: {{samples: {calibration_samples}, seed: {calibration_seed}, shape: {shape}}}
"""

DEPLOYMENT_YAML = """\
# @package _global_
# Bench only: the full-size segmentation net on {target}, recipe chosen by measurement.
defaults:
  - override /model: ct_seg_full
  - override /recipe: auto
  - override /target: {target}
  - _self_

deployment:
  name: {name}
  description: Full-size CT segmentation on {target} (bench only)
  gates:
    - dice_vs_reference >= 0.98
    - min_dice_vs_reference >= 0.95
  validation:
    latency_warmup: 1
    latency_runs: {runs}
"""


def write_project(args: argparse.Namespace) -> None:
    """The bench-only project: the repository's conf/ plus the full-size model and deployments."""
    conf = PROJECT / "conf"
    if conf.exists():
        shutil.rmtree(conf)
    shutil.copytree(ROOT / "conf", conf)
    (conf / "model" / "ct_seg_full.yaml").write_text(
        MODEL_YAML.format(
            classes=CLASSES,
            weights=WEIGHTS,
            p=PATCH,
            eval_samples=args.eval_samples,
            calibration_samples=args.calibration_samples,
            eval_seed=EVAL_SEED,
            calibration_seed=CALIBRATION_SEED,
            shape=list(args.volume),
        )
    )
    for target in ("intel_nuc", "server"):
        name = f"ct_seg_full_{target}"
        (conf / "deployment" / f"{name}.yaml").write_text(
            DEPLOYMENT_YAML.format(target=target, name=name, runs=args.latency_runs)
        )


@functools.cache
def _volume(seed: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    from examples.ct_seg.phantoms import make_volume, normalize

    hu, labels = make_volume(seed, shape)
    return normalize(hu), labels


def _window(
    volume: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``^3 crop, centred on a random foreground voxel half of the time."""
    if rng.random() < 0.5:
        classes = [c for c in range(1, CLASSES) if np.any(labels == c)]
        points = np.argwhere(labels == rng.choice(classes))
        center = points[rng.integers(len(points))]
    else:
        center = np.array([rng.integers(n) for n in labels.shape])
    lo = [
        int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(center, labels.shape, strict=True)
    ]
    sl = tuple(slice(a, a + size) for a in lo)
    return volume[sl], labels[sl]


def volume_windows(
    samples: int, seed: int, shape: list[int], size: int = PATCH
) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` windows of full-size phantoms (seeds ``seed..``): ``[N,1,s,s,s]``, ``[N,s,s,s]``.

    The evaluation and calibration data of the bench model (see MODEL_YAML).
    """
    xs, ys = [], []
    for i in range(samples):
        volume, labels = _volume(seed + i, (shape[0], shape[1], shape[2]))
        x, y = _window(volume, labels, size, np.random.default_rng(seed + i))
        xs.append(x[None])
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)


def train_full_size(args: argparse.Namespace) -> dict[str, Any]:
    """Adam on random crops of full-size training phantoms; writes WEIGHTS atomically."""
    import torch

    from examples._io import deterministic, save_state_dict_atomic
    from examples.ct_seg.data import train_seeds
    from examples.ct_seg.train import CE_CLASS_WEIGHTS, dice_ce_loss
    from examples.ct_seg.unet import build

    shape = (args.volume[0], args.volume[1], args.volume[2])
    t0 = time.perf_counter()
    pool = [_volume(int(s), shape) for s in train_seeds(0, args.train_volumes)]
    rng = np.random.default_rng(0)
    losses = []
    with deterministic(0, args.threads):
        net = build(in_channels=1, num_classes=CLASSES, preset="totalsegmentator")
        opt = torch.optim.Adam(net.parameters(), lr=args.train_lr)
        steps = args.train_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, steps) / max(steps, 1)))
        )
        weights = torch.tensor(CE_CLASS_WEIGHTS)
        net.train()
        for step in range(steps):
            batch = [
                _window(*pool[rng.integers(len(pool))], args.train_patch, rng)
                for _ in range(args.train_batch)
            ]
            x = torch.from_numpy(np.stack([b[0][None] for b in batch]).astype(np.float32))
            y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
            # bf16 autocast runs the convolutions on the CPU's bf16 units (AMX/AVX-512 BF16)
            # with FP32 master weights; the loss is computed in FP32
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.train_bf16):
                logits = net(x)
            loss = dice_ce_loss(logits.float(), y, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 10 == 0:
                log.warning("training step %d/%d: loss %.3f", step + 1, steps, losses[-1])
        net.eval()
        save_state_dict_atomic(net.state_dict(), WEIGHTS)
    return {
        "steps": args.train_steps,
        "crop": args.train_patch,
        "batch": args.train_batch,
        "volumes": args.train_volumes,
        "volume_shape": list(shape),
        "optimizer": f"Adam lr {args.train_lr} cosine",
        "precision": "bf16 autocast" if args.train_bf16 else "fp32",
        "loss_first": losses[0] if losses else None,
        "loss_last_10_mean": float(np.mean(losses[-10:])) if losses else None,
        "train_seconds": time.perf_counter() - t0,
    }


def ensure_weights(args: argparse.Namespace) -> dict[str, Any]:
    """Train the full-size network briefly unless weights from an earlier run exist."""
    sidecar = WEIGHTS.with_name(WEIGHTS.name + ".json")
    if WEIGHTS.exists() and sidecar.exists() and not args.retrain:
        info: dict[str, Any] = json.loads(sidecar.read_text())
        return info
    log.warning(
        "training the full-size network: %d steps on %d^3 crops (this takes a while)",
        args.train_steps,
        args.train_patch,
    )
    info = train_full_size(args)
    sidecar.write_text(json.dumps(info, indent=2, default=str))
    return info


@dataclass
class Selected:
    """What recipe=auto installed for one target (or that nothing passed)."""

    target: str
    recipe: str | None  # the winner; None when no candidate passed
    artifact_dir: Path | None
    table: str  # the comparison table (Markdown)
    rows: list[dict[str, Any]]


def select(target: str, args: argparse.Namespace) -> Selected:
    """recipe=auto for one target, or (``--reuse-selection``) what an earlier run installed."""
    name = f"ct_seg_full_{target}"
    art = PROJECT / "artifacts" / name
    if args.reuse_selection and (art / "selection" / "comparison.md").is_file():
        info = json.loads((art / "build.json").read_text())
        with (art / "selection" / "comparison.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        table = (art / "selection" / "comparison.md").read_text()
        return Selected(target, info["selection"]["winner"], art, table, rows)

    from orchestrator.build.select import NoCandidatePassedError, run_selection
    from orchestrator.spec.compose import compose

    candidates = args.nuc_candidates if target == "intel_nuc" else args.server_candidates
    overrides = [f"deployment={name}", f"target.threads={args.threads}"]
    if candidates:
        overrides.append(f"recipe.candidates=[{','.join(candidates)}]")
    spec = compose(overrides, PROJECT)

    def step(text: str) -> None:
        log.warning("[%s] %s", name, text)

    try:
        result = run_selection(spec, on_step=step, record=not args.no_record)
    except NoCandidatePassedError as exc:
        log.warning("%s: no candidate passed:\n%s", name, exc.result.markdown())
        return Selected(target, None, None, exc.result.markdown(), exc.result.rows())
    assert result.winner is not None
    return Selected(
        target, result.winner.recipe, result.artifact_dir, result.markdown(), result.rows()
    )


def load_winner(selected: Selected, threads: int) -> Any:
    """A session of the installed winner artifact, loaded by its target."""
    from orchestrator.core.model_file import ModelFile
    from orchestrator.core.schema import TargetConfig
    from targets.base import get_target

    art = selected.artifact_dir
    assert art is not None
    runtime = json.loads((art / "runtime.json").read_text())
    spec_target = json.loads(json.dumps(runtime["target"]))
    model = ModelFile(
        art / runtime["model"]["file"], runtime["model"]["format"], runtime["model"]["precision"]
    )
    config = TargetConfig(
        name=spec_target["name"],
        family=spec_target["family"],
        device=spec_target["device"],
        threads=threads,
    )
    return get_target(config).load(model)


def segment(
    hu: np.ndarray, predict: Any, runs: int, overlap: float
) -> tuple[np.ndarray, list[float], list[float]]:
    """Normalise -> sliding window -> argmax, ``runs`` times.

    Returns the labels, the wall time of each run, and the time of each window's
    inference (the part the backends differ in).
    """
    from examples.ct_seg.data import sliding_window_predict
    from examples.ct_seg.phantoms import normalize

    window_times: list[float] = []

    def timed(tile: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.asarray(predict(tile))
        window_times.append(time.perf_counter() - t0)
        return out

    times = []
    labels = np.zeros(0)
    for _ in range(runs):
        t0 = time.perf_counter()
        labels = sliding_window_predict(normalize(hu)[None], (PATCH,) * 3, timed, overlap)
        times.append(time.perf_counter() - t0)
    return labels, times, window_times


def dice_summary(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    from examples.ct_seg.data import dice_per_class

    scores = dice_per_class(pred, ref, CLASSES)
    foreground = [scores[c] for c in range(1, CLASSES)]
    return float(np.mean(foreground)), float(min(foreground))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=int, nargs=3, default=[160, 192, 192], metavar="N")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="whole-volume runs per backend")
    parser.add_argument("--latency-runs", type=int, default=5, help="timed windows per build")
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--calibration-samples", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--train-lr", type=float, default=1e-2)
    parser.add_argument(
        "--train-bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train under bf16 autocast (about 2x faster on CPUs with AMX or AVX-512 BF16)",
    )
    parser.add_argument("--train-patch", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-volumes", type=int, default=6)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument(
        "--reuse-selection",
        action="store_true",
        help="time the artifacts an earlier run's recipe=auto installed instead of rebuilding",
    )
    parser.add_argument("--no-record", action="store_true", help="do not write to MLflow")
    parser.add_argument(
        "--nuc-candidates",
        nargs="*",
        default=["ov_fp32", "ov_fp16", "int8_nncf", "int8_nncf_parity"],
        help="recipes recipe=auto tries on intel_nuc (none given: all it can run)",
    )
    parser.add_argument(
        "--server-candidates",
        nargs="*",
        default=["ort_fp32", "ort_int8_static"],
        help="recipes recipe=auto tries on server (none given: all it can run)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    OUT.mkdir(parents=True, exist_ok=True)
    write_project(args)
    os.environ["EDGESHIP_ROOT"] = str(PROJECT)
    os.environ["EDGESHIP_ARTIFACTS"] = str(PROJECT / "artifacts")

    import torch

    torch.set_num_threads(args.threads)
    train_info = ensure_weights(args)
    torch.set_num_threads(args.threads)

    selections = {target: select(target, args) for target in ("intel_nuc", "server")}

    from examples.ct_seg.phantoms import make_volume
    from examples.ct_seg.unet import build

    shape = tuple(args.volume)
    hu, truth = make_volume(VOLUME_SEED, shape)  # type: ignore[arg-type]
    net = build(in_channels=1, num_classes=CLASSES, preset="totalsegmentator")
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    net.eval()

    def torch_predict(tile: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(tile)).numpy()

    log.warning("PyTorch eager FP32 on the whole volume %s", shape)
    ref_labels, ref_times, ref_windows = segment(hu, torch_predict, args.runs, args.overlap)
    ref_median = statistics.median(ref_times)
    ref_vs_truth = dice_summary(ref_labels, truth)
    rows: list[dict[str, Any]] = [
        {
            "backend": "PyTorch eager FP32 (reference)",
            "target": "-",
            "recipe": "-",
            "median_s": ref_median,
            "times_s": ref_times,
            "window_median_s": statistics.median(ref_windows),
            "speedup": 1.0,
            "dice_vs_reference": 1.0,
            "min_dice_vs_reference": 1.0,
            "dice_vs_labels": ref_vs_truth[0],
        }
    ]
    runtime_names = {"intel_nuc": "OpenVINO", "server": "ONNX Runtime"}
    for target, selected in selections.items():
        if selected.recipe is None:
            rows.append({"backend": f"{target}: no candidate passed", "target": target})
            continue
        session = load_winner(selected, args.threads)
        log.warning("%s winner %s on the whole volume", target, selected.recipe)

        def predict(tile: np.ndarray, session: Any = session) -> np.ndarray:
            return np.asarray(session.run({"ct": tile})[0])

        labels, times, window_times = segment(hu, predict, args.runs, args.overlap)
        median = statistics.median(times)
        vs_ref = dice_summary(labels, ref_labels)
        rows.append(
            {
                "backend": f"{target}: {runtime_names[target]}, recipe=auto",
                "target": target,
                "recipe": selected.recipe,
                "median_s": median,
                "times_s": times,
                "window_median_s": statistics.median(window_times),
                "speedup": ref_median / median,
                "dice_vs_reference": vs_ref[0],
                "min_dice_vs_reference": vs_ref[1],
                "dice_vs_labels": dice_summary(labels, truth)[0],
            }
        )

    from examples.ct_seg.data import compute_steps

    windows = int(np.prod([len(s) for s in compute_steps(shape, (PATCH,) * 3, 1 - args.overlap)]))
    header = (
        f"\nFull-size 3-D U-Net (TotalSegmentator 3d_fullres config, "
        f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters), whole volume "
        f"{shape[0]}x{shape[1]}x{shape[2]}, {windows} windows of {PATCH}^3 at "
        f"{args.overlap:.0%} overlap, {args.threads} threads, median of {args.runs} run(s), "
        f"torch {torch.__version__}\n"
    )
    lines = [header]
    lines.append(
        f"{'backend':<40} {'recipe':<16} {'volume s':>9} {'window s':>9} {'speed-up':>9} "
        f"{'Dice vs ref':>12} {'min class':>10} {'Dice vs labels':>15}"
    )
    for r in rows:
        if "median_s" not in r:
            lines.append(f"{r['backend']:<40}")
            continue
        lines.append(
            f"{r['backend']:<40} {r['recipe']:<16} {r['median_s']:>9.1f} "
            f"{r['window_median_s']:>9.2f} {r['speedup']:>8.1f}x {r['dice_vs_reference']:>12.4f} "
            f"{r['min_dice_vs_reference']:>10.4f} {r['dice_vs_labels']:>15.3f}"
        )
    for selected in selections.values():
        lines.append("")
        lines.append(selected.table)
    text = "\n".join(lines)
    print(text)
    (OUT / "results.txt").write_text(text + "\n")
    (OUT / "results.json").write_text(
        json.dumps(
            {
                "volume": list(shape),
                "windows": windows,
                "threads": args.threads,
                "overlap": args.overlap,
                "training": train_info,
                "rows": rows,
                "selection": {t: r.rows for t, r in selections.items()},
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
