"""Every runtime edgeship builds for, on both shipped models, side by side in one run.

For the movement classifier (posture_cnn) and the CT segmentation net (ct_seg): PyTorch
eager FP32 (the reference) and an FP32 build for each runtime (ONNX Runtime, OpenVINO,
ONNX Runtime Mobile, LiteRT, ExecuTorch, Apache TVM, Core ML), all on this machine with the
same thread count. Latency is edgeship's own validation measurement (median and p95 of the
timed runs, batch 1; TVM's timed inside its worker process); parity is argmax agreement
(posture) or Dice against the reference (ct_seg) on the evaluation data, and the largest
absolute difference of the outputs; size is the shipped model's.

Core ML cannot predict off macOS: its row's parity is that of PyTorch at the package's
precision (FP16) and it has no latency. TensorRT needs an NVIDIA GPU and is left out.

    python bench/runtimes.py [--threads 2] [--runs 20] [--models posture,ct_seg]

Results land in bench/results/runtimes.json (and the artifacts beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# model -> (runtime, deployment, recipe); the ct_seg phone runtimes need the 3-D -> 2-D rewrite
RUNS: dict[str, list[tuple[str, str, str]]] = {
    "posture": [
        ("ONNX Runtime", "posture_server", "ort_fp32"),
        ("OpenVINO", "posture_nuc", "ov_fp32"),
        ("ONNX Runtime Mobile (.ort)", "posture_phone", "ort_mobile_fp32"),
        ("LiteRT", "posture_phone_litert", "litert_fp32"),
        ("ExecuTorch (XNNPACK)", "posture_phone_executorch", "executorch_fp32"),
        ("Apache TVM (untuned)", "posture_tvm", "tvm_fp32"),
        ("Core ML FP16 (stand-in)", "posture_phone_coreml", "coreml_fp16"),
    ],
    "ct_seg": [
        ("ONNX Runtime", "ct_seg_server", "ort_fp32"),
        ("OpenVINO", "ct_seg_nuc", "ov_fp32"),
        ("LiteRT (rewrite)", "ct_seg_phone_litert", "litert_conv2d_fp32"),
        ("ExecuTorch (rewrite)", "ct_seg_phone_executorch", "executorch_conv2d_fp32"),
        ("Apache TVM (untuned)", "ct_seg_tvm", "tvm_fp32"),
        ("Core ML FP16 (stand-in)", "ct_seg_coreml", "coreml_fp16"),
    ],
}
PARITY = {"posture": "agreement", "ct_seg": "dice_vs_reference"}
BASE = {"posture": "posture_server", "ct_seg": "ct_seg_server"}


def torch_ms(model: Any, root: Path, runs: int, threads: int) -> float:
    import torch

    from orchestrator.build import reference

    torch.set_num_threads(threads)
    net = reference.load_reference(model, root)
    x = torch.from_numpy(
        np.random.default_rng(0).standard_normal(model.inputs[0].shape).astype(np.float32)
    )
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            net(x)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def build(deployment: str, recipe: str, threads: int, runs: int) -> tuple[dict[str, Any], str]:
    from orchestrator.build.pipeline import run_build
    from orchestrator.errors import EdgeshipError, GateFailure
    from orchestrator.spec.compose import compose

    spec = compose(
        [
            f"deployment={deployment}",
            f"recipe={recipe}",
            f"target.threads={threads}",
            f"deployment.validation.latency_runs={runs}",
        ],
        ROOT,
    )
    try:
        return dict(run_build(spec, record=False).validation.metrics), "pass"
    except GateFailure as exc:
        failed = Path(os.environ["EDGESHIP_ARTIFACTS"]) / ".failed" / deployment
        metrics = json.loads((failed / "metrics.json").read_text())
        return metrics, "gates: " + "; ".join(exc.failed)
    except EdgeshipError as exc:
        return {}, f"not built: {str(exc).splitlines()[0]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default="posture,ct_seg")
    args = ap.parse_args()
    results = ROOT / "bench" / "results"
    os.environ["EDGESHIP_ARTIFACTS"] = str(results / "runtimes")
    os.environ["EDGESHIP_ROOT"] = str(ROOT)
    from orchestrator.spec.compose import compose

    table: dict[str, list[dict[str, Any]]] = {}
    for model_name in args.models.split(","):
        model = compose([f"deployment={BASE[model_name]}"], ROOT).config.model
        eager = torch_ms(model, ROOT, args.runs, args.threads)
        rows = [{"runtime": "PyTorch eager FP32 (reference)", "p50_ms": eager, "verdict": "-"}]
        for runtime, deployment, recipe in RUNS[model_name]:
            metrics, verdict = build(deployment, recipe, args.threads, args.runs)
            stand_in = "stand-in" in runtime
            rows.append(
                {
                    "runtime": runtime,
                    "recipe": recipe,
                    "p50_ms": None if stand_in else metrics.get("p50_ms"),
                    "p95_ms": None if stand_in else metrics.get("p95_ms"),
                    "parity": metrics.get(PARITY[model_name]),
                    "max_abs_error": metrics.get("max_abs_error"),
                    "size_mb": metrics.get("size_mb"),
                    "verdict": verdict,
                }
            )
        table[model_name] = rows
        shape = "x".join(str(d) for d in model.inputs[0].shape)
        print(f"\n{model_name} ({shape}), {args.threads} threads, {args.runs} timed runs, batch 1")
        print(
            f"{'runtime':<32} {'p50 ms':>8} {'p95 ms':>8} {'vs eager':>9} "
            f"{PARITY[model_name]:>17} {'max |diff|':>11} {'MB':>7}  gates"
        )
        for r in rows:
            p50 = r.get("p50_ms")
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            speed = "-" if not p50 else f"{eager / p50:.2f}x"
            print(
                f"{r['runtime']:<32} {fmt(p50, '.3f'):>8} {fmt(r.get('p95_ms'), '.3f'):>8} "
                f"{speed:>9} {fmt(r.get('parity'), '.4f'):>17} "
                f"{fmt(r.get('max_abs_error'), '.2e'):>11} {fmt(r.get('size_mb'), '.3f'):>7}  "
                f"{r['verdict']}"
            )
    results.mkdir(parents=True, exist_ok=True)
    (results / "runtimes.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
