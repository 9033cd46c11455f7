"""File-system steps that must never leave a half-written artifact behind."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write text atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def copy_tree_atomic(files: dict[str, Path], dest: Path) -> None:
    """Make ``dest`` hold exactly ``files`` (relative name -> source), swapped in atomically."""
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    for rel, src in files.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    staging.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    install_dir(staging, dest)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where unsupported."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def install_dir(staging: Path, final: Path) -> None:
    """Make ``staging`` become ``final``, replacing any previous ``final`` atomically.

    Readers see either the old directory or the new one, never a mix or nothing
    (where the kernel cannot swap atomically, a crash between the two renames
    is repaired by :func:`recover`).
    """
    trash = final.parent / ".trash" / f"{final.name}.{uuid.uuid4().hex}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if _exchange(staging, final):
            os.rename(staging, trash)  # staging now holds the old version
        else:
            os.rename(final, trash)
            os.rename(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staging, final)


def recover(artifacts: Path) -> None:
    """Put back an artifact directory a crash left only in ``.trash``; drop dead staging dirs."""
    trash = artifacts / ".trash"
    if trash.is_dir():
        for entry in sorted(trash.iterdir()):
            name = entry.name.split(".", 1)[0]
            if not (artifacts / name).exists():
                os.rename(entry, artifacts / name)
            else:
                shutil.rmtree(entry, ignore_errors=True)
    drop_dead_folders(artifacts / ".staging")


def drop_dead_folders(folder: Path) -> None:
    """Remove the work folders in ``folder`` whose owning process (``<entry>/.pid``) is gone."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        try:
            pid: int | None = int((entry / ".pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid is None or not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@contextlib.contextmanager
def exclusive_lock(path: Path, mode: int = 0o644) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with ``mode``) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
