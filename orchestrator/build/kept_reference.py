"""Reference outputs of generative models, computed once and kept.

A text-generation or speech-recognition build compares its artifact with the reference
model's greedy outputs (tokens, step-1 logits, texts, the reference's speed). Running the
reference is the expensive part of such a build (an 8B model in FP32 needs tens of GB and
minutes per prompt), so its outputs are kept in one ``.npz`` file, keyed by what they
depend on (the model folder's hash, the evaluation data, the decoding settings, the torch
and transformers versions):

- ``references/<model>/reference.npz``: written by ``edgeship reference model=NAME``, the
  command of the ``reference@<model>`` stage of ``dvc.yaml``; DVC caches it (and
  ``dvc push`` shares it), so a build on another machine reads it instead of loading the
  reference model at all;
- ``.edgeship/reference/<model>-<key>.npz``: the build's own cache, when there is no stored
  file or the stored one was computed for something else (another folder, other prompts).

A file is used only when the key inside it equals the key of the build asking for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import BuildError

STORE = Path("references")
CACHE = Path(".edgeship") / "reference"
FILE = "reference.npz"
SUMMARY = "reference.json"

log = logging.getLogger(__name__)


@dataclass
class Kept:
    """One kept reference: its metadata, step-1 logits and where it was read from."""

    meta: dict[str, Any]
    first_logits: np.ndarray
    path: Path
    stored: bool  # the DVC output (references/<model>), not the build's cache


def summary_head(model: Any, key: str) -> dict[str, Any]:
    """What every ``reference.json`` starts with: the model, its task, the key and the
    reference's runtime (PyTorch eager, FP32, with the torch and transformers versions)."""
    import torch
    import transformers

    return {
        "model": model.name,
        "task": model.task,
        "key": key,
        "runtime": "PyTorch eager, FP32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def stored_path(root: Path, model: str) -> Path:
    """``references/<model>/reference.npz`` of the project."""
    return root / STORE / model / FILE


def cache_path(root: Path, model: str, key: str) -> Path:
    return root / CACHE / f"{model}-{key}.npz"


def read(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    try:
        with np.load(path) as npz:
            return json.loads(str(npz["meta"])), np.asarray(npz["first_logits"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BuildError(
            f"error: {path}: not a reference file edgeship wrote ({exc}); delete it and run "
            "`edgeship reference` (or the build) again"
        ) from exc


def find(root: Path, model: str, key: str) -> Kept | None:
    """The stored reference when its key is ``key``, else the cached one, else None."""
    stored = stored_path(root, model)
    if stored.is_file():
        meta, logits = read(stored)
        if meta.get("key") == key:
            return Kept(meta, logits, stored, True)
    cached = cache_path(root, model, key)
    if cached.is_file():
        meta, logits = read(cached)
        return Kept(meta, logits, cached, False)
    return None


def stale(root: Path, model: str, key: str) -> str | None:
    """Why the stored reference was not used (a note for the build's log), or None."""
    stored = stored_path(root, model)
    if not stored.is_file():
        return None
    meta, _ = read(stored)
    if meta.get("key") == key:
        return None
    return (
        f"{stored.relative_to(root)} was computed for key {meta.get('key')}, this build needs "
        f"{key} (the model folder, the evaluation data, the settings or torch/transformers "
        "changed): the reference runs now; `dvc repro` (or `edgeship reference "
        f"model={model}`) stores it again"
    )


def _write(path: Path, meta: dict[str, Any], first_logits: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, first_logits=first_logits.astype(np.float32), meta=np.asarray(json.dumps(meta)))
    tmp.replace(path)


def cache(root: Path, model: str, meta: dict[str, Any], first_logits: np.ndarray) -> Path:
    """Keep freshly computed reference outputs in the build's cache; returns the file."""
    path = cache_path(root, model, str(meta["key"]))
    _write(path, meta, first_logits)
    return path


def store(root: Path, model: str, kept_file: Path, summary: dict[str, Any]) -> Path:
    """Write ``references/<model>/`` (the DVC output): the kept ``.npz`` and a readable
    summary (``reference.json``: key, what it depends on, figures). Replaces what was there."""
    import shutil

    from orchestrator.core.fsutil import write_text

    path = stored_path(root, model)
    if kept_file != path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        shutil.copyfile(kept_file, tmp)
        tmp.replace(path)
    write_text(path.with_name(SUMMARY), json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return path


@contextmanager
def computing(
    root: Path, model: str, key: str, load_net: Callable[[], Any], threads: int
) -> Iterator[Any]:
    """Run the reference now: say why a stored file was not used, load the model, and
    give PyTorch ``threads`` threads (0: its default) while the block runs."""
    import torch

    note = stale(root, model, key)
    if note:
        log.warning("%s", note)
    net = load_net()
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield net
    finally:
        torch.set_num_threads(previous)
