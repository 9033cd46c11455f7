"""``edgeship status``: ask every device of a fleet what it runs, in parallel, with a deadline.

Per device, one SSH connection: the agent's ``status`` and the tail of its
``log/agent.log`` (the last change: activated, rolled back, deactivated,
recovered). A device that does not answer in time is reported as unreachable,
never left out.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import DeviceTimeoutError
from orchestrator.ship.enroll import agent_status
from orchestrator.ship.results import DeviceOutcome, RolloutResult, run_device, run_per_device
from orchestrator.ship.ssh import connect
from orchestrator.spec.fleet import DeviceConfig, FleetConfig, device_labels

CHANGE_EVENTS = ("activated", "rolled_back", "deactivated", "recovered", "enrolled")


@dataclass
class DeviceStatus:
    """What one device runs, as the status table shows it."""

    device: str
    address: str
    labels: dict[str, str]
    groups: list[str]
    state: str = "unknown"  # running | idle | unreachable | not_enrolled | host_key | error
    message: str = ""
    deployment: str | None = None
    version: int | None = None
    previous: int | None = None
    health: str | None = None  # pass | fail | pending
    health_reason: str | None = None
    latency_ms: float | None = None
    engine: dict[str, Any] | None = (
        None  # a TensorRT engine built on the device: sha256, version, GPU
    )
    manifest_sha256: str | None = None
    key_id: str | None = None
    last_change: str | None = None  # ISO time of the last change on the device
    last_event: str | None = None  # what that change was
    installed: list[int] = field(default_factory=list)
    failed_versions: list[int] = field(default_factory=list)
    trust_serial: int | None = None
    seconds: float = 0.0
    agent: dict[str, Any] | None = None  # the agent's status answer

    @property
    def ok(self) -> bool:
        return self.state in ("running", "idle") and self.health in (None, "pass")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("agent")
        return data | {"ok": self.ok}


def last_change(log_tail: str) -> tuple[str | None, str | None]:
    """The time and event of the last change in agent.log lines."""
    for line in reversed(log_tail.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") in CHANGE_EVENTS:
            event = str(entry["event"])
            version = entry.get("version")
            what = f"{event} v{version}" if version is not None else event
            return str(entry.get("ts")), what
    return None, None


def query_device(fleet: FleetConfig, device: DeviceConfig, timeout: float) -> DeviceStatus:
    """One device's status; never raises (unreachable and errors become its state)."""
    out = DeviceStatus(
        device.name, f"{device.address}:{device.port}", device_labels(device), list(device.groups)
    )

    def work(dev: DeviceConfig, outcome: DeviceOutcome) -> None:
        started = time.monotonic()
        with connect(dev, Path(fleet.known_hosts), timeout=timeout) as session:
            left = max(timeout - (time.monotonic() - started), 0.01)
            timer = threading.Timer(left, session.abort)
            timer.daemon = True
            timer.start()
            try:
                status = agent_status(session)
                log = f"{session.root}/log/agent.log"
                tail = session.run(f"tail -n 200 {shlex.quote(log)} 2>/dev/null", timeout=timeout)
            except Exception as exc:
                if session.aborted:
                    raise DeviceTimeoutError(f"no answer within {timeout:g}s") from exc
                raise
            finally:
                timer.cancel()
        outcome.agent = status
        outcome.result = "ok"
        out.last_change, out.last_event = last_change(tail.stdout)

    outcome = run_device(device, work)
    out.seconds = round(outcome.seconds, 3)
    if outcome.result in ("unreachable", "timeout"):
        out.state, out.message = "unreachable", outcome.message
        return out
    if outcome.result != "ok":
        out.state, out.message = outcome.result, outcome.message
        return out
    status = outcome.agent
    if status is None or not status.get("enrolled"):
        out.state, out.message = "not_enrolled", "no agent answers; run edgeship enroll"
        return out
    out.agent = status
    out.deployment = status.get("deployment")
    out.version = status.get("current")
    out.previous = status.get("previous")
    out.installed = list(status.get("installed") or [])
    out.failed_versions = list(status.get("failed") or [])
    out.trust_serial = (status.get("trust") or {}).get("serial")
    out.state = "running" if out.version is not None else "idle"
    if out.version is not None:
        info = (status.get("versions") or {}).get(str(out.version)) or {}
        health = info.get("health") or {}
        out.manifest_sha256 = info.get("manifest_sha256")
        out.key_id = info.get("key_id")
        out.engine = info.get("engine")
        if status.get("pending_health") == out.version:
            out.health = "pending"
        elif health:
            out.health = str(health.get("result"))
            out.health_reason = health.get("reason")
            out.latency_ms = health.get("latency_ms")
    return out


def fleet_status(
    fleet: FleetConfig, devices: list[DeviceConfig], timeout: float = 15.0, parallel: int = 16
) -> list[DeviceStatus]:
    """Every device's status (fleet order), ``parallel`` at a time, ``timeout`` seconds each."""
    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices)))) as pool:
        return list(pool.map(lambda d: query_device(fleet, d, timeout), devices))


def agent_report(fleet: FleetConfig, devices: list[DeviceConfig], parallel: int) -> RolloutResult:
    """``edgeship device-status``: each device's agent state as a per-device outcome."""

    def work(device: DeviceConfig, outcome: DeviceOutcome) -> None:
        with connect(device, Path(fleet.known_hosts)) as session:
            status = agent_status(session)
            outcome.agent = status
            if status is None or not status.get("enrolled"):
                outcome.result, outcome.message = "error", "not enrolled"
                return
            outcome.result = "running" if status.get("current") is not None else "idle"
            outcome.version = status.get("current")
            outcome.trust_serial = (status.get("trust") or {}).get("serial")
            health = (status.get("versions") or {}).get(str(outcome.version), {}).get("health")
            outcome.health = health
            previous = status.get("previous")
            user = status.get("user") or {}
            outcome.notes.append(
                f"deployment {status.get('deployment') or '-'}, "
                f"previous {f'v{previous}' if previous is not None else '-'}, "
                f"installed {status.get('installed')}, trust serial {outcome.trust_serial}"
                + (f", agent user {user.get('name')} (uid {user.get('uid')})" if user else "")
            )

    return RolloutResult("status", run_per_device(devices, work, parallel))
