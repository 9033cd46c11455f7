"""Key ids, signatures (``openssl``) and file hashes (``sha256sum``)."""

from __future__ import annotations

import hashlib
import subprocess

from .errors import AgentError


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


def sha256sum_check(folder: str, entries: list) -> list:
    """Paths (relative to ``folder``) whose SHA-256 differs, checked with ``sha256sum -c``."""
    if not entries:
        return []
    listing = "".join("{}  {}\n".format(e["sha256"], e["path"]) for e in entries)
    try:
        proc = subprocess.run(
            ["sha256sum", "-c", "-"],
            input=listing.encode(),
            cwd=folder,
            capture_output=True,
            timeout=600,
        )
    except FileNotFoundError as exc:
        raise AgentError("sha256sum is not installed on this device") from exc
    ok = set()
    for line in proc.stdout.decode(errors="replace").splitlines():
        name, _, verdict = line.rpartition(": ")
        if verdict.strip() == "OK":
            ok.add(name)
    return [e["path"] for e in entries if e["path"] not in ok]
