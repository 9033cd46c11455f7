"""The rollout journal: one JSON line per step, fsync'd, that survives the orchestrator dying.

``<project>/.edgeship/rollouts/<id>.jsonl`` (``$EDGESHIP_ROLLOUTS`` overrides the
folder). Every entry has ``seq``, ``ts``, ``event`` and the event's fields; it is
written with one ``write`` to a file opened for appending and fsync'd before the
rollout goes on, so after a crash the journal holds every step that happened up to
the last one (a torn last line is ignored when read back).

Events, in the order a rollout writes them::

    rollout_started   deployment, bundle, fleet, strategy, plan, selection, pid, host, ...
    resumed           pid, host (a later process carries on)
    wave_started      wave, name, devices, allowed_failures
    device_started    wave, device
    device_step       wave, device, step (connected | upload | uploaded | activate), details
    device_done       wave, device, result, ok, from_version, version, message, health, ...
    device_skipped    wave, device, reason (the wave stopped once its budget was exceeded)
    soak_started      wave, seconds, until
    soak_check        wave, device, result, reason
    wave_done         wave, succeeded, failed, allowed_failures, halted
    rollout_halted    wave, reason, failed
    rollback_started  devices
    device_rollback   device, from_version, to_version, result, health, message
    rollback_done     rolled_back, failed, kept
    mlflow            run_id, model, version, alias, status (or error)
    rollout_finished  status (completed | halted), succeeded, failed, seconds
    superseded        by (a later rollout took over this one's devices)

:func:`replay` folds the entries into a :class:`RolloutState`: what is finished,
what a resumed rollout still has to do.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator import project

ENV_ROLLOUTS = "EDGESHIP_ROLLOUTS"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with a ``Z``."""
    return datetime.now(UTC).strftime(TIME_FORMAT)


def rollouts_dir(root: Path) -> Path:
    """``$EDGESHIP_ROLLOUTS``, else ``<project>/.edgeship/rollouts``."""
    return project.rollouts_dir(root)


def new_rollout_id(deployment: str, fleet: str) -> str:
    """``<UTC time>-<deployment>-<fleet>-<4 hex>``: sortable, readable, unique."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{deployment}-{fleet}-{uuid.uuid4().hex[:4]}"


class Journal:
    """An append-only, fsync'd JSON-lines journal of one rollout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.stem
        self._lock = threading.Lock()
        self._seq = len(self.entries()) if path.exists() else 0
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    @classmethod
    def create(cls, folder: Path, rollout_id: str) -> Journal:
        """A new, empty journal (refuses an id that exists)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{rollout_id}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        return cls(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry and fsync it; returns the entry (listeners hear it after)."""
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "ts": now_iso(), "event": event, **fields}
            line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        for listener in self.listeners:
            listener(entry)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry (a line torn by a crash is left out)."""
        out = []
        with self.path.open("rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    out.append(entry)
        return out


@dataclass
class RolloutState:
    """What the journal says about a rollout."""

    id: str
    started: dict[str, Any]  # the rollout_started entry
    status: str = "running"  # running | halted | completed | superseded
    finished: dict[str, Any] | None = None  # the rollout_finished entry
    waves_done: dict[int, dict[str, Any]] = field(default_factory=dict)  # wave -> wave_done
    waves_started: set[int] = field(default_factory=set)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> device_done
    in_flight: set[str] = field(default_factory=set)  # started, never done
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)
    soak: dict[int, dict[str, Any]] = field(default_factory=dict)  # wave -> soak_started
    soak_checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> soak_check
    halted: dict[str, Any] | None = None  # the rollout_halted entry
    rollback_started: bool = False
    rollback_done: dict[str, Any] | None = None
    rolled_back: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> entry
    from_versions: dict[str, int | None] = field(default_factory=dict)  # device -> version before
    activating: set[str] = field(default_factory=set)  # devices asked to activate the bundle
    mlflow: dict[str, Any] = field(default_factory=dict)  # what the mlflow entries recorded
    superseded_by: str | None = None
    last_pid: int | None = None
    last_host: str | None = None
    entries: int = 0

    @property
    def unfinished(self) -> bool:
        return self.finished is None and self.superseded_by is None

    def failed_in(self, devices: list[str]) -> list[str]:
        """Devices of ``devices`` that failed: their update, or their health after a soak."""
        return [
            d
            for d in devices
            if (d in self.done and not self.done[d].get("ok"))
            or (d in self.soak_checks and self.soak_checks[d].get("result") != "pass")
        ]


def replay(entries: list[dict[str, Any]], rollout_id: str = "") -> RolloutState:
    """Fold journal entries into the rollout's state."""
    if not entries or entries[0].get("event") != "rollout_started":
        raise ValueError(f"journal {rollout_id}: does not start with rollout_started")
    first = entries[0]
    state = RolloutState(rollout_id or str(first.get("id")), first)
    for e in entries:
        apply(state, e)
    return state


