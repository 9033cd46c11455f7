"""``edgeship trace DEVICE``: from what runs on a device back to the evidence behind it.

The chain, each link checked where it can be:

1. the device: its agent says which deployment and version are current, and the
   manifest digest it installed; the manifest itself is read from the device and
   hashed again;
2. the bundle: the manifest's Ed25519 signature is verified here against the key
   store's trust set (which key, whether it is still trusted); the issued bundle
   with that digest is looked up in the bundle store's ledger;
3. the build: the signed manifest's provenance names the MLflow run, the git
   commit (and whether the tree was dirty), the evaluation data and weights
   hashes, and the validation metrics and gates; the MLflow run is fetched and
   compared (its git tag, the bundle digest it recorded, the registered model
   version and its aliases);
4. the rollouts: the journals that put this version on this device.

A device that does not answer is traced from the last rollout journal that
reached it, and the report says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import EdgeshipError, RolloutJournalError, TraceError
from orchestrator.ship.results import DeviceOutcome, run_device
from orchestrator.ship.rollout.journal import Journal, journals, rollouts_dir
from orchestrator.ship.ssh import connect
from orchestrator.ship.status import DeviceStatus, query_device
from orchestrator.spec.fleet import FleetConfig, device_labels
from registry.signing import load_public_pem, sha256_bytes, verify

log = logging.getLogger(__name__)


@dataclass
class Check:
    """One link of the chain that was checked."""

    name: str
    ok: bool | None  # None: could not be checked
    detail: str


@dataclass
class Trace:
    """Everything found about what runs on one device."""

    device: dict[str, Any]
    running: dict[str, Any]
    bundle: dict[str, Any]
    provenance: dict[str, Any]
    mlflow: dict[str, Any]
    rollouts: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)
    generated_at: str = ""
    source: str = "device"  # device | journal (the device did not answer)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def warnings(self) -> list[str]:
        """What holds but a reviewer must know: a build from a dirty tree, bundled anyway."""
        out = []
        prov = self.provenance or {}
        git = prov.get("git") or {}
        if git.get("dirty"):
            changes = ", ".join(str(c) for c in (git.get("changes") or [])[:5])
            out.append(
                "built from a git tree with uncommitted changes"
                + (f" ({changes})" if changes else "")
            )
        if prov.get("allow_dirty"):
            out.append("bundled with --allow-dirty despite the uncommitted changes")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok, "warnings": self.warnings}


def _read_manifest(fleet: FleetConfig, device: Any, timeout: float) -> bytes | None:
    holder: dict[str, bytes] = {}

    def work(dev: Any, outcome: DeviceOutcome) -> None:
        with connect(dev, Path(fleet.known_hosts), timeout=timeout) as session:
            with session.sftp().open(f"{session.root}/current/manifest.json", "rb") as fh:
                holder["data"] = fh.read()
            outcome.result = "ok"

    outcome = run_device(device, work)
    return holder.get("data") if outcome.result == "ok" else None


def _rollouts_for(
    project: Path, device: str, version: int | None, damaged: list[str] | None = None
) -> list[dict[str, Any]]:
    """The journal entries that put versions on ``device``; damaged journals go to ``damaged``."""
    out = []
    for path in journals(rollouts_dir(project)):
        try:
            entries = Journal(path).entries()
        except OSError:
            continue
        except RolloutJournalError as exc:
            if damaged is not None:
                damaged.append(str(exc).splitlines()[0].removeprefix("error: "))
            continue
        if not entries or entries[0].get("event") != "rollout_started":
            continue
        started = entries[0]
        status = next(
            (e.get("status") for e in reversed(entries) if e.get("event") == "rollout_finished"),
            "unfinished",
        )
        bundle_version = started["bundle"]["version"]
        journal = {
            "rollout": path.stem,
            "bundle_version": bundle_version,
            "bundle_digest": started["bundle"]["digest"],
            "strategy": started["strategy"]["name"],
            "fleet": started["fleet"]["name"],
            "rollout_status": status,
            "operator": started.get("operator") or {"user": started.get("user")},
        }
        for e in entries:
            if e.get("event") == "device_done" and e.get("device") == device:
                current = version is not None and e.get("version") == version == bundle_version
                change = _change(e, bundle_version)
                out.append(_entry(journal, e, e.get("result"), e.get("version"), change, current))
            elif e.get("event") == "device_rollback" and e.get("device") == device:
                to = e.get("version") or e.get("to_version")
                change = (
                    f"{_v(e.get('from_version'))} -> {_v(e.get('version'))}"
                    if e.get("result") == "rolled_back"
                    else f"{e.get('result')}: {_v(to)}"
                )
                out.append(_entry(journal, e, "rollback", to, change, False))
    return out


def _entry(
    journal: dict[str, Any],
    e: dict[str, Any],
    result: Any,
    version: Any,
    change: str,
    current: bool,
) -> dict[str, Any]:
    """One journal entry that moved a device, with the rollout it belongs to."""
    return {
        "rollout": journal["rollout"],
        "at": e.get("ts"),
        "result": result,
        "version": version,
        "from_version": e.get("from_version"),
        **{k: v for k, v in journal.items() if k != "rollout"},
        "ok": e.get("ok"),
        "change": change,
        "current": current,
    }


def _v(version: Any) -> str:
    return "-" if version is None else f"v{version}"


def _change(e: dict[str, Any], bundle_version: int) -> str:
    """How a device's version moved in one journal entry, for people."""
    before, after = _v(e.get("from_version")), _v(e.get("version"))
    if e.get("result") == "rolled_back":
        return f"{before} -> v{bundle_version} (health check failed) -> {after}"
    if e.get("result") in ("activated", "unchanged"):
        return f"{before} -> {after}"
    return f"stayed {after}"


