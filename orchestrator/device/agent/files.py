"""The names of a bundle's signed envelope, crash-safe file writes, JSON files, read-only trees."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
ROLLBACK = "rollback.json"
ROLLBACK_SIG = "rollback.json.sig"
APPROVAL = "approval.json"  # a named approver's signed approval of this bundle
APPROVAL_SIG = "approval.json.sig"
ENVELOPE = (MANIFEST, SIGNATURE, ROLLBACK, ROLLBACK_SIG, APPROVAL, APPROVAL_SIG)


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


def make_read_only(folder: str) -> None:
    """Files 0444 and folders 0555 under ``folder`` (installed versions are never written)."""
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o444)
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o555)
    os.chmod(folder, 0o555)


def remove_tree(path: str) -> None:
    """Remove a folder, read-only ones included (best effort, like rmtree ignore_errors)."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    for dirpath, dirnames, _ in os.walk(path):
        for name in ["", *dirnames]:
            full = os.path.join(dirpath, name) if name else dirpath
            try:
                if not os.path.islink(full):
                    os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | stat.S_IRWXU)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
