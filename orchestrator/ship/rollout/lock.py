"""Device locks: two rollouts to overlapping devices cannot run at once.

One lock file per device under ``<rollouts folder>/locks/`` (named for the device's
address, port and install root, so two fleet files naming the same device share
it). A lock holds its owner: rollout id, pid, the pid's start time, host, start
time. All of a rollout's device locks are taken together, under a folder-wide
``flock``, or none is.

A lock whose owner is gone is stale and is taken over: same host and the pid no
longer runs (or runs another program that reused the pid, seen by its start time).
A lock held from another host is never guessed stale.

``edgeship deploy`` takes the same locks for as long as it runs (holder id
``deploy-<UTC time>-<deployment>-<4 hex>``, see :func:`deploy_locks`), so a rollout
cannot start on devices a deploy is changing, and it is stricter than a rollout about
stale locks: a device whose lock names an interrupted rollout (its process gone, its
journal unfinished) stays held until that rollout is resumed or abandoned; a new
rollout instead takes such a device over and marks the old journal superseded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.core.fsutil import exclusive_lock
from orchestrator.errors import RolloutJournalError, RolloutLockedError
from orchestrator.ship.rollout.journal import find_journal, now_iso, read_state, this_host
from orchestrator.spec.fleet import DeviceConfig

DEPLOY_PREFIX = "deploy-"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a device lock."""

    rollout_id: str
    pid: int
    host: str
    started_at: str
    pid_started: str  # the pid's start time (/proc/<pid>/stat), to tell a reused pid

    @property
    def kind(self) -> str:
        """``deploy`` for a lock ``edgeship deploy`` holds, else ``rollout``."""
        return "deploy" if self.rollout_id.startswith(DEPLOY_PREFIX) else "rollout"

    def describe(self, more: str = "") -> str:
        what = "edgeship deploy" if self.kind == "deploy" else "rollout"
        return (
            f"{what} {self.rollout_id} (pid {self.pid} on {self.host}, "
            f"started {self.started_at}{more})"
        )

    def alive(self) -> bool:
        """Whether the owner still runs (a lock from another host is assumed to)."""
        if self.host != this_host():
            return True
        return process_start(self.pid) == self.pid_started != ""


def process_start(pid: int) -> str:
    """The start time of a process in clock ticks since boot ("" when it does not run)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = text.rsplit(")", 1)[-1].split()
    if not fields or fields[0] == "Z":
        return ""
    return fields[19] if len(fields) > 19 else ""


def device_key(device: DeviceConfig) -> str:
    """The lock file name of a device: its endpoint and install root."""
    root = hashlib.sha256(device.install_root.encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", device.address)
    return f"{safe}_{device.port}_{root}.lock"


class DeviceLocks:
    """The device locks of one rollout."""

    def __init__(self, folder: Path, rollout_id: str, started_at: str | None = None) -> None:
        self.folder = folder
        pid = os.getpid()
        self.holder = LockHolder(
            rollout_id, pid, this_host(), started_at or now_iso(), process_start(pid)
        )
        self.held: list[Path] = []

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.folder / ".mutex"):
            yield

    @staticmethod
    def read(path: Path) -> LockHolder | None:
        """The holder a lock file names (None when unreadable)."""
        try:
            data = json.loads(path.read_text())
            return LockHolder(**data["holder"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def acquire(
        self,
        devices: list[DeviceConfig],
        refuse: Callable[[dict[str, LockHolder]], RolloutLockedError] = RolloutLockedError,
        keep: Callable[[LockHolder], bool] = lambda holder: False,
    ) -> dict[str, LockHolder]:
        """Lock every device or none; returns the stale holders taken over (device -> holder).

        Raises ``refuse(held)`` (a :class:`RolloutLockedError`) naming the live holders,
        and the dead ones ``keep`` says still hold their devices.
        """
        with self._mutex():
            busy: dict[str, LockHolder] = {}
            stale: dict[str, LockHolder] = {}
            for dev in devices:
                path = self.folder / device_key(dev)
                holder = self.read(path) if path.exists() else None
                if holder is None or (
                    holder.rollout_id == self.holder.rollout_id and holder.pid == self.holder.pid
                ):
                    continue
                if holder.alive() or keep(holder):
                    busy[dev.name] = holder  # another process, even of this same rollout
                elif holder.rollout_id != self.holder.rollout_id:
                    stale[dev.name] = holder  # a dead rollout's lock (this one's: just reuse)
            if busy:
                raise refuse(busy)
            for dev in devices:
                path = self.folder / device_key(dev)
                data = {"holder": asdict(self.holder), "device": dev.name, "address": dev.address}
                tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, path)
                self.held.append(path)
        return stale

    def release(self) -> None:
        """Remove the locks this rollout holds (only those that still name it)."""
        with self._mutex():
            for path in self.held:
                holder = self.read(path)
                if holder is not None and holder.rollout_id == self.holder.rollout_id:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            self.held = []


def held_by(folder: Path, rollout_id: str) -> dict[str, tuple[Path, LockHolder]]:
    """The device locks in ``folder`` that name ``rollout_id`` (device -> (file, holder))."""
    out: dict[str, tuple[Path, LockHolder]] = {}
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        holder = DeviceLocks.read(path)
        if holder is not None and holder.rollout_id == rollout_id:
            try:
                device = str(json.loads(path.read_text()).get("device") or path.stem)
            except (OSError, ValueError, AttributeError):
                device = path.stem
            out[device] = (path, holder)
    return out


def release_locks(folder: Path, rollout_id: str) -> list[str]:
    """Remove the locks naming ``rollout_id`` whose holder no longer runs; returns their devices."""
    if not folder.is_dir():
        return []
    released = []
    with exclusive_lock(folder / ".mutex"):
        for device, (path, holder) in held_by(folder, rollout_id).items():
            if not holder.alive():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                released.append(device)
    return released


@dataclass(frozen=True)
class HeldBy:
    """A device lock as a deploy sees it: its holder, and whether that one still runs."""

    holder: LockHolder
    state: str  # running | interrupted | damaged
    user: str = ""

    def describe(self) -> str:
        text = self.holder.describe(f" by {self.user}" if self.user else "")
        if self.state == "running":
            return f"{text}: running"
        return f"{text}: {self.state}, its process no longer runs"


def _journal_state(rollouts: Path, holder: LockHolder) -> tuple[str, str]:
    """(``unfinished`` | ``finished`` | ``damaged`` | ``none``, user) of a lock holder's journal."""
    if holder.kind == "deploy":
        return "none", ""
    try:
        state = read_state(find_journal(rollouts, holder.rollout_id))
    except FileNotFoundError:
        return "none", ""
    except RolloutJournalError:
        return "damaged", ""
    user = str(state.started.get("user") or "")
    return ("unfinished" if state.unfinished else "finished"), user


