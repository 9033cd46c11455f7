"""Benchmark: the dictation model in PyTorch eager vs every Whisper artifact, on the same
clips and threads.

Builds ``dictation_whisper_nuc`` with each Whisper recipe (OpenVINO FP32, NNCF INT8
weights) into bench/results/, and transcribes the same evaluation clips with the PyTorch
folder (transformers' feature extractor, encoder and greedy decoding with the KV cache) in
a fresh process with the same threads. Prints per runtime: real-time factor (processing
time / audio time, after a warm-up; features, encoder and decoding included), word error
rate against the transcripts and against PyTorch's transcripts, size, peak RSS of the
transcribing process. Target on the NUC: real-time factor <= 0.1 on two threads.

    .venv/bin/python bench/whisper_rtf.py [--threads 2] [--trained 8] [--held-out 8]

Needs the optimum-intel tool environment (``edgeship toolenv install optimum-intel``),
OpenVINO GenAI, espeak-ng and the trained model (``edgeship train model=dictation_whisper``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = ("whisper_ov_fp32", "whisper_ov_int8w")


def torch_worker(folder: str, clips_npz: str, threads: int, out: str) -> None:
    """PyTorch eager transcription of every clip (a fresh process: its own peak RSS)."""
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from orchestrator.device.agent.speech import peak_rss_mb

    torch.set_num_threads(threads)
    net = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    fe = WhisperFeatureExtractor.from_pretrained(folder)
    with np.load(clips_npz) as npz:
        clips = [np.asarray(npz[f"clip{i}"], np.float32) for i in range(len(npz.files))]

    def transcribe(clip: np.ndarray) -> str:
        feats = fe([clip], sampling_rate=16000, return_tensors="pt")["input_features"]
        ids = net.generate(
            feats, language="en", task="transcribe", max_new_tokens=32, do_sample=False
        )
        return str(tok.decode(ids[0], skip_special_tokens=True))

    with torch.inference_mode():
        transcribe(clips[0])  # warm-up
        texts, busy = [], 0.0
        for clip in clips:
            start = time.perf_counter()
            texts.append(transcribe(clip))
            busy += time.perf_counter() - start
    audio = sum(len(c) for c in clips) / 16000.0
    Path(out).write_text(
        json.dumps(
            {"texts": texts, "real_time_factor": busy / audio, "peak_memory_mb": peak_rss_mb()}
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trained", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--torch-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        torch_worker(args.torch_worker[0], args.torch_worker[1], args.threads, args.torch_worker[2])
        return 0
    results = ROOT / "bench" / "results"
    os.environ["EDGESHIP_ARTIFACTS"] = str(results / "artifacts")
    os.environ["EDGESHIP_ROOT"] = str(ROOT)
    from examples.dictation_whisper.data import eval_clips
    from orchestrator.build.pipeline import run_build
    from orchestrator.device.agent.speech import wer
    from orchestrator.spec.compose import compose

    clips, texts, held = eval_clips(args.trained, args.held_out)
    common = [
        "deployment=dictation_whisper_nuc",
        f"target.threads={args.threads}",
        f"model.data.eval.args.trained={args.trained}",
        f"model.data.eval.args.held_out={args.held_out}",
        "deployment.gates=[]",  # measure every artifact, passing or not
    ]
    folder = ROOT / compose(common, ROOT).config.model.source.path
    with tempfile.TemporaryDirectory(prefix="whisper-bench-") as tmp:
        npz, res = Path(tmp) / "clips.npz", Path(tmp) / "torch.json"
        np.savez(npz, **{f"clip{i}": c for i, c in enumerate(clips)})  # type: ignore[arg-type]
        subprocess.run(
            [sys.executable, __file__, "--threads", str(args.threads), "--torch-worker"]
            + [str(p) for p in (folder, npz, res)],
            check=True,
        )
        torch_run = json.loads(res.read_text())
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    rows = [
        {
            "runtime": "pytorch_eager",
            "real_time_factor": torch_run["real_time_factor"],
            "wer": wer(texts, torch_run["texts"]),
            "heldout_wer": wer(
                [t for t, h in zip(texts, held, strict=True) if h],
                [t for t, h in zip(torch_run["texts"], held, strict=True) if h],
            ),
            "wer_vs_pytorch": 0.0,
            "teacher_forced_agreement": 1.0,
            "size_mb": weights / 1e6,
            "peak_memory_mb": torch_run["peak_memory_mb"],
        }
    ]
    for recipe in RECIPES:
        art = run_build(compose([*common, f"recipe={recipe}"], ROOT), record=False).artifact_dir
        m = json.loads((art / "metrics.json").read_text())
        rows.append(
            {
                "runtime": f"{recipe} (WhisperPipeline)",
                "real_time_factor": m["real_time_factor"],
                "wer": m["wer"],
                "heldout_wer": m.get("heldout_wer", float("nan")),
                "wer_vs_pytorch": m["wer_vs_reference"],
                "teacher_forced_agreement": m["teacher_forced_agreement"],
                "size_mb": m["size_mb"],
                "peak_memory_mb": m["peak_memory_mb"],
            }
        )
    audio = sum(len(c) for c in clips) / 16000.0
    print(f"{len(clips)} clips, {audio:.1f} s of audio, {args.threads} threads")
    head = ("runtime", "RTF", "WER", "held-out", "vs PyTorch", "TF agree", "MB", "RSS MB")
    print("{:<34} {:>6} {:>6} {:>8} {:>10} {:>8} {:>6} {:>7}".format(*head))
    for r in rows:
        print(
            f"{r['runtime']:<34} {r['real_time_factor']:>6.3f} {r['wer']:>6.3f} "
            f"{r['heldout_wer']:>8.3f} {r['wer_vs_pytorch']:>10.3f} "
            f"{r['teacher_forced_agreement']:>8.3f} {r['size_mb']:>6.1f} "
            f"{r['peak_memory_mb']:>7.0f}"
        )
    results.mkdir(parents=True, exist_ok=True)
    out = {"threads": args.threads, "clips": len(clips), "audio_seconds": audio, "runtimes": rows}
    (results / "whisper_rtf.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
