"""Benchmark: PyTorch eager FP32 vs every shipped ct_seg artifact, side by side in one run.

Builds the shipped ct_seg deployments (plus the other recipes their targets can
run, for comparison) with edgeship, then times the PyTorch reference and each
artifact on the same input with the same thread count, and prints the median
latency, the speed-up over PyTorch and Dice vs the reference on the evaluation
phantoms.

    .venv/bin/python bench/ct_seg_artifacts.py [--threads 2] [--runs 20]

Results land in bench/results/ (artifacts and a JSON of the table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (deployment, extra overrides, label)
CANDIDATES = [
    ("ct_seg_server", ["recipe=ort_fp32"], "server / ort_fp32"),
    ("ct_seg_server", ["recipe=ort_int8_static"], "server / ort_int8_static"),
    ("ct_seg_nuc", [], "intel_nuc / int8_nncf (shipped)"),
    ("ct_seg_nuc", ["recipe=ov_fp32"], "intel_nuc / ov_fp32"),
    ("ct_seg_nuc", ["recipe=ov_fp16"], "intel_nuc / ov_fp16"),
]


def time_fn(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    results_dir = ROOT / "bench" / "results"
    os.environ["EDGESHIP_ARTIFACTS"] = str(results_dir / "artifacts")
    os.environ["EDGESHIP_ROOT"] = str(ROOT)

    import torch

    from orchestrator.build import reference
    from orchestrator.build.pipeline import run_build
    from orchestrator.core.model_file import ModelFile
    from orchestrator.errors import GateFailure
    from orchestrator.spec.compose import compose
    from targets.base import get_target

    torch.set_num_threads(args.threads)
    base = compose(["deployment=ct_seg_server"], ROOT)
    net = reference.load_reference(base.config.model, ROOT)
    shape = base.config.model.inputs[0].shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x)

    def torch_run() -> None:
        with torch.inference_mode():
            net(xt)

    rows = []
    torch_ms = statistics.median(time_fn(torch_run, args.runs, args.warmup))
    rows.append(
        {
            "backend": "PyTorch eager FP32 (reference)",
            "median_ms": torch_ms,
            "speedup": 1.0,
            "dice_vs_reference": 1.0,
            "size_mb": None,
            "gates": "-",
        }
    )
    for deployment, extra, label in CANDIDATES:
        overrides = [f"deployment={deployment}", f"target.threads={args.threads}", *extra]
        spec = compose(overrides, ROOT)
        try:
            build = run_build(spec, record=False)
            art, metrics, verdict = build.artifact_dir, build.validation.metrics, "pass"
        except GateFailure as exc:
            art = Path(os.environ["EDGESHIP_ARTIFACTS"]) / ".failed" / deployment
            metrics = json.loads((art / "metrics.json").read_text())
            verdict = "FAIL: " + "; ".join(exc.failed)
        runtime = json.loads((art / "runtime.json").read_text())
        model = ModelFile(
            art / runtime["model"]["file"],
            runtime["model"]["format"],
            runtime["model"]["precision"],
        )
        session = get_target(spec.config.target).load(model)
        feed = {spec.config.model.inputs[0].name: x}
        ms = statistics.median(time_fn(lambda s=session, f=feed: s.run(f), args.runs, args.warmup))
        rows.append(
            {
                "backend": label,
                "median_ms": ms,
                "speedup": torch_ms / ms,
                "dice_vs_reference": metrics["dice_vs_reference"],
                "size_mb": metrics["size_mb"],
                "gates": verdict,
            }
        )
        # keep each candidate's artifact: the next build of the same deployment replaces it
        keep = results_dir / "artifacts" / f"{deployment}-{label.split('/')[-1].split()[0]}"
        shutil.rmtree(keep, ignore_errors=True)
        os.replace(art, keep)

    print(
        f"\nct_seg {shape} patch, {args.threads} threads, median of {args.runs} runs "
        f"(torch {torch.__version__})\n"
    )
    print(
        f"{'backend':<36} {'median ms':>10} {'vs PyTorch':>11} {'Dice vs ref':>12} {'MB':>7}  gates"
    )
    for r in rows:
        size = "" if r["size_mb"] is None else f"{r['size_mb']:.2f}"
        print(
            f"{r['backend']:<36} {r['median_ms']:>10.2f} {r['speedup']:>10.2f}x "
            f"{r['dice_vs_reference']:>12.4f} {size:>7}  {r['gates']}"
        )
    (results_dir / "ct_seg_artifacts.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