def apply(state: RolloutState, e: dict[str, Any]) -> None:
    """Fold one more journal entry into ``state``."""
    state.entries += 1
    kind = e.get("event")
    if kind in ("rollout_started", "resumed"):
        state.last_pid, state.last_host = e.get("pid"), e.get("host")
    elif kind == "wave_started":
        state.waves_started.add(int(e["wave"]))
    elif kind == "device_started":
        state.in_flight.add(e["device"])
    elif kind == "device_step":
        if e.get("step") == "connected":
            state.from_versions[e["device"]] = e.get("from_version")
        elif e.get("step") == "activate":
            state.activating.add(e["device"])
    elif kind == "device_done":
        state.done[e["device"]] = e
        state.in_flight.discard(e["device"])
        if "from_version" in e and e.get("stage") != "connect":
            state.from_versions.setdefault(e["device"], e.get("from_version"))
    elif kind == "device_skipped":
        state.skipped[e["device"]] = e
    elif kind == "soak_started":
        state.soak[int(e["wave"])] = e
    elif kind == "soak_check":
        state.soak_checks[e["device"]] = e
    elif kind == "wave_done":
        state.waves_done[int(e["wave"])] = e
    elif kind == "rollout_halted":
        state.halted = e
        state.status = "halted"
    elif kind == "rollback_started":
        state.rollback_started = True
    elif kind == "device_rollback":
        state.rolled_back[e["device"]] = e
    elif kind == "rollback_done":
        state.rollback_done = e
    elif kind == "mlflow":
        state.mlflow.update({k: v for k, v in e.items() if k not in ("seq", "ts", "event")})
    elif kind == "rollout_finished":
        state.finished = e
        state.status = str(e.get("status"))
    elif kind == "superseded":
        state.superseded_by = str(e.get("by"))
        if state.finished is None:
            state.status = "superseded"


def read_state(path: Path) -> RolloutState:
    """The state of the rollout whose journal is ``path``."""
    return replay(Journal(path).entries(), path.stem)


def journals(folder: Path) -> list[Path]:
    """Every rollout journal in ``folder``, oldest first (ids sort by start time)."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.jsonl"))


def find_journal(folder: Path, rollout_id: str) -> Path:
    """The journal of ``rollout_id`` (a unique prefix is enough); FileNotFoundError if none."""
    exact = folder / f"{rollout_id}.jsonl"
    if exact.is_file():
        return exact
    matches = [p for p in journals(folder) if p.stem.startswith(rollout_id)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(p.stem for p in journals(folder)[-5:]) or "none"
    what = "several rollouts start with" if matches else "no rollout"
    raise FileNotFoundError(f"{what} '{rollout_id}' in {folder} (latest: {known})")


def this_host() -> str:
    """The orchestrator's host name (recorded in journals and locks)."""
    return socket.gethostname()