def _journal_deployment(project: Path, rollout_id: str) -> str | None:
    path = rollouts_dir(project) / f"{rollout_id}.jsonl"
    entries = Journal(path).entries() if path.is_file() else []
    return str(entries[0]["deployment"]) if entries else None


def _ledger_digest(bundles: Path, deployment: str, version: int) -> str | None:
    from registry.bundle import Ledger

    folder = bundles / deployment
    if not folder.is_dir():
        return None
    for entry in Ledger(folder, deployment).read()["issued"]:
        if int(entry["version"]) == version:
            return str(entry["manifest_sha256"])
    return None


def _find_local_bundle(bundles: Path, deployment: str, digest: str) -> dict[str, Any] | None:
    from registry.bundle import Ledger

    folder = bundles / deployment
    ledger = Ledger(folder, deployment).read() if folder.is_dir() else {"issued": []}
    for entry in ledger["issued"]:
        if entry.get("manifest_sha256") == digest:
            path = folder / str(entry["version"])
            return entry | {"path": str(path), "present": (path / "manifest.json").is_file()}
    return None


def trace_device(
    project: Path,
    fleet: FleetConfig,
    name: str,
    store: Any | None,
    bundles: Path,
    tracker: Any | None = None,
    timeout: float = 15.0,
) -> Trace:
    """Follow what runs on device ``name`` back to its evidence (see the module docstring)."""
    device = fleet.device(name)
    status: DeviceStatus = query_device(fleet, device, timeout)
    checks: list[Check] = []
    reachable = status.state in ("running", "idle")
    checks.append(
        Check(
            "device answers",
            reachable,
            f"agent status over SSH in {status.seconds:.1f}s"
            if reachable
            else f"{status.state}: {status.message}",
        )
    )
    device_info = {
        "name": device.name,
        "address": status.address,
        "family": device.family,
        "labels": device_labels(device),
        "groups": list(device.groups),
        "fleet": fleet.name,
        "install_root": device.install_root,
        "state": status.state,
        "message": status.message,
    }
    manifest: dict[str, Any] | None = None
    digest = status.manifest_sha256
    source = "device"
    damaged: list[str] = []
    journal_hist = _rollouts_for(project, device.name, status.version, damaged)
    for problem in damaged:
        checks.append(Check("rollout journal", None, f"not read: {problem}"))
    if reachable and status.version is not None:
        data = _read_manifest(fleet, device, timeout)
        if data is not None:
            seen = sha256_bytes(data)
            checks.append(
                Check(
                    "manifest on the device",
                    seen == digest,
                    f"current/manifest.json hashes to {seen[:16]}; the agent installed "
                    f"{(digest or '-')[:16]}",
                )
            )
            manifest = json.loads(data)
    elif not reachable:
        last = next((r for r in reversed(journal_hist) if r["ok"]), None)
        if last is not None and last["version"] is not None:
            source = "journal"
            status.version = int(last["version"])
            status.deployment = _journal_deployment(project, last["rollout"])
            if last["version"] == last["bundle_version"]:
                digest = last["bundle_digest"]
            elif status.deployment:
                digest = _ledger_digest(bundles, status.deployment, status.version)
    running = {
        "deployment": status.deployment,
        "version": status.version,
        "previous": status.previous,
        "installed": status.installed,
        "health": status.health,
        "health_reason": status.health_reason,
        "latency_ms": status.latency_ms,
        "last_change": status.last_change,
        "last_event": status.last_event,
        "manifest_sha256": digest,
        "runtime": (
            (((status.agent or {}).get("versions") or {}).get(str(status.version)) or {}).get(
                "health"
            )
            or {}
        ).get("runtime"),
        "engine": status.engine,  # the TensorRT engine the device built: sha256, version, GPU
    }
    if status.version is None:
        raise TraceError(
            f"error: {device.name}: no version is active and no rollout journal names one "
            f"({status.state}{': ' + status.message if status.message else ''})"
        )
    if reachable:
        checks.append(
            Check(
                "health check",
                status.health == "pass" if status.health else None,
                f"{status.health or 'never run'}"
                + (f" ({status.latency_ms:.2f} ms)" if status.latency_ms else "")
                + (f": {status.health_reason}" if status.health_reason else ""),
            )
        )
    bundle_info: dict[str, Any] = {"manifest_sha256": digest}
    deployment = status.deployment or (manifest or {}).get("deployment")
    local = _find_local_bundle(bundles, str(deployment), digest) if digest and deployment else None
    if manifest is None and local is not None and local.get("present"):
        path = Path(local["path"]) / "manifest.json"
        if sha256_bytes(path.read_bytes()) == digest:
            manifest = json.loads(path.read_bytes())
    bundle_info["issued"] = local
    checks.append(
        Check(
            "issued by this bundle store",
            local is not None,
            f"{bundles / str(deployment)} ledger: version {local['version']} issued "
            f"{local['created_at']} with key {local['key_id']}"
            if local
            else f"no bundle with manifest sha256 {str(digest)[:16]} in {bundles}",
        )
    )
    if manifest is not None:
        kid = str((manifest.get("signing") or {}).get("key_id"))
        bundle_info.update(
            {
                "version": manifest.get("version"),
                "created_at": manifest.get("created_at"),
                "expires_at": manifest.get("expires_at"),
                "key_id": kid,
                "algorithm": (manifest.get("signing") or {}).get("algorithm"),
                "target": manifest.get("target"),
                "model": manifest.get("model"),
                "files": len(manifest.get("files") or []),
            }
        )
        checks.append(_signature_check(manifest, digest, kid, store, local))
        if local and local.get("present"):
            bundle_info["approval"] = _approval(Path(local["path"]), manifest, store, checks)
    provenance = (manifest or {}).get("provenance") or {}
    mlflow_info = _mlflow(tracker, provenance, digest, manifest, checks)
    trace = Trace(
        device=device_info,
        running=running,
        bundle=bundle_info,
        provenance=provenance,
        mlflow=mlflow_info,
        rollouts=journal_hist,
        checks=checks,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source=source,
    )
    delivered = [r for r in journal_hist if r["current"] and r["ok"]]
    checks.append(
        Check(
            "delivered by a rollout",
            bool(delivered) or None,
            f"rollout {delivered[-1]['rollout']} at {delivered[-1]['at']}"
            if delivered
            else "no rollout journal here records this version on this device "
            "(deployed with edgeship deploy, or journals kept elsewhere)",
        )
    )
    return trace