def _deploy_refusal(rollouts: Path) -> Callable[[dict[str, LockHolder]], RolloutLockedError]:
    def refuse(held: dict[str, LockHolder]) -> RolloutLockedError:
        seen: dict[str, HeldBy] = {}
        shown: dict[str, HeldBy] = {}
        for device, holder in held.items():
            if holder.rollout_id not in seen:
                journal, user = _journal_state(rollouts, holder)
                state = (
                    "running"
                    if holder.alive()
                    else ("damaged journal" if journal == "damaged" else "interrupted")
                )
                seen[holder.rollout_id] = HeldBy(holder, state, user)
            shown[device] = seen[holder.rollout_id]
        hints = []
        for h in seen.values():
            rid = h.holder.rollout_id
            if h.state == "running":
                hints.append(
                    f"{rid} is running: wait for it to finish"
                    + (f" (edgeship rollout --show {rid})" if h.holder.kind == "rollout" else "")
                )
            elif h.state == "interrupted":
                hints.append(
                    f"{rid} was interrupted: carry it on with 'edgeship rollout --resume {rid}', "
                    f"or give it up (devices keep what they run) with "
                    f"'edgeship rollout --abandon {rid}'"
                )
            else:
                hints.append(
                    f"{rid}'s journal is damaged (see 'edgeship rollout --show {rid}'); "
                    f"give it up with 'edgeship rollout --abandon {rid}'"
                )
        hints.append("or deploy to other devices; nothing was sent to any device")
        return RolloutLockedError(
            shown, f"error: deploy: {len(held)} device(s) are held by a rollout", hints
        )

    return refuse


@contextlib.contextmanager
def deploy_locks(
    rollouts: Path, devices: list[DeviceConfig], deployment: str
) -> Iterator[list[str]]:
    """Hold the device locks of ``devices`` while ``edgeship deploy`` changes them.

    Refused (:class:`RolloutLockedError`, nothing taken) when a running rollout or deploy
    holds any of them, or an interrupted rollout that can still be resumed (or whose
    journal is damaged). Yields notes about stale locks taken over.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    locks = DeviceLocks(
        rollouts / "locks", f"{DEPLOY_PREFIX}{stamp}-{deployment}-{uuid.uuid4().hex[:4]}"
    )

    def keep(holder: LockHolder) -> bool:
        return _journal_state(rollouts, holder)[0] in ("unfinished", "damaged")

    stale = locks.acquire(devices, _deploy_refusal(rollouts), keep)
    try:
        yield [
            f"took over the lock of {device} from {holder.describe()}, which no longer runs"
            for device, holder in stale.items()
        ]
    finally:
        locks.release()
