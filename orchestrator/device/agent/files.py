"""The names of a bundle's signed envelope, and crash-safe file writes and JSON files."""

from __future__ import annotations

import json
import os

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
ROLLBACK = "rollback.json"
ROLLBACK_SIG = "rollback.json.sig"
ENVELOPE = (MANIFEST, SIGNATURE, ROLLBACK, ROLLBACK_SIG)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: str, data: object) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> dict:
    with open(path, "rb") as fh:
        data = json.loads(fh.read().decode())
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
