"""The rollout journal: one JSON line per step, fsync'd, that survives the orchestrator dying.

``<project>/.edgeship/rollouts/<id>.jsonl`` (``$EDGESHIP_ROLLOUTS`` overrides the
folder). Every entry has ``seq``, ``ts``, ``event`` and the event's fields; it is
written with one ``write`` to a file opened for appending and fsync'd before the
rollout goes on, so after a crash the journal holds every step that happened up to
the last one.

Read back strictly: every line must be a JSON object with an ``event`` (the first
one ``rollout_started``), else :class:`RolloutJournalError` names the file and line.
The one exception is a last line without its newline: a write cut short by a crash
(each entry is written whole, newline included, with one ``write``). It is left out
of :meth:`Journal.entries`, recorded in :attr:`Journal.torn`, and
:meth:`Journal.cut_torn_tail` moves it to ``<id>.jsonl.torn`` before anything is
appended again (so it can never glue onto the next entry).

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
    abandoned         user, host (given up: ``edgeship rollout --abandon``)

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
from orchestrator.core.text import terminal
from orchestrator.errors import RolloutJournalError

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
        self.torn: tuple[int, bytes] | None = None  # (line, bytes) of a torn last line
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
        """Every entry, in order; a torn last line is left out (and kept in :attr:`torn`).

        Raises :class:`RolloutJournalError` at the first line that is not a JSON object
        with an ``event``.
        """
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: b"" unless the last write was cut short
        self.torn = (len(lines) + 1, tail) if tail else None
        return [self._entry(number, raw) for number, raw in enumerate(lines, 1)]

    def _entry(self, number: int, raw: bytes) -> dict[str, Any]:
        expected = (
            "the rollout_started entry" if number == 1 else "one JSON object (a journal entry)"
        )
        if not raw.strip():
            raise RolloutJournalError(self.path, number, expected, "an empty line")
        try:
            entry = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RolloutJournalError(
                self.path, number, expected, f"{excerpt(raw)} (not UTF-8 at byte {exc.start})"
            ) from None
        except ValueError as exc:
            reason = getattr(exc, "msg", str(exc))
            column = getattr(exc, "colno", None)
            where = f" at column {column}" if column else ""
            raise RolloutJournalError(
                self.path, number, expected, f"{excerpt(raw)} (not JSON: {reason}{where})"
            ) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("event"), str):
            what = "an object without an event" if isinstance(entry, dict) else "JSON"
            raise RolloutJournalError(self.path, number, expected, f"{what}: {excerpt(raw)}")
        return entry

    def torn_note(self) -> str | None:
        """What was left out of :meth:`entries` (None when the journal ends whole)."""
        if self.torn is None:
            return None
        number, tail = self.torn
        return (
            f"{self.path}:{number}: the last line ({len(tail)} bytes, no newline) is a write cut "
            "short by a crash and is left out; 'edgeship rollout --resume' moves it to "
            f"{self.path.name}.torn before carrying on"
        )

    def cut_torn_tail(self) -> str | None:
        """Move a torn last line to ``<id>.jsonl.torn`` and cut it off; returns a note, or None."""
        self.entries()
        if self.torn is None:
            return None
        number, tail = self.torn
        keep = self.path.with_name(self.path.name + ".torn")
        with keep.open("ab") as fh:
            fh.write(tail + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        size = self.path.stat().st_size
        with self.path.open("r+b") as fh:
            fh.truncate(size - len(tail))
            fh.flush()
            os.fsync(fh.fileno())
        self.torn = None
        return (
            f"{self.path}:{number}: cut off a last line torn by a crash ({len(tail)} bytes, "
            f"kept in {keep.name})"
        )


def excerpt(raw: bytes, limit: int = 60) -> str:
    """A damaged line as it can be shown: its start, control characters escaped, and its size."""
    text = raw.decode("utf-8", "backslashreplace")
    shown = f"'{terminal(text[:limit])}'" + ("..." if len(text) > limit else "")
    return f"{shown} ({len(raw)} bytes)"


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
    analysis: dict[int, dict[str, Any]] = field(default_factory=dict)  # wave -> live analysis
    halted: dict[str, Any] | None = None  # the rollout_halted entry
    rollback_started: bool = False
    rollback_done: dict[str, Any] | None = None
    rolled_back: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> entry
    from_versions: dict[str, int | None] = field(default_factory=dict)  # device -> version before
    activating: set[str] = field(default_factory=set)  # devices asked to activate the bundle
    mlflow: dict[str, Any] = field(default_factory=dict)  # what the mlflow entries recorded
    superseded_by: str | None = None
    abandoned: dict[str, Any] | None = None  # the abandoned entry
    last_pid: int | None = None
    last_host: str | None = None
    entries: int = 0

    @property
    def unfinished(self) -> bool:
        return self.finished is None and self.superseded_by is None and self.abandoned is None

    def failed_in(self, devices: list[str]) -> list[str]:
        """Devices of ``devices`` that failed: their update, or their health after a soak."""
        return [
            d
            for d in devices
            if (d in self.done and not self.done[d].get("ok"))
            or (d in self.soak_checks and self.soak_checks[d].get("result") != "pass")
        ]


# what a resume, --show and --list read from the rollout_started entry
STARTED_FIELDS = {
    "deployment": str,
    "bundle": dict,
    "fleet": dict,
    "strategy": dict,
    "plan": dict,
}


def replay(
    entries: list[dict[str, Any]], rollout_id: str = "", path: Path | None = None
) -> RolloutState:
    """Fold journal entries into the rollout's state.

    Raises :class:`RolloutJournalError` (a ``ValueError``) naming the line of an entry
    that lacks what its event needs; ``path`` names the file in it.
    """
    where = path or Path(f"journal {rollout_id}")
    if not entries or entries[0].get("event") != "rollout_started":
        found = f"event {entries[0].get('event')!r}" if entries else "an empty file"
        raise RolloutJournalError(
            where, 1, "the rollout_started entry (does not start with rollout_started)", found
        )
    first = entries[0]
    state = RolloutState(rollout_id or str(first.get("id")), first)
    for number, e in enumerate(entries, 1):
        try:
            apply(state, e)
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutJournalError(
                where,
                number,
                f"a {e.get('event')} entry with the fields it needs",
                f"{excerpt(json.dumps(e, sort_keys=True).encode())} ({type(exc).__name__}: {exc})",
            ) from None
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
    elif kind == "analysis":
        state.analysis[int(e["wave"])] = e
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
    elif kind == "abandoned":
        state.abandoned = e
        if state.finished is None and state.superseded_by is None:
            state.status = "abandoned"


def read_state(path: Path) -> RolloutState:
    """The state of the rollout whose journal is ``path`` (raises RolloutJournalError)."""
    return replay(Journal(path).entries(), path.stem, path)


def load_rollout(path: Path) -> tuple[RolloutState, Journal]:
    """:func:`read_state` and its journal, checking what reports and resumes read of the start."""
    journal = Journal(path)
    state = replay(journal.entries(), path.stem, path)
    first = state.started
    missing = [k for k, t in STARTED_FIELDS.items() if not isinstance(first.get(k), t)]
    if missing:
        raise RolloutJournalError(
            path,
            1,
            "rollout_started with " + ", ".join(STARTED_FIELDS),
            "none (or not a valid one) of: " + ", ".join(missing),
        )
    return state, journal


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
