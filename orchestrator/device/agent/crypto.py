"""Key ids, signatures (``openssl``) and file hashes (``sha256sum``)."""

from __future__ import annotations

import base64
import hashlib
import subprocess

from .errors import AgentError

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id_of_pem(pem: str) -> str:
    """First 16 hex of sha256(raw Ed25519 public key), from a SubjectPublicKeyInfo PEM."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise ValueError("not an Ed25519 public key")
    return hashlib.sha256(der[12:]).hexdigest()[:16]


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
