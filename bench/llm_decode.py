"""Benchmark: the assistant LLM in PyTorch eager vs every LLM artifact, with the decoding
bound memory bandwidth sets.

Builds ``assistant_llm_server`` with each LLM recipe (FP32, weight-only INT8, INT4) into
bench/results/, then prints per artifact: teacher-forced agreement against the PyTorch
reference, time to first token at the stated prompt length, tokens/s (median decoding
step), size, peak RSS of the decoding process, and the memory-bandwidth bound: a decoding
step reads every weight once, so tokens/s <= bandwidth / weight bytes, with the bandwidth
measured here (a large numpy copy). A model whose weights fit in the CPU caches (the
shipped tiny example) decodes faster than that bound: the bound speaks for real sizes.

    .venv/bin/python bench/llm_decode.py [--threads 2]

Needs the optimum-onnx tool environment (``edgeship toolenv install optimum-onnx``) and
the trained model (``edgeship train model=assistant_llm``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = ("llm_fp32", "llm_int8w", "llm_int4w")


def bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth (read + write) of a large array copy, best of ``repeats``."""
    src = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the graph's initializers (what a decoding step reads)."""
    import onnx

    proto = onnx.load(str(model_dir / "model.onnx"))
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = ROOT / "bench" / "results"
    os.environ["EDGESHIP_ARTIFACTS"] = str(results / "artifacts")
    os.environ["EDGESHIP_ROOT"] = str(ROOT)
    from orchestrator.build.pipeline import run_build
    from orchestrator.spec.compose import compose

    bw = bandwidth_gb_s()
    rows = []
    reference = None
    for recipe in RECIPES:
        spec = compose(
            [
                "deployment=assistant_llm_server",
                f"recipe={recipe}",
                f"target.threads={args.threads}",
            ],
            ROOT,
        )
        art = run_build(spec, record=False).artifact_dir
        m = json.loads((art / "metrics.json").read_text())
        reference = m["reference_tokens_per_s"]
        wbytes = weight_bytes(art / "model")
        bound = bw * 1e9 / wbytes
        rows.append(
            {
                "artifact": recipe,
                "teacher_forced_agreement": m["teacher_forced_agreement"],
                "first_divergence": m["first_divergence"],
                "ttft_ms": m["ttft_ms"],
                "prompt_tokens": m["prompt_tokens"],
                "tokens_per_s": m["tokens_per_s"],
                "size_mb": m["size_mb"],
                "weight_mb": wbytes / 1e6,
                "peak_memory_mb": m["peak_memory_mb"],
                "bandwidth_bound_tokens_per_s": bound,
                "share_of_bound": m["tokens_per_s"] / bound,
            }
        )
    print(f"memory bandwidth (copy): {bw:.1f} GB/s; PyTorch eager: {reference:.1f} tok/s")
    head = ("artifact", "agree", "1st div", "TTFT ms", "tok/s", "MB", "RSS MB", "bound", "share")
    print("{:<10} {:>6} {:>7} {:>8} {:>8} {:>6} {:>7} {:>9} {:>6}".format(*head))
    for r in rows:
        print(
            f"{r['artifact']:<10} {r['teacher_forced_agreement']:>6.3f} "
            f"{r['first_divergence']:>7.0f} {r['ttft_ms']:>8.2f} {r['tokens_per_s']:>8.0f} "
            f"{r['size_mb']:>6.2f} {r['peak_memory_mb']:>7.0f} "
            f"{r['bandwidth_bound_tokens_per_s']:>9.0f} {r['share_of_bound']:>6.2f}"
        )
    results.mkdir(parents=True, exist_ok=True)
    out = {"bandwidth_gb_s": bw, "pytorch_eager_tokens_per_s": reference, "artifacts": rows}
    (results / "llm_decode.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