def _approval(
    path: Path, manifest: dict[str, Any], store: Any | None, checks: list[Check]
) -> dict[str, Any] | None:
    """The signed approval beside the issued bundle, checked against the key store's root."""
    from registry.approval import approval_problem, read_approval

    doc = read_approval(path)
    if doc is None:
        checks.append(Check("approval", None, f"no approval in {path}"))
        return None
    approver = doc.get("approver") or {}
    who = f"{approver.get('name')} ({', '.join(approver.get('roles') or [])})"
    if store is None or not store.exists():
        checks.append(Check("approval", None, f"approved by {who}; no key store to check it"))
        return doc
    why = approval_problem(path, manifest, store.trust())
    checks.append(
        Check(
            "approval",
            why is None,
            f"approved by {who} at {doc.get('approved_at')}: {doc.get('comment')}"
            if why is None
            else why,
        )
    )
    return doc


def _signature_check(
    manifest: dict[str, Any], digest: str | None, kid: str, store: Any | None, local: Any
) -> Check:
    if store is None or not store.exists():
        return Check("signature", None, f"signed by {kid}; no key store here to check it")
    trust = store.trust()
    state = (
        "revoked"
        if kid in trust.revoked
        else ("active" if kid == trust.active else "trusted" if kid in trust.keys else "unknown")
    )
    if kid not in trust.keys:
        return Check("signature", False, f"signed by {kid}, {state} in root version {trust.serial}")
    sig_path = Path(local["path"]) / "manifest.json.sig" if local and local.get("present") else None
    if sig_path is None or not sig_path.is_file():
        return Check(
            "signature",
            None,
            f"signed by {kid} ({state} in root version {trust.serial}); signature file not here",
        )
    data = (sig_path.parent / "manifest.json").read_bytes()
    good = sha256_bytes(data) == digest and verify(
        load_public_pem(trust.keys[kid]), data, sig_path.read_bytes()
    )
    return Check(
        "signature",
        good,
        f"Ed25519 by key {kid} ({state} in root version {trust.serial}): "
        + ("verifies" if good else "DOES NOT verify"),
    )


