"""``edgeship rollout``: a signed bundle to a fleet in waves, halted by a failure budget.

A rollout is a plan (:mod:`orchestrator.ship.rollout.plan`), a journal
(:mod:`orchestrator.ship.rollout.journal`) and device locks (:mod:`orchestrator.ship.rollout.lock`):

1. lock every planned device (or refuse, naming the rollout that holds them);
2. per wave, up to ``max_parallel`` devices at a time, each through the same path
   as ``edgeship deploy`` (connect -> trust -> upload -> agent activate, which
   verifies, switches atomically and runs the health check; a device already
   running the bundle is left alone). A device counts as done only with its
   health check passed;
3. once a wave's failures exceed its budget, no further device of it starts; the
   wave ends, the rollout halts and, with ``on_failure: rollback``, every device
   this rollout updated goes back to the version it ran before (and is health
   checked there);
4. between waves, a soak: wait, then re-check the wave's health (a device that
   fails it goes back by itself and counts as a failure);
5. when every wave is done: the MLflow model version gets the fleet's alias.

Every step is journalled before the rollout goes on, so ``resume_rollout`` carries
on after the orchestrator was killed without redoing a finished device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import project as project_mod
from orchestrator.errors import (
    EdgeshipError,
    RolloutHaltedError,
    RolloutJournalError,
    RolloutLockedError,
    RolloutStateError,
    TrackingError,
)
from orchestrator.ship.deploy import (
    ByteProgress,
    DeployOptions,
    deploy_device,
    require_approval,
)
from orchestrator.ship.enroll import agent_status
from orchestrator.ship.results import DeviceOutcome, run_device
from orchestrator.ship.rollout.analysis import Analyst, evaluate
from orchestrator.ship.rollout.journal import (
    Journal,
    RolloutState,
    apply,
    find_journal,
    journals,
    load_rollout,
    new_rollout_id,
    now_iso,
    replay,
    rollouts_dir,
    this_host,
)
from orchestrator.ship.rollout.lock import DeviceLocks, held_by, release_locks
from orchestrator.ship.rollout.plan import Plan, Selection, Wave, plan_rollout
from orchestrator.ship.ssh import connect
from orchestrator.spec.fleet import DeviceConfig, FleetConfig, load_fleet
from orchestrator.spec.strategy import RolloutConfig, check_rollout_data, rollout_to_dict
from registry.bundle import Bundle
from registry.keys import KeyStore
from registry.tracking import CANDIDATE_ALIAS

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]


@dataclass
class RolloutReport:
    """How a rollout ended, from its journal."""

    id: str
    status: str  # completed | halted | superseded | running
    journal: Path
    state: RolloutState
    notes: list[str] = field(default_factory=list)

    @property
    def plan(self) -> Plan:
        return Plan.from_json(self.state.started["plan"])

    @property
    def failed(self) -> list[str]:
        return self.state.failed_in(self.plan.devices)

    @property
    def succeeded(self) -> list[str]:
        failed = set(self.failed)
        return [d for d in self.plan.devices if d in self.state.done and d not in failed]

    def summary(self) -> str:
        s = self.state
        started = s.started
        bundle = started["bundle"]
        line = (
            f"rollout {self.id}: {self.status}; {started['deployment']} v{bundle['version']} "
            f"on {len(self.succeeded)} of {len(self.plan.devices)} device(s)"
        )
        if s.halted:
            line += f", halted in wave {s.halted['wave']}"
        if s.rolled_back:
            back = [d for d, e in s.rolled_back.items() if e.get("result") == "rolled_back"]
            line += f", {len(back)} rolled back"
        return line

    def halt_message(self) -> str:
        """The error text of a halted rollout: why, and each failed device."""
        s = self.state
        halted = s.halted or {}
        lines = [
            f"error: rollout {self.id} halted in wave {halted.get('wave')}: "
            f"{halted.get('reason', '')}"
        ]
        for device in halted.get("failed", []):
            done = s.done.get(device) or {}
            soak = s.soak_checks.get(device)
            why = (
                f"health after soak: {soak.get('reason')}"
                if soak and soak.get("result") != "pass"
                else f"{done.get('result')} - {done.get('message') or ''}".rstrip(" -")
            )
            lines.append(f"  {device}: {why}")
        if s.rollback_done:
            rb = s.rollback_done
            lines.append(
                f"  rolled back: {', '.join(rb.get('rolled_back') or []) or '-'}; "
                f"failed: {', '.join(rb.get('failed') or []) or '-'}; "
                f"kept: {', '.join(rb.get('kept') or []) or '-'}"
            )
        lines.append(f"  journal: {self.journal}")
        return "\n".join(lines)


def _outcome_entry(outcome: DeviceOutcome) -> dict[str, Any]:
    health = outcome.health or {}
    return {
        "result": outcome.result,
        "ok": outcome.ok,
        "stage": outcome.stage,
        "from_version": outcome.from_version,
        "version": outcome.version,
        "refusal": outcome.refusal,
        "message": outcome.message,
        "health": (
            {
                "result": health.get("result"),
                "reason": health.get("reason"),
                "latency_ms": health.get("latency_ms"),
                "runner": health.get("runner"),
                "runtime": health.get("runtime"),  # with a TensorRT engine's provenance
            }
            if health
            else None
        ),
        "bytes_sent": outcome.bytes_sent,
        "bytes_resumed": outcome.bytes_resumed,
        "files_sent": outcome.files_sent,
        "files_linked": outcome.files_linked,
        "seconds": round(outcome.seconds, 3),
        "notes": outcome.notes,
    }


def check_health(
    fleet: FleetConfig, device: DeviceConfig, timeout: float, connect_timeout: float
) -> dict[str, Any]:
    """Run the device's health check of its current version: {result, reason, version, ...}."""

    def work(dev: DeviceConfig, outcome: DeviceOutcome) -> None:
        outcome.stage = "health"
        with connect(dev, Path(fleet.known_hosts), timeout=connect_timeout) as session:
            res = session.agent(f"health --timeout {timeout:g}", timeout=timeout + 60)
            answer = res.json_or_none() or {}
            outcome.health = answer
            outcome.version = answer.get("version")
            outcome.result = "healthy" if res.code == 0 else "unhealthy"
            outcome.message = str(answer.get("reason") or answer.get("message") or "")

    outcome = run_device(device, work)
    health = outcome.health or {}
    return {
        "result": "pass" if outcome.result == "healthy" else "fail",
        "reason": outcome.message or None if outcome.result != "healthy" else None,
        "version": outcome.version,
        "latency_ms": health.get("latency_ms"),
        "outcome": outcome.result,
    }


