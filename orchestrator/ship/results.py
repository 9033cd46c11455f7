"""Per-device outcomes of enrolment and deployment, and the whole picture of one run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import paramiko

from orchestrator.errors import (
    DeviceTimeoutError,
    DeviceUnreachableError,
    EdgeshipError,
    HostKeyError,
)
from orchestrator.spec.fleet import DeviceConfig

log = logging.getLogger(__name__)

OK_RESULTS = frozenset({"activated", "unchanged", "staged", "enrolled", "running", "idle"})


class DeviceDone(Exception):
    """Raised by per-device work whose outcome is already filled in: stop there."""


@dataclass
class DeviceOutcome:
    """What happened on one device."""

    device: str
    address: str
    result: str = "pending"  # activated | unchanged | staged | enrolled | refused | rolled_back
    #                          | unhealthy | host_key | unreachable | timeout | error
    stage: str = "connect"  # connect | trust | upload | activate | enroll | rollback | health
    message: str = ""
    version: int | None = None  # the version active on the device afterwards
    from_version: int | None = None  # the version active on the device before
    refusal: str | None = None  # the agent's refusal code
    health: dict[str, Any] | None = None
    bytes_sent: int = 0  # bytes that travelled over SSH for bundle files
    bytes_resumed: int = 0  # bytes of partial uploads the device already held
    files_sent: int = 0
    files_linked: int = 0  # files the device already held (copied there from other versions)
    files_present: int = 0  # files already complete in the staging folder
    staged_at: str | None = None
    trust_serial: int | None = None
    notes: list[str] = field(default_factory=list)
    agent: dict[str, Any] | None = None  # the agent's last JSON answer
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result in OK_RESULTS

    def summary(self) -> str:
        """One line for people."""
        parts = [self.result]
        if self.refusal:
            parts.append(f"({self.refusal})")
        if self.version is not None:
            parts.append(f"v{self.version} active")
        if self.message:
            parts.append(f"- {self.message}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


@dataclass
class RolloutResult:
    """Every device's outcome (like Fabric's GroupResult)."""

    verb: str
    outcomes: list[DeviceOutcome]
    notes: list[str] = field(default_factory=list)  # about the whole run (not one device)

    @property
    def succeeded(self) -> list[DeviceOutcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[DeviceOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def by_device(self) -> dict[str, DeviceOutcome]:
        return {o.device: o for o in self.outcomes}

    def to_json(self) -> dict[str, Any]:
        return {
            "verb": self.verb,
            "succeeded": [o.device for o in self.succeeded],
            "failed": [o.device for o in self.failed],
            "outcomes": [o.to_json() for o in self.outcomes],
            "notes": list(self.notes),
        }


def run_device(
    device: DeviceConfig, work: Callable[[DeviceConfig, DeviceOutcome], None]
) -> DeviceOutcome:
    """Run ``work`` for one device; whatever goes wrong becomes its outcome, never an exception."""
    outcome = DeviceOutcome(device.name, f"{device.address}:{device.port}")
    start = time.perf_counter()
    try:
        work(device, outcome)
    except DeviceDone:
        pass
    except HostKeyError as exc:
        outcome.result, outcome.message = "host_key", str(exc).removeprefix("error: ")
    except DeviceUnreachableError as exc:
        outcome.result, outcome.message = "unreachable", str(exc)
    except DeviceTimeoutError as exc:
        outcome.result, outcome.message = "timeout", str(exc)
    except EdgeshipError as exc:
        outcome.result, outcome.message = "error", str(exc).removeprefix("error: ")
    except (TimeoutError, EOFError, ConnectionError, paramiko.SSHException) as exc:
        log.debug("device %s: connection lost", device.name, exc_info=True)
        outcome.result = "unreachable"
        outcome.message = f"connection lost during {outcome.stage}: {type(exc).__name__}: {exc}"
    except Exception as exc:
        log.debug("device %s failed", device.name, exc_info=True)
        outcome.result, outcome.message = "error", f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.perf_counter() - start
    log.info("%s: %s", device.name, outcome.summary())
    return outcome


def run_per_device(
    devices: list[DeviceConfig],
    work: Callable[[DeviceConfig, DeviceOutcome], None],
    parallel: int,
) -> list[DeviceOutcome]:
    """Run ``work`` for every device (``parallel`` at a time); each failure is its outcome."""
    if parallel <= 1 or len(devices) <= 1:
        return [run_device(d, work) for d in devices]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda d: run_device(d, work), devices))
