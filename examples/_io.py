"""Shared helpers for the example training scripts: atomic writes and determinism."""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a uniquely named temp file in the target directory, then ``os.replace``.

    The temp file is created with mode 0o666 minus the umask, so the final file gets
    the same permissions as a plainly created one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_state_dict_atomic(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Save a ``state_dict`` with :func:`torch.save` via a temp file and :func:`os.replace`."""
    target = Path(path)
    _atomic_write(target, lambda handle: torch.save(dict(state), handle))
    logger.info("saved weights to %s", target)
    return target


def write_json_atomic(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically."""
    target = Path(path)
    payload = (json.dumps(dict(data), indent=2, sort_keys=True) + "\n").encode("utf-8")
    _atomic_write(target, lambda handle: handle.write(payload))
    return target


def sidecar_path(weights: str | Path) -> Path:
    """Path of the metrics sidecar for ``weights`` (``<weights>.json``)."""
    w = Path(weights)
    return w.with_name(w.name + ".json")


@contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed every generator, fix the thread count and request deterministic kernels.

    The previous thread count and determinism setting are restored on exit.
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
