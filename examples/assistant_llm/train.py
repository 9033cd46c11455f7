"""Brief deterministic training of the assistant on the generated corpus.

Usage: ``python -m examples.assistant_llm.train OUT_FOLDER [--steps N] [--seed S]``

Writes a Hugging Face folder (``save_pretrained``: config, weights, generation config,
tokenizer with its chat template) and ``<folder>.json`` beside it with the training record.
The model learns the corpus well enough that its next-token distributions are peaked,
which teacher-forced parity of quantised artifacts needs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from examples._io import deterministic, sidecar_path, write_json_atomic
from examples.assistant_llm import corpus
from examples.assistant_llm.model import build_config, train_tokenizer

logger = logging.getLogger(__name__)

THREADS: int = 2


def _sequences(tokenizer: Any) -> list[list[int]]:
    """Each exchange as the chat template renders it, tokenised."""
    out = []
    for question, answer in corpus.exchanges():
        messages = [
            {"role": "system", "content": corpus.SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        out.append(tokenizer(text)["input_ids"])
    return out


def train(
    weights: str | Path,
    steps: int = 200,
    seed: int = 0,
    lr: float = 3e-3,
    batch: int = 16,
    vocab_size: int = 1024,
    **config: Any,
) -> dict[str, Any]:
    """Train the assistant and write its Hugging Face folder atomically to ``weights``."""
    from transformers import GenerationConfig, Qwen3ForCausalLM

    out = Path(weights)
    start = time.perf_counter()
    with deterministic(seed, THREADS):
        tokenizer = train_tokenizer(corpus.texts(), vocab_size)
        seqs = _sequences(tokenizer)
        pad = int(tokenizer.pad_token_id)
        eos = int(tokenizer.eos_token_id)
        cfg = build_config(len(tokenizer), eos, pad, **config)
        net = Qwen3ForCausalLM(cfg)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        net.train()
        loss = torch.tensor(0.0)
        for _ in range(steps):
            idx = torch.randint(0, len(seqs), (batch,), generator=gen)
            loss = net(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            logits = net(input_ids=ids, attention_mask=mask).logits[:, :-1]
            probs = logits.softmax(-1).max(-1).values
            top1 = probs[mask[:, 1:] == 1].mean()
        net.generation_config = GenerationConfig(
            do_sample=False, eos_token_id=eos, pad_token_id=pad, max_new_tokens=32
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {
        "steps": steps,
        "seed": seed,
        "batch": batch,
        "lr": lr,
        "threads": THREADS,
        "sequences": len(seqs),
        "vocab_size": len(tokenizer),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "final_loss": round(loss.item(), 4),
        "mean_top1_probability": round(float(top1), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(record, sidecar_path(out))
    logger.info("assistant_llm: %s", record)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(train(args.out, steps=args.steps, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
