"""Device locks: two rollouts to overlapping devices cannot run at once.

One lock file per device under ``<rollouts folder>/locks/`` (named for the device's
address, port and install root, so two fleet files naming the same device share
it). A lock holds its owner: rollout id, pid, the pid's start time, host, start
time. All of a rollout's device locks are taken together, under a folder-wide
``flock``, or none is.

A lock whose owner is gone is stale and is taken over: same host and the pid no
longer runs (or runs another program that reused the pid, seen by its start time).
A lock held from another host is never guessed stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.core.fsutil import exclusive_lock
from orchestrator.errors import RolloutLockedError
from orchestrator.ship.rollout.journal import now_iso, this_host
from orchestrator.spec.fleet import DeviceConfig


@dataclass(frozen=True)
class LockHolder:
    """Who holds a device lock."""

    rollout_id: str
    pid: int
    host: str
    started_at: str
    pid_started: str  # the pid's start time (/proc/<pid>/stat), to tell a reused pid

    def describe(self) -> str:
        return (
            f"rollout {self.rollout_id} (pid {self.pid} on {self.host}, started {self.started_at})"
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

    def acquire(self, devices: list[DeviceConfig]) -> dict[str, LockHolder]:
        """Lock every device or none; returns the stale holders taken over (device -> holder).

        Raises :class:`RolloutLockedError` naming the live holders.
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
                if holder.alive():
                    busy[dev.name] = holder  # another process, even of this same rollout
                elif holder.rollout_id != self.holder.rollout_id:
                    stale[dev.name] = holder  # a dead rollout's lock (this one's: just reuse)
            if busy:
                raise RolloutLockedError(busy)
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
