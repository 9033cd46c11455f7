"""Benchmark: the assistant LLM in PyTorch eager vs every LLM artifact (ONNX Runtime and
OpenVINO), with the decoding bound memory bandwidth sets.

Builds ``assistant_llm_server`` with each ONNX Runtime recipe (FP32, weight-only INT8, INT4;
optimum-onnx's export, then onnxruntime-genai's model builder) and ``assistant_llm_nuc`` with
each OpenVINO recipe (FP32, NNCF INT8, INT4) into bench/results/, then prints one table,
PyTorch eager first: the export's seconds, teacher-forced agreement against
the PyTorch reference, first divergence, step-1 logits' largest error, perplexity on the
held-out text against the reference's, time to first token at the stated prompt length,
tokens/s (median decoding step of the validation loop; beside it OpenVINO GenAI's
``LLMPipeline`` for the OpenVINO artifacts, onnxruntime-genai's generator for the ONNX ones
when the ort-genai tool environment is installed, and the share of prompts whose greedy
tokens it gives as the loop did), size, peak RSS of the decoding process, and the
memory-bandwidth bound: a decoding step reads every weight once, so tokens/s <= bandwidth /
weight bytes, with the bandwidth measured here (a large numpy copy). A model whose weights
fit in the CPU caches (the shipped tiny example) decodes faster than that bound: the bound
speaks for real sizes.

    .venv/bin/python bench/llm_decode.py [--threads 2]
        [--only onnxruntime,onnxruntime-genai,openvino]   # one or more, comma-separated

Needs the optimum-onnx, ort-genai and optimum-intel tool environments (``edgeship toolenv
install optimum-onnx``, ``... ort-genai``, ``... optimum-intel``) and the trained model
(``edgeship train model=assistant_llm``).
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

BUILDS = (  # (runtime, deployment, recipe)
    ("onnxruntime", "assistant_llm_server", "llm_fp32"),
    ("onnxruntime", "assistant_llm_server", "llm_int8w"),
    ("onnxruntime", "assistant_llm_server", "llm_int4w"),
    ("onnxruntime-genai", "assistant_llm_server", "llm_genai_fp32"),
    ("onnxruntime-genai", "assistant_llm_server", "llm_genai_int8w"),
    ("onnxruntime-genai", "assistant_llm_server", "llm_genai_int4w"),
    ("openvino", "assistant_llm_nuc", "llm_ov_fp32"),
    ("openvino", "assistant_llm_nuc", "llm_ov_int8w"),
    ("openvino", "assistant_llm_nuc", "llm_ov_int4w"),
)


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
    """Bytes of the graph's initializers or constants (what a decoding step reads)."""
    if (model_dir / "openvino_model.xml").is_file():
        import openvino as ov

        net = ov.Core().read_model(str(model_dir / "openvino_model.xml"))
        return sum(op.get_byte_size() for op in net.get_ops() if op.get_type_name() == "Constant")
    import onnx

    proto = onnx.load(str(model_dir / "model.onnx"))
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="runtimes, comma-separated (default: all)")
    args = parser.parse_args()
    only = {r for r in args.only.split(",") if r}
    unknown = only - {b[0] for b in BUILDS}
    if unknown:
        parser.error(f"--only: unknown runtime(s) {', '.join(sorted(unknown))}")
    results = ROOT / "bench" / "results"
    os.environ["EDGESHIP_ARTIFACTS"] = str(results / "artifacts")
    os.environ["EDGESHIP_ROOT"] = str(ROOT)
    from orchestrator.build.pipeline import run_build
    from orchestrator.spec.compose import compose

    bw = bandwidth_gb_s()
    rows = []
    reference: dict[str, float] = {}
    for runtime, deployment, recipe in BUILDS:
        if only and runtime not in only:
            continue
        spec = compose(
            [f"deployment={deployment}", f"recipe={recipe}", f"target.threads={args.threads}"],
            ROOT,
        )
        art = run_build(spec, record=False).artifact_dir
        m = json.loads((art / "metrics.json").read_text())
        reference = {
            "tokens_per_s": m["reference_tokens_per_s"],
            "perplexity": m.get("reference_perplexity", 0.0),
        }
        wbytes = weight_bytes(art / "model")
        export = json.loads((art / "model" / "export.json").read_text())
        bound = bw * 1e9 / wbytes
        rows.append(
            {
                "artifact": recipe,
                "runtime": runtime,
                "export_s": export.get("seconds"),
                "teacher_forced_agreement": m["teacher_forced_agreement"],
                "first_divergence": m["first_divergence"],
                "step1_max_abs_error": m["step1_max_abs_error"],
                "perplexity": m.get("perplexity", 0.0),
                "perplexity_ratio": m.get("perplexity_ratio", 0.0),
                "ttft_ms": m["ttft_ms"],
                "prompt_tokens": m["prompt_tokens"],
                "tokens_per_s": m["tokens_per_s"],
                "genai_tokens_per_s": m.get("genai_tokens_per_s"),
                "genai_ttft_ms": m.get("genai_ttft_ms"),
                "genai_exact": m.get("genai_exact"),
                "size_mb": m["size_mb"],
                "weight_mb": wbytes / 1e6,
                "peak_memory_mb": m["peak_memory_mb"],
                "bandwidth_bound_tokens_per_s": bound,
                "share_of_bound": m["tokens_per_s"] / bound,
            }
        )
    print(f"memory bandwidth (copy): {bw:.1f} GB/s; {args.threads} threads")
    head = (
        "artifact", "export s", "agree", "1st div", "step1 err", "ppl", "TTFT ms", "tok/s",
        "genai", "same", "MB", "RSS MB", "bound", "share",
    )  # fmt: skip
    form = "{:<16} {:>8} {:>6} {:>7} {:>9} {:>6} {:>8} {:>7} {:>6} {:>5} {:>6} {:>7} {:>7} {:>6}"
    print(form.format(*head))
    ppl = f"{reference.get('perplexity', 0.0):.3f}"
    eager = ("pytorch eager", "-", "-", "-", "-", ppl, "-")
    print(form.format(*eager, f"{reference.get('tokens_per_s', 0.0):.0f}", *["-"] * 6))
    for r in rows:
        genai = r["genai_tokens_per_s"]
        same = r["genai_exact"]
        print(
            form.format(
                r["artifact"],
                "-" if r["export_s"] is None else f"{r['export_s']:.1f}",
                f"{r['teacher_forced_agreement']:.3f}",
                f"{r['first_divergence']:.0f}",
                f"{r['step1_max_abs_error']:.2g}",
                f"{r['perplexity']:.3f}",
                f"{r['ttft_ms']:.2f}",
                f"{r['tokens_per_s']:.0f}",
                "-" if genai is None else f"{genai:.0f}",
                "-" if same is None else f"{same:.2f}",
                f"{r['size_mb']:.2f}",
                f"{r['peak_memory_mb']:.0f}",
                f"{r['bandwidth_bound_tokens_per_s']:.0f}",
                f"{r['share_of_bound']:.2f}",
            )
        )
    results.mkdir(parents=True, exist_ok=True)
    out = {
        "bandwidth_gb_s": bw,
        "pytorch_eager_tokens_per_s": reference.get("tokens_per_s"),
        "reference_perplexity": reference.get("perplexity"),
        "artifacts": rows,
    }
    (results / "llm_decode.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