def rollback_device(
    fleet: FleetConfig,
    device: DeviceConfig,
    to_version: int,
    health_timeout: float,
    connect_timeout: float,
) -> dict[str, Any]:
    """Switch a device back to ``to_version`` (installed there) and health-check it.

    Idempotent: a device already running ``to_version`` (the agent rolled back by
    itself) is only health-checked. ``ok`` is true when it runs ``to_version`` and
    passes its health check.
    """

    def work(dev: DeviceConfig, outcome: DeviceOutcome) -> None:
        outcome.stage = "rollback"
        with connect(dev, Path(fleet.known_hosts), timeout=connect_timeout) as session:
            status = agent_status(session)
            if status is None:
                outcome.result, outcome.message = "error", "the agent did not answer"
                return
            current = status.get("current")
            outcome.from_version = current
            if current == to_version:
                outcome.result = "unchanged"
                outcome.message = f"already runs v{to_version}"
            elif to_version not in (status.get("installed") or []):
                outcome.result = "error"
                outcome.message = f"v{to_version} is no longer installed on the device"
                return
            else:
                res = session.agent(f"rollback --to {int(to_version)}")
                outcome.agent = res.json_or_none()
                outcome.result = "rolled_back"
            outcome.stage = "health"
            res = session.agent(f"health --timeout {health_timeout:g}", timeout=health_timeout + 60)
            outcome.health = res.json_or_none()
            after = agent_status(session) or {}
            outcome.version = after.get("current")
            if outcome.version != to_version:
                outcome.result = "error"
                outcome.message = f"the device runs v{outcome.version}, not v{to_version}"
            elif res.code != 0:
                outcome.result = "error"
                outcome.message = "health check failed after the rollback: " + str(
                    (outcome.health or {}).get("reason")
                )

    outcome = run_device(device, work)
    ok = outcome.result in ("rolled_back", "unchanged")
    health = outcome.health or {}
    return {
        "result": outcome.result,
        "ok": ok,
        "from_version": outcome.from_version,
        "to_version": to_version,
        "version": outcome.version,
        "health": {"result": health.get("result"), "reason": health.get("reason")}
        if health
        else None,
        "message": outcome.message,
        "seconds": round(outcome.seconds, 3),
    }


