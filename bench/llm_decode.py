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
tokens it gives as the loop did), size, peak RSS of the decoding process (and its ratio to
the weight bytes), and the
memory-bandwidth bound: a decoding step reads every weight once, so tokens/s <= bandwidth /
weight bytes, with the bandwidth measured here (a large numpy copy). A model whose weights
fit in the CPU caches (the shipped tiny example) decodes faster than that bound: the bound
speaks for real sizes.

    .venv/bin/python bench/llm_decode.py [--threads 2] [--size tiny|medium]
        [--only onnxruntime,onnxruntime-genai,openvino]   # one or more, comma-separated
        [--recipes llm_int8w,llm_genai_int8w,llm_ov_int8w]  # only these recipes

``--size tiny`` (the default) builds the shipped example (``models/assistant_llm``).
``--size medium`` first trains, briefly and deterministically, a larger assistant of the
same architecture on the same corpus into bench/results/assistant_llm_medium/ (reused when
its training record matches the preset; see ``SIZES``), whose INT8 weights are several
times the CPU's last-level cache, then builds the recipes against that folder
(``model.source.path=...``) with the parity gates only: the size, speed and memory gates
of the two deployments are sized for the tiny model. Its artifacts go to
bench/results/artifacts-medium/ and its figures to bench/results/llm_decode_medium.json.
A build that misses a gate is still measured (its folder is under ``.failed/``) and
flagged in the table.

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
from dataclasses import dataclass, field
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


# the gates a deployment keeps at a size other than the shipped one: parity only (the size,
# speed and memory gates of conf/deployment/assistant_llm_*.yaml fit the tiny model)
PARITY_GATES = (
    "teacher_forced_agreement >= 0.95",
    "tokenizer_exact >= 1",
    "step1_max_abs_error <= 0.5",
    "perplexity_ratio <= 1.05",
)
GENAI_GATE = "genai_exact >= 1"  # the OpenVINO deployment's LLMPipeline check


@dataclass(frozen=True)
class Size:
    """A larger assistant trained for the benchmark: examples.assistant_llm.train's
    arguments (steps, batch, lr) and Qwen3 configuration overrides."""

    steps: int
    batch: int
    lr: float
    config: dict[str, int] = field(default_factory=dict)


SIZES: dict[str, Size | None] = {
    "tiny": None,  # the shipped models/assistant_llm (hidden 128, 4 layers, 0.86 M parameters)
    # hidden 1024, 6 layers, SwiGLU 2816, 16 query / 8 key-value heads of 64: 71 M
    # parameters, INT8 weights 72-83 MB against a 32 MiB L3; trains in ~6 minutes on two
    # cores (mean top-1 probability 0.947)
    "medium": Size(
        steps=80,
        batch=8,
        lr=1e-3,
        config={
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 6,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 64,
        },
    ),
}


def trained_model(size: str, results: Path) -> Path | None:
    """The folder of the assistant at ``size`` (None: the shipped one), trained into
    ``results`` unless a folder whose training record matches the preset is there."""
    preset = SIZES[size]
    if preset is None:
        return None
    from examples._io import sidecar_path
    from examples.assistant_llm.train import train

    folder = results / f"assistant_llm_{size}"
    record_path = sidecar_path(folder)
    want = {"steps": preset.steps, "batch": preset.batch, "lr": preset.lr, "seed": 0}
    if (folder / "config.json").is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        config = json.loads((folder / "config.json").read_text())
        if all(record.get(k) == v for k, v in want.items()) and all(
            config.get(k) == v for k, v in preset.config.items()
        ):
            print(f"assistant_llm_{size}: reusing {folder} ({record})")
            return folder
    print(f"assistant_llm_{size}: training into {folder} ...", flush=True)
    record = train(folder, steps=preset.steps, batch=preset.batch, lr=preset.lr, **preset.config)
    print(f"assistant_llm_{size}: {record}")
    return folder


