"""What the agent says: one JSON line per action in ``log/agent.log``, and JSON on stdout."""

from __future__ import annotations

import json
import os
import sys

from .clock import iso

LOG_FILE = "agent.log"


def log_event(log_dir: str, command: str, event: str, fields: dict) -> None:
    """Append one JSON line to ``<log_dir>/agent.log`` (both created when missing)."""
    os.makedirs(log_dir, exist_ok=True)
    entry = {"ts": iso(), "pid": os.getpid(), "command": command, "event": event}
    entry.update(fields)
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    fd = os.open(os.path.join(log_dir, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def emit(data: dict) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()
