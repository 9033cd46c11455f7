"""Ed25519 signatures over exact file bytes, and the canonical JSON edgeship signs.

A signature is the raw 64-byte Ed25519 signature of a file's bytes, stored
beside it as ``<file>.sig``, so stock OpenSSL verifies it on a device::

    openssl pkeyutl -verify -pubin -inkey KEY.pem -rawin \\
        -in manifest.json -sigfile manifest.json.sig

A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIG_SUFFIX = ".sig"


def canonical_json(data: Any) -> bytes:
    """The bytes edgeship signs: sorted keys, two-space indent, UTF-8, trailing newline."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32-byte raw public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256(raw public key)."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM (what ``openssl -pubin`` reads)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_pem(pem: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError for anything else."""
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, found {type(key).__name__}")
    return key


def sign(private: Ed25519PrivateKey, data: bytes) -> bytes:
    """The raw 64-byte signature of ``data``."""
    return private.sign(data)


def verify(public: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public``'s signature of ``data``."""
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def sign_file(private: Ed25519PrivateKey, path: Path) -> Path:
    """Write ``<path>.sig`` beside ``path``; returns the signature's path."""
    sig = path.with_name(path.name + SIG_SUFFIX)
    sig.write_bytes(sign(private, path.read_bytes()))
    return sig


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