def size_overrides(deployment: str, folder: Path | None) -> list[str]:
    """Overrides that build ``deployment`` against ``folder`` with the parity gates only."""
    if folder is None:
        return []
    gates = list(PARITY_GATES) + ([GENAI_GATE] if deployment == "assistant_llm_nuc" else [])
    quoted = ",".join(f"'{g}'" for g in gates)
    return [f"model.source.path={folder}", f"deployment.gates=[{quoted}]"]


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
    parser.add_argument("--recipes", default="", help="recipes, comma-separated (default: all)")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="model size")
    args = parser.parse_args()
    only = {r for r in args.only.split(",") if r}
    unknown = only - {b[0] for b in BUILDS}
    if unknown:
        parser.error(f"--only: unknown runtime(s) {', '.join(sorted(unknown))}")
    recipes = {r for r in args.recipes.split(",") if r}
    unknown = recipes - {b[2] for b in BUILDS}
    if unknown:
        parser.error(f"--recipes: unknown recipe(s) {', '.join(sorted(unknown))}")
    results = ROOT / "bench" / "results"
    suffix = "" if args.size == "tiny" else f"-{args.size}"
    artifacts = results / f"artifacts{suffix}"
    os.environ["EDGESHIP_ARTIFACTS"] = str(artifacts)
    os.environ["EDGESHIP_ROOT"] = str(ROOT)
    from orchestrator.build.pipeline import run_build
    from orchestrator.errors import GateFailure
    from orchestrator.spec.compose import compose

    folder = trained_model(args.size, results)
    bw = bandwidth_gb_s()
    rows = []
    reference: dict[str, float] = {}
    for runtime, deployment, recipe in BUILDS:
        if (only and runtime not in only) or (recipes and recipe not in recipes):
            continue
        overrides = [f"deployment={deployment}", f"recipe={recipe}"]
        overrides += [f"target.threads={args.threads}", *size_overrides(deployment, folder)]
        spec = compose(overrides, ROOT)
        failed: list[str] = []
        try:
            art = run_build(spec, record=False).artifact_dir
        except GateFailure as exc:  # still measured: the folder is kept under .failed/
            art, failed = artifacts / ".failed" / exc.deployment, list(exc.failed)
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
                "rss_over_weights": m["peak_memory_mb"] / (wbytes / 1e6),
                "failed_gates": failed,
            }
        )
    where = "models/assistant_llm" if folder is None else str(folder.relative_to(ROOT))
    print(f"model: {args.size} ({where})")
    print(f"memory bandwidth (copy): {bw:.1f} GB/s; {args.threads} threads")
    head = (
        "artifact", "export s", "agree", "1st div", "step1 err", "ppl", "TTFT ms", "tok/s",
        "genai", "same", "MB", "RSS MB", "bound", "share", "RSS/w",
    )  # fmt: skip
    form = (
        "{:<16} {:>8} {:>6} {:>7} {:>9} {:>6} {:>8} {:>7} {:>6} {:>5} {:>6} {:>7} {:>7} {:>6} {:>5}"
    )
    print(form.format(*head))
    ppl = f"{reference.get('perplexity', 0.0):.3f}"
    eager = ("pytorch eager", "-", "-", "-", "-", ppl, "-")
    print(form.format(*eager, f"{reference.get('tokens_per_s', 0.0):.0f}", *["-"] * 7))
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
                f"{r['rss_over_weights']:.2f}",
            )
        )
        if r["failed_gates"]:
            print(f"  {r['artifact']}: failed gate(s): {'; '.join(r['failed_gates'])}")
    results.mkdir(parents=True, exist_ok=True)
    out = {
        "size": args.size,
        "model": where,
        "bandwidth_gb_s": bw,
        "pytorch_eager_tokens_per_s": reference.get("tokens_per_s"),
        "reference_perplexity": reference.get("perplexity"),
        "artifacts": rows,
    }
    name = f"llm_decode{suffix.replace('-', '_')}.json"
    (results / name).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
