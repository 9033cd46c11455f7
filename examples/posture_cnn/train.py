"""Deterministic training of the posture CNN on the BasicMotions TRAIN split.

Usage: ``python -m examples.posture_cnn.train OUT.pt [--epochs N] [--seed S]``
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from examples._io import deterministic, save_state_dict_atomic, sidecar_path, write_json_atomic
from examples.posture_cnn import data
from examples.posture_cnn.model import build

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS: int = 60
BATCH_SIZE: int = 8
THREADS: int = 1


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random circular time shift and amplitude jitter of a normalised batch."""
    b, _, t = x.shape
    shifts = torch.randint(0, t, (b,), generator=gen)
    idx = (torch.arange(t)[None, :] + shifts[:, None]) % t
    x = torch.gather(x, 2, idx[:, None, :].expand_as(x))
    scale = 1.0 + 0.1 * torch.randn(b, 1, 1, generator=gen)
    return x * scale + 0.05 * torch.randn(x.shape, generator=gen)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on normalised inputs ``x`` with labels ``y``."""
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return float((logits.argmax(dim=1).numpy() == y).mean())


def train(
    weights: str | Path,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    lr: float = 3e-3,
    **model_args: int,
) -> dict[str, Any]:
    """Train the posture CNN and save its ``state_dict`` atomically to ``weights``.

    Args:
        weights: Output ``.pt`` path; a ``<weights>.json`` metrics sidecar is written
            next to it.
        epochs: Passes over the 40 training series.
        seed: Seed for initialisation, shuffling and augmentation.
        lr: AdamW learning rate.
        **model_args: Forwarded to :func:`examples.posture_cnn.model.build`.

    Returns:
        ``{"train_accuracy", "test_accuracy", "epochs", "seconds", "seed"}``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    start = time.perf_counter()
    x_train_raw, y_train = data.load_split("train")
    x_train = torch.from_numpy(data.normalize(x_train_raw))
    y_train_t = torch.from_numpy(y_train)
    x_test, y_test = data.eval_set()

    with deterministic(seed, THREADS):
        gen = torch.Generator().manual_seed(seed)
        model = build(**model_args)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = -(-len(y_train) // BATCH_SIZE)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch)
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(y_train), generator=gen)
            total = 0.0
            for i in range(0, len(order), BATCH_SIZE):
                idx = order[i : i + BATCH_SIZE]
                xb = _augment(x_train[idx], gen)
                loss = loss_fn(model(xb), y_train_t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            logger.debug("epoch %d loss %.4f", epoch + 1, total / len(y_train))
        train_acc = accuracy(model, x_train.numpy(), y_train)
        test_acc = accuracy(model, x_test, y_test)
        save_state_dict_atomic(model.state_dict(), weights)

    metrics: dict[str, Any] = {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "epochs": epochs,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(metrics, sidecar_path(weights))
    logger.info("posture_cnn trained: %s", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="output .pt file")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(args.weights, epochs=args.epochs, seed=args.seed, width=args.width)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
