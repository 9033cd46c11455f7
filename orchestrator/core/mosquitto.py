"""Mosquitto's password and ACL files, as the broker reads them: one line per user in the
password file (the PBKDF2-SHA512 ``$7$`` hash ``mosquitto_passwd`` writes) and one block per
user in the ACL file. Updating one user leaves every other line as it was.

A device's broker user is ``<fleet>.<device>``; its topic ``edgeship/<fleet>/<device>/events``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

ITERATIONS = 101  # mosquitto_passwd's PBKDF2-SHA512 iterations ($7$ format, Mosquitto 2)
SALT_BYTES = 12


def broker_user(fleet: str, device: str) -> str:
    return f"{fleet}.{device}"


def events_topic(fleet: str, device: str) -> str:
    return f"edgeship/{fleet}/{device}/events"


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """The password-file hash ``$7$<iterations>$<salt>$<hash>`` that ``mosquitto_passwd`` writes."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    b64salt, b64digest = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${ITERATIONS}${b64salt}${b64digest}"


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _acl_blocks(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The lines before the first ``user`` line, then each ``user NAME`` block."""
    head: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            blocks.append((words[1], [line]))
        elif blocks and not (words and words[0] == "pattern"):
            blocks[-1][1].append(line)
        else:
            head.append(line)
    return head, blocks


def set_password(path: Path, user: str, password: str) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if line.split(":", 1)[0] != user]
    _write(path, "\n".join([*kept, f"{user}:{mosquitto_hash(password)}"]) + "\n", 0o600)


def set_acl(path: Path, user: str, topic: str) -> None:
    head, blocks = _acl_blocks(path.read_text() if path.exists() else "")
    body = [f"user {user}", f"topic write {topic}", ""]
    out = list(head)
    replaced = False
    for name, lines in blocks:
        if name == user:
            if not replaced:
                out += body
                replaced = True
        else:
            out += lines
    if not replaced:
        if out and out[-1].strip():
            out.append("")
        out += body
    _write(path, "\n".join(out).rstrip("\n") + "\n", 0o644)