class Rollout:
    """One run (or resumed run) of a rollout; :meth:`run` returns its report."""

    def __init__(
        self,
        journal: Journal,
        fleet: FleetConfig,
        bundle: Bundle,
        strategy: RolloutConfig,
        plan: Plan,
        store: KeyStore | None,
        state: RolloutState,
        tracker: Any | None = None,
        on_bytes: ByteProgress | None = None,
        analyst: Analyst | None = None,
    ) -> None:
        self.journal = journal
        self.analyst = analyst
        self.fleet = fleet
        self.bundle = bundle
        self.strategy = strategy
        self.plan = plan
        self.store = store
        self.state = state
        self.tracker = tracker
        self._lock = threading.Lock()
        t = strategy.timeouts
        self.options = DeployOptions(
            limit_rate=int(strategy.limit_rate_kbps * 1000) or None,
            parallel=strategy.max_parallel,
            health_timeout=t.health,
            connect_timeout=t.connect,
            device_timeout=t.device,
            on_bytes=on_bytes,
        )
        self.notes: list[str] = []

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Journal an entry (fsync'd) and fold it into the state."""
        entry = self.journal.append(event, **fields)
        with self._lock:
            apply(self.state, entry)
        return entry

    # -- waves ---------------------------------------------------------------------------------

    def run(self) -> RolloutReport:
        """Carry the rollout on from its state to the end: completed, or halted."""
        started = time.monotonic()
        if self.state.halted is None:
            for wave in self.plan.waves:
                if wave.index in self.state.waves_done:
                    continue
                if self._run_wave(wave):
                    break
        if self.state.halted is not None:
            self._after_halt()
        status = "halted" if self.state.halted is not None else "completed"
        self._record_mlflow(status)
        failed = self.state.failed_in(self.plan.devices)
        self.record(
            "rollout_finished",
            status=status,
            succeeded=[d for d in self.plan.devices if d in self.state.done and d not in failed],
            failed=failed,
            not_reached=[d for d in self.plan.devices if d not in self.state.done],
            running=self._running(),
            seconds=round(time.monotonic() - started, 3),
        )
        return RolloutReport(self.journal.id, status, self.journal.path, self.state, self.notes)

    def _running(self) -> dict[str, int | None]:
        """The version each reached device runs now, as far as this rollout saw."""
        out: dict[str, int | None] = {}
        for d in self.plan.devices:
            back = self.state.rolled_back.get(d)
            if back is not None and back.get("version") is not None:
                out[d] = back.get("version")
            elif d in self.state.done:
                out[d] = self.state.done[d].get("version")
        return out

    def _failures(self, wave: Wave) -> int:
        with self._lock:
            return len(self.state.failed_in(wave.devices))

    def _run_wave(self, wave: Wave) -> bool:
        """Run one wave (what of it is left); True when it halts the rollout."""
        if wave.index not in self.state.waves_started:
            self.record(
                "wave_started",
                wave=wave.index,
                name=wave.name,
                devices=wave.devices,
                allowed_failures=wave.allowed_failures,
            )
        todo = deque(
            d for d in wave.devices if d not in self.state.done and d not in self.state.skipped
        )
        pending: set[Future[None]] = set()
        with ThreadPoolExecutor(max_workers=self.strategy.max_parallel) as pool:
            while todo or pending:
                while (
                    todo
                    and len(pending) < self.strategy.max_parallel
                    and self._failures(wave) <= wave.allowed_failures
                ):
                    name = todo.popleft()
                    self.record("device_started", wave=wave.index, device=name)
                    pending.add(pool.submit(self._device, wave, name))
                if not pending:
                    break
                _, pending = wait(pending, return_when=FIRST_COMPLETED)
        for name in todo:
            self.record(
                "device_skipped",
                wave=wave.index,
                device=name,
                reason=f"the wave's failures exceeded its budget of {wave.allowed_failures}",
            )
        changed = any(
            (self.state.done.get(d) or {}).get("result") == "activated" for d in wave.devices
        )
        if self._failures(wave) <= wave.allowed_failures and wave.soak_seconds > 0 and changed:
            self._soak(wave)
        failed = self.state.failed_in(wave.devices)
        analysis = self.state.analysis.get(wave.index) or {}
        analysis_failed = analysis.get("result") == "fail"
        halted = len(failed) > wave.allowed_failures or analysis_failed
        self.record(
            "wave_done",
            wave=wave.index,
            name=wave.name,
            succeeded=[d for d in wave.devices if d in self.state.done and d not in failed],
            failed=failed,
            skipped=[d for d in wave.devices if d in self.state.skipped],
            allowed_failures=wave.allowed_failures,
            halted=halted,
        )
        if halted:
            self.record(
                "rollout_halted",
                wave=wave.index,
                name=wave.name,
                reason=(
                    "live analysis failed: " + "; ".join(analysis.get("reasons") or [])
                    if analysis_failed
                    else f"{len(failed)} of {len(wave.devices)} device(s) failed; the wave's "
                    f"failure budget is {wave.allowed_failures}"
                ),
                failed=failed,
                on_failure=self.strategy.on_failure,
            )
        return halted

    def _device(self, wave: Wave, name: str) -> None:
        device = self.fleet.device(name)

        def on_step(step: str, info: dict[str, Any]) -> None:
            self.record("device_step", wave=wave.index, device=name, step=step, **info)

        def work(dev: DeviceConfig, outcome: DeviceOutcome) -> None:
            deploy_device(self.fleet, dev, self.bundle, self.store, self.options, outcome, on_step)

        outcome = run_device(device, work)
        self.record(
            "device_done",
            wave=wave.index,
            device=name,
            address=outcome.address,
            **_outcome_entry(outcome),
        )

    def _soak(self, wave: Wave) -> None:
        soak = self.state.soak.get(wave.index)
        if soak is None:
            until = time.time() + wave.soak_seconds
            soak = self.record(
                "soak_started",
                wave=wave.index,
                seconds=wave.soak_seconds,
                until=round(until, 3),
            )
        time.sleep(max(0.0, float(soak["until"]) - time.time()))
        ok = [
            d
            for d in wave.devices
            if d in self.state.done
            and self.state.done[d].get("ok")
            and d not in self.state.soak_checks
        ]

        def check(name: str) -> None:
            t = self.strategy.timeouts
            result = check_health(self.fleet, self.fleet.device(name), t.health, t.connect)
            self.record("soak_check", wave=wave.index, device=name, **result)
            if result["result"] != "pass":
                self._rollback_one(name, reason="health check failed after the soak")

        self._parallel(ok, check)
        if self.strategy.analysis is not None and wave.index not in self.state.analysis:
            self._analyse(wave, soak)

    def _analyse(self, wave: Wave, soak: dict[str, Any]) -> None:
        """The strategy's live gates over the soak's events; a failure fails the wave's devices."""
        cfg = self.strategy.analysis
        assert cfg is not None
        start = float(soak["until"]) - float(soak["seconds"])
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
        devices = [
            d
            for d in wave.devices
            if (self.state.done.get(d) or {}).get("ok")
            and (self.state.soak_checks.get(d) or {}).get("result") == "pass"
        ]
        baseline = [d.name for d in self.fleet.devices if d.name not in self.state.done]
        figures: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        reasons: list[str] = []
        if self.analyst is None:
            reasons = ["no events database to analyse the soak with"]
        else:
            try:
                figures = self.analyst(
                    devices, baseline, self.bundle.deployment, self.bundle.version, since, cfg.db
                )
            except Exception as exc:  # a database that cannot be read fails the analysis
                reasons = [f"the events database could not be read: {exc}"]
        if not reasons:
            reasons = evaluate(cfg, self.bundle.version, *figures)
        self.record(
            "analysis",
            wave=wave.index,
            result="fail" if reasons else "pass",
            reasons=reasons,
            since=since,
            devices=devices,
            baseline_devices=baseline,
            wave_figures=figures[0],
            baseline_figures=figures[1],
        )
        for name in devices if reasons else []:
            self.record(
                "soak_check",
                wave=wave.index,
                device=name,
                result="fail",
                reason="live analysis: " + "; ".join(reasons),
            )

    # -- halt and roll back --------------------------------------------------------------------

    def _parallel(self, names: list[str], fn: Callable[[str], None]) -> None:
        if not names:
            return
        with ThreadPoolExecutor(max_workers=self.strategy.max_parallel) as pool:
            for future in [pool.submit(fn, n) for n in names]:
                future.result()

    def _rollback_one(self, name: str, reason: str) -> None:
        to = self.state.from_versions.get(name)
        if to is None or to == self.bundle.version:
            self.record(
                "device_rollback",
                device=name,
                result="kept",
                ok=True,
                to_version=None,
                reason=reason,
                message="no earlier version on the device to go back to"
                if to is None
                else "it ran this version before the rollout",
            )
            return
        t = self.strategy.timeouts
        entry = rollback_device(self.fleet, self.fleet.device(name), int(to), t.health, t.connect)
        self.record("device_rollback", device=name, reason=reason, **entry)

    def _after_halt(self) -> None:
        if self.strategy.on_failure != "rollback" or self.state.rollback_done is not None:
            return
        # only devices asked to activate can run the bundle; the others never changed
        touched = [
            d
            for d in self.plan.devices
            if d in self.state.activating and d not in self.state.rolled_back
        ]
        if not self.state.rollback_started:
            self.record("rollback_started", devices=touched)
        self._parallel(touched, lambda n: self._rollback_one(n, reason="the rollout halted"))
        entries = self.state.rolled_back
        self.record(
            "rollback_done",
            rolled_back=sorted(
                d for d, e in entries.items() if e.get("result") == "rolled_back" and e.get("ok")
            ),
            unchanged=sorted(d for d, e in entries.items() if e.get("result") == "unchanged"),
            kept=sorted(d for d, e in entries.items() if e.get("result") == "kept"),
            failed=sorted(d for d, e in entries.items() if not e.get("ok")),
        )

    # -- MLflow --------------------------------------------------------------------------------

    def _record_mlflow(self, status: str) -> None:
        run_id = self.state.mlflow.get("run_id")
        if self.tracker is None or not run_id:
            return
        mlflow = (self.bundle.manifest.get("provenance") or {}).get("mlflow") or {}
        failed = self.state.failed_in(self.plan.devices)
        metrics = {
            "devices": len(self.plan.devices),
            "succeeded": len([d for d in self.plan.devices if d in self.state.done]) - len(failed),
            "failed": len(failed),
            "waves": len(self.plan.waves),
            "waves_completed": len(
                [w for w in self.state.waves_done.values() if not w.get("halted")]
            ),
            "rolled_back": len(
                [e for e in self.state.rolled_back.values() if e.get("result") == "rolled_back"]
            ),
        }
        alias = self.fleet.alias
        try:
            self.tracker.finish_rollout_run(
                run_id,
                status,
                metrics,
                {"edgeship.rollout.halted_wave": str((self.state.halted or {}).get("wave", ""))},
                self.journal.path,
            )
            build_run = mlflow.get("run_id")
            if build_run:
                self.tracker.tag_build_rollout(
                    build_run, self.fleet.name, self.journal.id, status, self.bundle.version
                )
            model_name, model_version = mlflow.get("model_name"), mlflow.get("model_version")
            withdrawn = False
            if model_name and model_version:
                self.tracker.tag_version(
                    str(model_name),
                    str(model_version),
                    {
                        f"edgeship.rollout.{self.fleet.name}": status,
                        f"edgeship.rollout.{self.fleet.name}.id": self.journal.id,
                        "edgeship.bundle.version": str(self.bundle.version),
                    },
                )
                if status != "completed":  # halted or failed: no longer the candidate
                    withdrawn = self.tracker.withdraw_alias(
                        str(model_name), CANDIDATE_ALIAS, str(model_version)
                    )
            promoted = None
            whole = self.state.started.get("covers_fleet", True)
            if (
                status == "completed"
                and whole
                and mlflow.get("model_name")
                and mlflow.get("model_version")
            ):
                self.tracker.promote(str(mlflow["model_name"]), str(mlflow["model_version"]), alias)
                promoted = alias
            self.record(
                "mlflow",
                status=status,
                alias=promoted,
                model=mlflow.get("model_name"),
                model_version=mlflow.get("model_version"),
                alias_kept=None if whole else alias,
                candidate_withdrawn=withdrawn,
            )
        except TrackingError as exc:
            self.record("mlflow", error=str(exc))
            self.notes.append(f"MLflow: {exc}")


# -- starting and resuming -----------------------------------------------------------------------


def _tracker_for(project: Path, bundle: Bundle) -> Any | None:
    run_id = ((bundle.manifest.get("provenance") or {}).get("mlflow") or {}).get("run_id")
    if not run_id:
        return None
    from registry.tracking import Tracker

    return Tracker(project)


def _bundle_entry(bundle: Bundle) -> dict[str, Any]:
    provenance = bundle.manifest.get("provenance") or {}
    return {
        "version": bundle.version,
        "digest": bundle.digest,
        "path": str(bundle.path),
        "key_id": bundle.key_id,
        "family": (bundle.manifest.get("target") or {}).get("family"),
        "mlflow": provenance.get("mlflow") or {},
        "git": provenance.get("git") or {},
    }


def operator(store: KeyStore | None) -> dict[str, Any]:
    """Who runs a rollout: the OS user, the host, and the online key id it acts with."""
    key_id = None
    if store is not None and store.exists():
        with contextlib.suppress(EdgeshipError):
            key_id = store.signing_key()[0]
    return {"user": project_mod.os_user(), "host": this_host(), "key_id": key_id}


def start_rollout(
    project: Path,
    fleet: FleetConfig,
    fleet_file: str,
    bundle: Bundle,
    strategy: RolloutConfig,
    strategy_source: str,
    selection: Selection | None = None,
    store: KeyStore | None = None,
    record: bool = True,
    listeners: list[Listener] | None = None,
    on_bytes: ByteProgress | None = None,
    analyst: Analyst | None = None,
) -> RolloutReport:
    """Plan, lock, journal and run a new rollout; returns its report.

    ``listeners`` hear every journal entry as it is written; ``on_bytes(device, sent,
    total)`` hears each device's upload as it goes (not journalled).

    Raises :class:`RolloutHaltedError` when it halts and :class:`RolloutLockedError`
    when another running rollout holds any of its devices (nothing is changed then).
    """
    require_approval(fleet, bundle, store)
    family = str((bundle.manifest.get("target") or {}).get("family"))
    plan = plan_rollout(fleet, strategy, family, selection, strategy_source)
    rollout_id = new_rollout_id(bundle.deployment, fleet.name)
    folder = rollouts_dir(project)
    locks = DeviceLocks(folder / "locks", rollout_id)
    stale = locks.acquire([fleet.device(n) for n in plan.devices])
    try:
        tracker = _tracker_for(project, bundle) if record else None
        mlflow_run = None
        provenance = (bundle.manifest.get("provenance") or {}).get("mlflow") or {}
        who = operator(store)
        if tracker is not None:
            mlflow_run = tracker.start_rollout_run(
                bundle.deployment,
                rollout_id,
                {
                    "edgeship.deployment": bundle.deployment,
                    "edgeship.rollout.fleet": fleet.name,
                    "edgeship.rollout.strategy": strategy.name,
                    "edgeship.bundle.version": str(bundle.version),
                    "edgeship.bundle.sha256": bundle.digest,
                    "edgeship.rollout.status": "running",
                    "edgeship.rollout.operator": who["user"],
                    "edgeship.rollout.operator_host": who["host"],
                    "edgeship.rollout.operator_key": who["key_id"] or "-",
                },
                provenance.get("run_id"),
            )
        journal = Journal.create(folder, rollout_id)
        journal.listeners.extend(listeners or [])
        state_entry = journal.append(
            "rollout_started",
            id=rollout_id,
            deployment=bundle.deployment,
            bundle=_bundle_entry(bundle),
            fleet={"name": fleet.name, "file": fleet_file, "alias": fleet.alias},
            strategy={
                "name": strategy.name,
                "source": strategy_source,
                "config": rollout_to_dict(strategy),
            },
            selection=(selection or Selection()).describe(),
            plan=plan.to_json(),
            # the fleet's alias moves only when every device of the bundle's family is in it
            covers_fleet=set(plan.devices) == {d.name for d in fleet.devices if d.family == family},
            pid=os.getpid(),
            host=this_host(),
            user=who["user"],
            operator=who,
            argv=" ".join(shlex.quote(a) for a in sys.argv),
            started_at=locks.holder.started_at,
        )
        state = replay([state_entry], rollout_id)
        rollout = Rollout(
            journal, fleet, bundle, strategy, plan, store, state, tracker, on_bytes, analyst
        )
        if mlflow_run:
            rollout.record("mlflow", run_id=mlflow_run, status="running")
        for holder in {h.rollout_id: h for h in stale.values()}.values():
            rollout.notes.append(
                f"took over device locks of {holder.describe()}, which no longer runs"
            )
            note = _mark_superseded(folder, holder.rollout_id, rollout_id)
            if note:
                rollout.notes.append(note)
        report = rollout.run()
    finally:
        locks.release()
    if report.status == "halted":
        raise RolloutHaltedError(report)
    return report


def _mark_superseded(folder: Path, old_id: str, new_id: str) -> str | None:
    """Append ``superseded`` to an unfinished journal; returns a note when it cannot."""
    try:
        path = find_journal(folder, old_id)
    except FileNotFoundError:
        return None
    try:
        state, journal = load_rollout(path)
    except RolloutJournalError as exc:
        return f"{path} is damaged and was left as it is ({str(exc).splitlines()[0]})"
    if state.unfinished:
        journal.cut_torn_tail()
        journal.append("superseded", by=new_id, pid=os.getpid(), host=this_host())
    return None


def latest_unfinished(project: Path) -> Path | None:
    """The newest journal of a rollout that neither finished nor was superseded.

    A damaged journal newer than it raises :class:`RolloutJournalError`: it may be the
    rollout meant, so it is never skipped silently.
    """
    for path in reversed(journals(rollouts_dir(project))):
        if load_rollout(path)[0].unfinished:
            return path
    return None


def report_of(project: Path, rollout_id: str) -> RolloutReport:
    """The report of a rollout from its journal (any state)."""
    path = _journal_path(project, rollout_id)
    state, journal = load_rollout(path)
    note = journal.torn_note()
    return RolloutReport(path.stem, state.status, path, state, [note] if note else [])


def _journal_path(project: Path, rollout_id: str | None) -> Path:
    folder = rollouts_dir(project)
    if rollout_id is None:
        path = latest_unfinished(project)
        if path is None:
            raise RolloutStateError(f"error: no unfinished rollout in {folder}; nothing to resume")
        return path
    try:
        return find_journal(folder, rollout_id)
    except FileNotFoundError as exc:
        raise RolloutStateError(f"error: {exc}") from exc


def resume_rollout(
    project: Path,
    rollout_id: str | None = None,
    store: KeyStore | None = None,
    listeners: list[Listener] | None = None,
    on_bytes: ByteProgress | None = None,
    analyst: Analyst | None = None,
) -> RolloutReport:
    """Carry on an interrupted rollout from its journal (the newest unfinished one by default).

    Devices the journal records as done are not touched again; devices that were in
    flight are done again (deploying is idempotent). A finished rollout is reported,
    not re-run; a superseded one is refused.
    """
    path = _journal_path(project, rollout_id)
    state, _ = load_rollout(path)
    if state.abandoned:
        raise RolloutStateError(
            f"error: rollout {state.id} was abandoned by {state.abandoned.get('user')} on "
            f"{state.abandoned.get('host')} at {state.abandoned.get('at')}; "
            "start a new rollout instead"
        )
    if state.superseded_by:
        raise RolloutStateError(
            f"error: rollout {state.id} was superseded by {state.superseded_by}; "
            "start a new rollout instead"
        )
    if state.finished is not None:
        return RolloutReport(
            state.id,
            state.status,
            path,
            state,
            [f"rollout {state.id} already finished ({state.status}); nothing to resume"],
        )
    started = state.started
    fleet_file = str(started["fleet"]["file"])
    fleet = load_fleet(fleet_file, project)
    bundle = Bundle.open(Path(started["bundle"]["path"]))
    if bundle.digest != started["bundle"]["digest"]:
        raise RolloutStateError(
            f"error: the bundle at {bundle.path} changed since rollout {state.id} started "
            f"(manifest sha256 {bundle.digest[:12]}, journal {started['bundle']['digest'][:12]})"
        )
    strategy = check_rollout_data(started["strategy"]["config"], f"journal {path.name}: strategy")
    plan = Plan.from_json(started["plan"])
    folder = rollouts_dir(project)
    locks = DeviceLocks(folder / "locks", state.id, started.get("started_at"))
    locks.acquire([fleet.device(n) for n in plan.devices])
    try:
        journal = Journal(path)
        torn = journal.cut_torn_tail()
        journal.listeners.extend(listeners or [])
        for listener in listeners or []:
            listener(started)  # what is being resumed, before how it goes on
        tracker = _tracker_for(project, bundle) if state.mlflow.get("run_id") else None
        rollout = Rollout(
            journal, fleet, bundle, strategy, plan, store, state, tracker, on_bytes, analyst
        )
        if torn:
            rollout.notes.append(torn)
        rollout.record(
            "resumed",
            pid=os.getpid(),
            host=this_host(),
            at=now_iso(),
            done=sorted(state.done),
            in_flight=sorted(state.in_flight),
            previous_pid=state.last_pid,
        )
        report = rollout.run()
    finally:
        locks.release()
    if report.status == "halted":
        raise RolloutHaltedError(report)
    return report


def abandon_rollout(project: Path, rollout_id: str) -> list[str]:
    """Give up on an interrupted (or damaged) rollout; returns what was done, for people.

    Its devices keep what they run now. A readable journal gets ``abandoned`` (so it can
    no longer be resumed); a damaged one is moved to ``damaged/`` next to it, kept for the
    record. Then the device locks naming the rollout are removed. Refused with
    :class:`RolloutLockedError` while the rollout's process still runs.
    """
    folder = rollouts_dir(project)
    path = _journal_path(project, rollout_id)
    rid = path.stem
    held = held_by(folder / "locks", rid)
    live = {device: holder for device, (_, holder) in held.items() if holder.alive()}
    if live:
        raise RolloutLockedError(
            live,
            f"error: rollout {rid} still runs; it cannot be abandoned",
            [
                "stop it first (Ctrl-C, or kill the pid above on its host), then abandon it, "
                f"or let it finish: edgeship rollout --show {rid}"
            ],
        )
    done: list[str] = []
    try:
        state, journal = load_rollout(path)
    except RolloutJournalError as exc:
        aside = folder / "damaged"
        aside.mkdir(exist_ok=True)
        dest = aside / path.name
        n = 1
        while dest.exists():
            n += 1
            dest = aside / f"{path.stem}.{n}{path.suffix}"
        os.replace(path, dest)
        torn = path.with_name(path.name + ".torn")
        if torn.exists():
            os.replace(torn, dest.with_name(dest.name + ".torn"))
        done.append(f"journal {path} is damaged ({str(exc).splitlines()[0]})")
        done.append(f"moved it to {dest} (kept for the record)")
    else:
        if not state.unfinished:
            raise RolloutStateError(
                f"error: rollout {rid} is {state.status}, not interrupted; nothing to abandon"
            )
        note = journal.cut_torn_tail()
        if note:
            done.append(note)
        journal.append(
            "abandoned",
            user=os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid()),
            host=this_host(),
            pid=os.getpid(),
            at=now_iso(),
            done=sorted(state.done),
            in_flight=sorted(state.in_flight),
        )
        done.append(
            f"rollout {rid} abandoned ({len(state.done)} device(s) done, in flight when it "
            f"stopped: {', '.join(sorted(state.in_flight)) or 'none'}); it can no longer be resumed"
        )
    released = release_locks(folder / "locks", rid)
    done.append(
        f"released the device locks of {', '.join(sorted(released))}"
        if released
        else "it held no device locks"
    )
    return done
