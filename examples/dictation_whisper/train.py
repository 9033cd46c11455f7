"""Brief deterministic training of the dictation model on synthesised speech.

Usage: ``python -m examples.dictation_whisper.train OUT_FOLDER [--steps N] [--seed S]``

Writes a Hugging Face folder (``save_pretrained``: config, weights, Whisper generation
config, tokenizer, feature extractor) and ``<folder>.json`` beside it with the training
record. Every training sentence is spoken by every voice of :data:`audio.VOICES`; the
model learns them well enough to transcribe them (and held-out sentences made of the
same words) with peaked output distributions, which parity of compressed artifacts needs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples._io import deterministic, sidecar_path, write_json_atomic
from examples.dictation_whisper import audio, corpus
from examples.dictation_whisper import model as arch
from examples.dictation_whisper.tokenizer import whisper_tokenizer

logger = logging.getLogger(__name__)

THREADS: int = 2
CHUNK_SECONDS: int = 5


def prompt_ids(tok: Any) -> list[int]:
    """The decoder prompt: start of transcript, English, transcribe, no timestamps."""
    return [
        tok.convert_tokens_to_ids(t)
        for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
    ]


def text_ids(tok: Any, sentence: str) -> list[int]:
    """A transcript's tokens as Whisper writes them (a leading space)."""
    return list(tok(" " + sentence, add_special_tokens=False)["input_ids"])


def features(clips: list[np.ndarray], chunk_seconds: int = CHUNK_SECONDS) -> torch.Tensor:
    fe = arch.feature_extractor(chunk_seconds)
    out = fe(clips, sampling_rate=audio.SAMPLING_RATE, return_tensors="np")
    return torch.from_numpy(np.asarray(out["input_features"], dtype=np.float32))


def _batches(
    tok: Any, sentences: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    clips, texts = [], []
    for s in sentences:
        for voice, speed in audio.VOICES:
            clips.append(audio.synthesise(s, voice, speed))
            texts.append(s)
    prompt = prompt_ids(tok)
    eot = int(tok.eos_token_id)
    seqs = [prompt + text_ids(tok, s) + [eot] for s in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), eot, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(prompt) - 1 : len(seq) - 1] = torch.tensor(seq[len(prompt) :])
    return features(clips), ids, labels, texts


def _cycle(
    net: Any,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    start: float,
) -> torch.Tensor:
    """One cycle of training: a fresh AdamW, a one-cycle learning rate, seeded batches."""
    feats, ids, labels, used = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.randint(0, len(ids), (batch,), generator=gen)
        hidden = net.model(input_features=feats[idx], decoder_input_ids=ids[idx])
        target = labels[idx]
        keep = target != -100
        # the output projection only where there is a label, over the words transcripts use
        logits = hidden.last_hidden_state[keep] @ net.proj_out.weight[used].T
        loss = torch.nn.functional.cross_entropy(logits, torch.searchsorted(used, target[keep]))
        if step % 25 == 0:
            logger.info(
                "step %d loss %.4f (%.0f s)", step, loss.item(), time.perf_counter() - start
            )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return loss


def train(
    weights: str | Path,
    steps: int = 600,
    cycles: int = 3,
    seed: int = 0,
    lr: float = 3e-3,
    batch: int = 8,
    resume: str | Path | None = None,
    resume_cycles: int = 0,
    sentences: int = 0,
    **sizes: Any,
) -> dict[str, Any]:
    """Train the dictation model and write its Hugging Face folder atomically to ``weights``.

    Training is ``cycles`` cycles of ``steps`` steps (the first at ``lr``, later ones at
    two thirds of it), each with a fresh optimiser and batches seeded ``seed + cycle``.
    ``resume`` continues from a folder this function wrote after ``resume_cycles`` cycles
    (the same result as one uninterrupted run, the training being deterministic).
    ``sentences`` limits the data to the first training sentences, without the phrases (a
    quick stand-in folder for tests; 0: everything)."""
    from transformers import WhisperForConditionalGeneration

    out = Path(weights)
    start = time.perf_counter()
    with deterministic(seed, THREADS):
        tok = whisper_tokenizer()
        train_sentences, _ = corpus.sentences()
        texts = train_sentences[:sentences] if sentences else train_sentences + corpus.phrases()
        feats, ids, labels, _texts = _batches(tok, texts)
        # the loss is a softmax over the words the transcripts use (and end-of-text): the
        # other 51,760 output rows would only learn to be unlikely, at a cost per token of
        # the whole vocabulary; they stay at their small initial values
        used = torch.unique(labels[labels != -100])
        prepared = time.perf_counter() - start
        if resume is not None:
            net = WhisperForConditionalGeneration.from_pretrained(str(resume)).float()
        else:
            net = WhisperForConditionalGeneration(arch.build_config(tok, CHUNK_SECONDS, **sizes))
        loss = torch.tensor(0.0)
        for cycle in range(resume_cycles if resume is not None else 0, cycles):
            rate = lr if cycle == 0 else lr * 2 / 3
            loss = _cycle(net, (feats, ids, labels, used), steps, rate, batch, seed + cycle, start)
        net.eval()
        with torch.no_grad():
            probs = []
            for i in range(0, len(ids), 32):
                logits = net(
                    input_features=feats[i : i + 32], decoder_input_ids=ids[i : i + 32]
                ).logits
                p = logits.softmax(-1).max(-1).values
                probs.append(p[labels[i : i + 32] != -100])
            top1 = torch.cat(probs).mean()
        net.generation_config = arch.generation_config(tok)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        net.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        arch.feature_extractor(CHUNK_SECONDS).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {
        "steps": steps,
        "cycles": cycles,
        "resumed_after_cycles": resume_cycles if resume is not None else 0,
        "seed": seed,
        "batch": batch,
        "lr": lr,
        "threads": THREADS,
        "sentences": min(sentences, len(train_sentences)) if sentences else len(train_sentences),
        "phrases": 0 if sentences else len(corpus.phrases()),
        "output_words": len(used),
        "clips": len(ids),
        "voices": [f"{v}@{s}wpm" for v, s in audio.VOICES],
        "espeak": audio.version(),
        "chunk_seconds": CHUNK_SECONDS,
        "vocab_size": len(tok),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "final_loss": round(loss.item(), 4),
        "mean_top1_probability": round(float(top1), 4),
        "data_seconds": round(prepared, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(record, sidecar_path(out))
    logger.info("dictation_whisper: %s", record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(train(args.out, steps=args.steps, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