def _mlflow(
    tracker: Any | None,
    provenance: dict[str, Any],
    digest: str | None,
    manifest: dict[str, Any] | None,
    checks: list[Check],
) -> dict[str, Any]:
    ml = provenance.get("mlflow") or {}
    run_id = ml.get("run_id")
    if not run_id:
        checks.append(Check("MLflow run", None, "the build was not recorded in MLflow"))
        return {}
    if tracker is None:
        checks.append(Check("MLflow run", None, f"run {run_id}; MLflow not consulted"))
        return {"run_id": run_id}
    try:
        run = tracker.run_evidence(run_id)
    except EdgeshipError as exc:
        checks.append(Check("MLflow run", False, str(exc).removeprefix("error: ")))
        return {"run_id": run_id, "error": str(exc)}
    tags = run["tags"]
    version = (manifest or {}).get("version")
    recorded = tags.get(f"edgeship.bundle.{version}.sha256")
    checks.append(
        Check(
            "MLflow run",
            run["status"] == "FINISHED" and tags.get("edgeship.status") == "passed",
            f"run {run_id} in experiment {run['experiment']}: {run['status']}, "
            f"edgeship.status {tags.get('edgeship.status')}",
        )
    )
    checks.append(
        Check(
            "MLflow records this bundle",
            recorded == digest if recorded else None,
            f"tag edgeship.bundle.{version}.sha256 = {str(recorded)[:16]}"
            if recorded
            else f"no edgeship.bundle.{version}.sha256 tag on the run",
        )
    )
    commit = (provenance.get("git") or {}).get("commit")
    if commit:
        checks.append(
            Check(
                "git commit",
                tags.get("git.commit") == commit,
                f"manifest {commit[:12]}, MLflow tag git.commit {str(tags.get('git.commit'))[:12]}",
            )
        )
    out = {"run": run}
    if ml.get("model_name") and ml.get("model_version"):
        out["model_version"] = tracker.version_evidence(
            str(ml["model_name"]), str(ml["model_version"])
        )
    return out


def render_report(template: str, **context: Any) -> str:
    """A self-contained HTML report from ``templates/<template>`` (the trace, the audit).

    Everything in it (names, labels, what a device answered) is escaped: autoescape is on
    for every template, whatever its name, and the templates mark nothing ``safe``.
    """
    from jinja2 import ChainableUndefined, Environment, PackageLoader

    env = Environment(
        loader=PackageLoader("orchestrator.ship", "templates"),
        undefined=ChainableUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: f"{v:.4g}" if isinstance(v, int | float) else v
    return env.get_template(template).render(**context)


def render_html(trace: Trace) -> str:
    """The trace as a self-contained HTML report (``templates/trace.html.j2``)."""
    return render_report("trace.html.j2", t=trace.to_json())
