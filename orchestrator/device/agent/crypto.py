"""Key ids, signatures (``openssl``) and file hashes (hashlib)."""

from __future__ import annotations

import hashlib
import os
import subprocess

from .errors import AgentError

CHUNK = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def openssl_verify(pem_path: str, data_path: str, sig_path: str) -> bool:
    """``openssl pkeyutl -verify -pubin -inkey KEY -rawin -in DATA -sigfile SIG``."""
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pem_path, "-rawin"]
    cmd += ["-in", data_path, "-sigfile", sig_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except FileNotFoundError as exc:
        raise AgentError("openssl is not installed on this device") from exc
    return proc.returncode == 0


def sha256_check(folder: str, entries: list) -> list:
    """Paths (relative to ``folder``) whose SHA-256 differs from the entry's.

    Streams each file through hashlib (OpenSSL's SHA-256, with the CPU's SHA extensions
    where it has them: several times faster than coreutils' sha256sum on large models),
    opened without following a symbolic link.
    """
    bad = []
    for e in entries:
        digest = hashlib.sha256()
        try:
            fd = os.open(
                os.path.join(folder, e["path"]), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
            )
        except OSError:
            bad.append(e["path"])
            continue
        with os.fdopen(fd, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != e["sha256"]:
            bad.append(e["path"])
    return bad
