"""``deploy --dry-run`` and ``rollout --dry-run``: the plan, and every refusal the real run
would meet before its first connection, without touching a device, a lock or a journal.

The plan names the bundle, the devices of each wave (address and port), each wave's
failure budget and soak, the devices left out and why, and the bytes each device would
receive at most (the manifest, its signature and every file; a device that already holds
a file of an installed version receives less). The checks are the real run's own: the
bundle's rules and signature (:func:`orchestrator.ship.deploy.bundle_problems`) and the
device locks of running rollouts and deploys, read without being taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ExitCode
from orchestrator.ship.rollout.lock import DeviceLocks, device_key
from orchestrator.spec.fleet import DeviceConfig, FleetConfig
from registry.bundle import Bundle
from registry.keys import KeyStore


@dataclass
class DryRun:
    """What a deploy or a rollout would do, and why it would be refused."""

    verb: str  # deploy | rollout
    bundle: dict[str, Any]
    waves: list[dict[str, Any]]
    excluded: dict[str, str] = field(default_factory=dict)  # device -> why it is left out
    refusals: list[str] = field(default_factory=list)  # bundle problems, held locks
    exit_code: int = ExitCode.OK  # what the real run would exit with before starting

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "verb": self.verb,
            "bundle": self.bundle,
            "waves": self.waves,
            "excluded": self.excluded,
            "refusals": self.refusals,
            "would_start": not self.refusals,
        }

    def lines(self) -> list[str]:
        b = self.bundle
        out = [
            f"dry run: {self.verb} {b['deployment']} v{b['version']} ({b['digest'][:12]}), "
            f"{b['files']} file(s), at most {b['bytes_per_device']} bytes per device",
        ]
        for wave in self.waves:
            soak = f", soak {wave['soak_seconds']:g}s" if wave["soak_seconds"] else ""
            out.append(
                f"  wave {wave['index']} ({wave['name']}): {len(wave['devices'])} device(s), "
                f"{wave['allowed_failures']} failure(s) allowed{soak}"
            )
            out += [f"    {d['name']}  {d['address']}:{d['port']}" for d in wave["devices"]]
        out += [f"  left out: {name} ({why})" for name, why in self.excluded.items()]
        if self.refusals:
            out.append("would be refused before anything is sent:")
            out += [f"  {r}" for r in self.refusals]
        else:
            out.append("nothing was sent, locked or written")
        return out


def _bundle_summary(bundle: Bundle) -> dict[str, Any]:
    from registry.bundle import SIGNATURE

    files = bundle.files()
    extra = sum(
        p.stat().st_size
        for p in (bundle.path / "manifest.json", bundle.path / SIGNATURE)
        if p.is_file()
    )
    provenance = (bundle.manifest.get("provenance") or {}).get("mlflow") or {}
    return {
        "deployment": bundle.deployment,
        "version": bundle.version,
        "digest": bundle.digest,
        "path": str(bundle.path),
        "files": len(files),
        "bytes_per_device": extra + sum(int(f.get("size", 0)) for f in files),
        "mlflow_model_version": provenance.get("model_version"),
    }


def _device(d: DeviceConfig) -> dict[str, Any]:
    return {"name": d.name, "address": d.address, "port": d.port, "family": d.family}


def _checks(
    run: DryRun,
    bundle: Bundle,
    devices: list[DeviceConfig],
    store: KeyStore | None,
    locks: Path,
    fleet: FleetConfig | None = None,
) -> DryRun:
    from orchestrator.errors import ApprovalError
    from orchestrator.ship.deploy import bundle_problems, require_approval

    problems = bundle_problems(bundle, store)
    run.refusals += [f"{message} ({code})" for code, message in problems]
    if problems:
        run.exit_code = ExitCode.BUNDLE
    if fleet is not None:
        try:
            require_approval(fleet, bundle, store)
        except ApprovalError as exc:
            run.refusals.append(str(exc).splitlines()[0].removeprefix("error: "))
            if not problems:
                run.exit_code = ExitCode.NOT_APPROVED
                problems = [("not_approved", str(exc))]
    held = {}
    for dev in devices:
        path = locks / device_key(dev)
        holder = DeviceLocks.read(path) if path.is_file() else None
        if holder is not None and holder.alive():
            held[dev.name] = holder
    run.refusals += [f"{name}: locked by {h.describe()}" for name, h in held.items()]
    if held and not problems:
        run.exit_code = ExitCode.LOCKED
    return run


def dry_run_deploy(
    devices: list[DeviceConfig],
    bundle: Bundle,
    store: KeyStore | None,
    locks: Path,
    fleet: FleetConfig | None = None,
) -> DryRun:
    """``edgeship deploy --dry-run``: one wave of every selected device."""
    wave = {
        "index": 1,
        "name": "all",
        "devices": [_device(d) for d in devices],
        "allowed_failures": 0,
        "soak_seconds": 0.0,
    }
    run = DryRun("deploy", _bundle_summary(bundle), [wave])
    return _checks(run, bundle, devices, store, locks, fleet)


def dry_run_rollout(
    fleet: FleetConfig,
    plan: Any,
    bundle: Bundle,
    store: KeyStore | None,
    locks: Path,
) -> DryRun:
    """``edgeship rollout --dry-run``: the waves of the strategy's plan."""
    waves = []
    for wave in plan.waves:
        entry = wave.to_json()
        entry["devices"] = [_device(fleet.device(n)) for n in wave.devices]
        waves.append(entry)
    run = DryRun("rollout", _bundle_summary(bundle), waves, dict(plan.excluded))
    return _checks(run, bundle, [fleet.device(n) for n in plan.devices], store, locks, fleet)
