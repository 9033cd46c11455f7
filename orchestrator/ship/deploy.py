"""``edgeship deploy``: push a signed bundle to devices, then verify -> activate -> health check.

Per device:

1. connect (host key checked against the fleet's pinned known_hosts);
2. bring the device's trust set up to date (the signed chain from the key store);
3. skip everything when the device already runs this exact bundle;
4. send the signed manifest (after this host checked its signature and every path
   and name: nothing leaves for a device before) and let the agent judge it
   (signature, key, paths, family, version, expiry, runtime) before any file travels;
5. stage the bundle in ``<root>/staging/<deployment>-<version>-<digest12>/``: files
   the device already holds (same SHA-256 in an installed version) are copied
   there by the agent (a copy checked against its hash, never a hard link into an
   installed version), files already complete in the staging folder stay, partial
   uploads (``<file>.part``) resume from their size, the rest is uploaded; every
   staged file is then checked with ``sha256sum`` and re-sent once if it differs;
6. ``edgeship-agent activate``: the agent verifies signature and hashes with
   openssl/sha256sum, installs side by side, switches ``current`` atomically,
   runs the health check and rolls back by itself when it fails.

Every device gets a :class:`DeviceOutcome`; when any fails, :class:`RolloutError`
carries them all.
"""

from __future__ import annotations

import json
import logging
import shlex
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko

from orchestrator.errors import (
    ApprovalError,
    BundleError,
    DeviceDiskFullError,
    EdgeshipError,
    RolloutError,
)
from orchestrator.ship.enroll import agent_status, sync_trust
from orchestrator.ship.results import (
    DeviceDone,
    DeviceOutcome,
    DeviceTimeoutError,
    RolloutResult,
    run_per_device,
)
from orchestrator.ship.ssh import (
    CONNECT_TIMEOUT,
    DeviceSession,
    DeviceUnreachableError,
    connect,
)
from orchestrator.spec.fleet import DeviceConfig, FleetConfig
from registry import bundle_rules
from registry.bundle import ENVELOPE, Bundle, BundleRuleError, signature_problem
from registry.keys import KeyStore
from registry.signing import sha256_bytes

log = logging.getLogger(__name__)

CHUNK = 32 * 1024
# agent exit code -> outcome result
AGENT_RESULTS = {0: "activated", 10: "refused", 11: "rolled_back", 12: "unhealthy", 13: "error"}

# (step name, details) for each step of one device: connected, upload, uploaded, activate
StepCallback = Callable[[str, dict[str, Any]], None]


# (device, bytes of the bundle's files on the device so far, bytes it needs in all)
ByteProgress = Callable[[str, int, int], None]


@dataclass
class DeployOptions:
    """How to push."""

    limit_rate: int | None = None  # bytes per second per device (slow hospital links)
    stage_only: bool = False  # upload and check, but leave activation for later
    parallel: int = 4  # devices at a time
    health_timeout: float = 300.0  # seconds the agent allows the health check
    connect_timeout: float = CONNECT_TIMEOUT  # seconds for the SSH connection and login
    device_timeout: float | None = None  # seconds for one device in all (None: no limit)
    on_bytes: ByteProgress | None = None  # hears each device's upload: (device, sent, total)


class Throttle:
    """Sleeps as needed to keep an upload under ``rate`` bytes per second (None: no limit)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def __call__(self, count: int) -> None:
        self.sent += count
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def _remote_files(sftp: paramiko.SFTPClient, folder: str) -> dict[str, int]:
    """Relative path -> size of every file under ``folder`` on the device."""
    out: dict[str, int] = {}

    def walk(path: str, prefix: str) -> None:
        try:
            entries = sftp.listdir_attr(path)
        except FileNotFoundError:
            return
        for entry in entries:
            rel = f"{prefix}{entry.filename}"
            full = f"{path}/{entry.filename}"
            mode = entry.st_mode or 0
            if stat.S_ISDIR(mode):
                walk(full, rel + "/")
            else:
                out[rel] = int(entry.st_size or 0)

    walk(folder, "")
    return out


def _mkdirs(session: DeviceSession, folder: str, paths: list[str]) -> None:
    for d in sorted({str(PurePosixPath(folder, p).parent) for p in paths} | {folder}):
        session.makedirs(d)


def upload_resumable(
    sftp: paramiko.SFTPClient,
    local: Path,
    remote: str,
    size: int,
    throttle: Throttle,
    outcome: DeviceOutcome,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Upload ``local`` to ``remote`` through ``remote.part``, resuming a partial upload;
    ``progress(n)`` hears every ``n`` bytes the device has (a resumed part at once)."""
    part = remote + ".part"
    offset = 0
    try:
        offset = int(sftp.stat(part).st_size or 0)
    except FileNotFoundError:
        offset = 0
    if offset > size:
        offset = 0
    with local.open("rb") as src, sftp.open(part, "ab" if offset else "wb") as dst:
        dst.set_pipelined(True)
        src.seek(offset)
        if progress is not None and offset:
            progress(offset)
        while block := src.read(CHUNK):
            dst.write(block)
            outcome.bytes_sent += len(block)
            throttle(len(block))
            if progress is not None:
                progress(len(block))
    outcome.bytes_resumed += offset
    outcome.files_sent += 1
    # pipelined SFTP writes can fail without an error (a full disk): check what arrived
    arrived = int(sftp.stat(part).st_size or 0)
    if arrived != size:
        raise OSError(f"{remote}: {arrived} of {size} bytes arrived")
    sftp.posix_rename(part, remote)


def hash_mismatches(
    session: DeviceSession, folder: str, entries: list[dict[str, Any]]
) -> list[str]:
    """Paths whose SHA-256 on the device (``sha256sum``) differs from the manifest."""
    if not entries:
        return []
    names = " ".join(shlex.quote(e["path"]) for e in entries)
    res = session.run_as_agent_user(f"cd {shlex.quote(folder)} && sha256sum -- {names}")
    found = {}
    for line in res.stdout.splitlines():
        digest, _, name = line.partition("  ")
        found[name.strip()] = digest.lstrip("\\")
    return [e["path"] for e in entries if found.get(e["path"]) != e["sha256"]]


def _disk_full(session: DeviceSession, folder: str, needed: int) -> str | None:
    """When the device's disk is full: remove the staging folder, say how full it was."""
    try:
        res = session.run(f"df -Pk {shlex.quote(folder)}", timeout=30)
        fields = res.stdout.strip().splitlines()[-1].split()
        free_kb = int(fields[3])
    except Exception:
        return None
    if free_kb * 1024 >= max(needed, 64 * 1024):
        return None
    session.run_as_agent_user(f"rm -rf {shlex.quote(folder)}", timeout=60)
    return (
        f"no space left on the device: {free_kb} kB free under {session.root} when the "
        f"upload of {needed / 1000:.1f} kB stopped; the staged files were removed, the active "
        "version is untouched"
    )


def bundle_problems(
    bundle: Bundle, store: KeyStore | None, kinds: tuple[str, ...] = (bundle_rules.BUNDLE_KIND,)
) -> list[tuple[str, str]]:
    """Why ``bundle`` must not leave this host, as (refusal code, message); empty when it may.

    Checked before any connection, byte or folder reaches a device: the manifest on disk
    read again within limits and by every rule of :mod:`registry.bundle_rules` (paths,
    names, structure), the same manifest the caller holds (digest), and, when a key store
    is given, its signature by a key the store's trust set allows to sign bundles.
    """
    problems: list[tuple[str, str]] = []
    mpath = bundle.path / "manifest.json"
    if mpath.is_file() and mpath.stat().st_size > bundle_rules.MAX_MANIFEST_BYTES:
        size = mpath.stat().st_size
        limit = bundle_rules.MAX_MANIFEST_BYTES
        return [("too_large", f"{mpath}: {size} bytes; at most {limit} are accepted")]
    if store is not None and store.exists():
        why = signature_problem(bundle.path, store.trust())
        if why is not None:
            code = "missing_signature" if why.startswith("missing signature") else "bad_signature"
            problems.append((code, why))
    try:
        on_disk = Bundle.open(bundle.path)
    except BundleRuleError as exc:
        return [*problems, (exc.code, str(exc).removeprefix("error: "))]
    except BundleError as exc:
        return [*problems, ("malformed", str(exc).removeprefix("error: "))]
    if on_disk.digest != bundle.digest:
        problems.append(
            ("malformed", f"{bundle.path / 'manifest.json'} changed since the bundle was opened")
        )
    problems += [
        (code, f"{bundle.path / 'manifest.json'}: {message}")
        for code, message in bundle_rules.manifest_problems(bundle.manifest, kinds)
    ]
    return problems


def stage_bundle(
    session: DeviceSession,
    bundle: Bundle,
    outcome: DeviceOutcome,
    options: DeployOptions,
    inventory: dict[str, str],
) -> str:
    """Stage the bundle on the device, sending only what it lacks; returns the staging folder.

    ``inventory`` (sha256 -> path, from the agent) names the files the device already holds.
    """
    label = bundle.manifest.get("version", "measure")  # a measurement candidate has no version
    name = f"{bundle.deployment}-{label}-{bundle.digest[:12]}"
    folder = f"{session.root}/staging/{name}"
    entries = bundle.files()
    expected = {e["path"]: e for e in entries}
    envelope = sorted(n for n in ENVELOPE if (bundle.path / n).is_file())
    sftp = session.sftp()
    manifest = (bundle.path / "manifest.json").read_bytes()
    if sha256_bytes(manifest) != bundle.digest:
        raise BundleError(f"error: {bundle.path / 'manifest.json'} changed since it was checked")
    try:
        # only the signed envelope, in one flat folder, until the device accepts the manifest
        session.makedirs(folder)
        for env_name in envelope:
            data = (
                manifest if env_name == "manifest.json" else (bundle.path / env_name).read_bytes()
            )
            session.put_bytes(data, f"{folder}/{env_name}")
    except OSError as exc:
        needed = sum(int(e["size"]) for e in entries)
        full = None if session.aborted else _disk_full(session, folder, needed)
        if full is None:
            raise
        raise DeviceDiskFullError(full) from exc
    # the device judges the signed manifest before any file travels
    check = session.agent(f"verify --manifest-only {shlex.quote(folder)}")
    if check.code != 0:
        answer = check.json_or_none() or {}
        if check.code != 10 and not session.aborted:  # the agent could not even check it
            full = _disk_full(session, folder, sum(int(e["size"]) for e in entries))
            if full is not None:
                raise DeviceDiskFullError(full)
        outcome.agent = answer
        outcome.result = "refused" if check.code == 10 else "error"
        outcome.refusal = answer.get("refusal")
        outcome.version = answer.get("current")
        outcome.message = str(answer.get("message") or check.stderr.strip())
        session.run_as_agent_user(f"rm -rf {shlex.quote(folder)}")
        raise DeviceDone()
    _mkdirs(session, folder, list(expected))
    present = _remote_files(sftp, folder)
    keep = set(expected) | {p + ".part" for p in expected} | set(envelope)
    stray = [p for p in present if p not in keep]
    if stray:
        session.run_as_agent_user(
            "rm -f -- " + " ".join(shlex.quote(f"{folder}/{p}") for p in stray)
        )
    complete = {
        p for p, size in present.items() if p in expected and size == int(expected[p]["size"])
    }
    to_link = [e for e in entries if e["path"] not in complete and e["sha256"] in inventory]
    if to_link:
        plan = [{"sha256": e["sha256"], "dest": f"staging/{name}/{e['path']}"} for e in to_link]
        plan_path = f"{session.root}/staging/.plan-{name}.json"
        session.put_bytes(json.dumps(plan).encode(), plan_path)
        res = session.agent(f"link --plan {shlex.quote(plan_path)}")
        answer = res.json_or_none() or {}
        if res.code == 0:
            missing = set(answer.get("missing", []))
        else:  # nothing copied for sure: a full disk stops here, anything else sends the files
            needed = sum(int(e["size"]) for e in entries)
            full = None if session.aborted else _disk_full(session, folder, needed)
            if full is not None:
                raise DeviceDiskFullError(full)
            outcome.notes.append(
                "copying installed files on the device failed ("
                + str(answer.get("message") or res.stderr.strip())[:200]
                + "); sending them instead"
            )
            missing = {f"staging/{name}/{e['path']}" for e in to_link}
        outcome.files_linked = len(to_link) - len(missing)
        complete |= {e["path"] for e in to_link if f"staging/{name}/{e['path']}" not in missing}
    outcome.files_present = len([p for p in complete if p in present])
    throttle = Throttle(options.limit_rate)
    linked = {e["path"] for e in to_link} & complete
    total = sum(int(e["size"]) for e in entries if e["path"] not in complete)
    arrived = 0

    def advanced(count: int) -> None:
        nonlocal arrived
        arrived += count
        if options.on_bytes is not None:
            options.on_bytes(outcome.device, min(arrived, total), total)

    def send(entry: dict[str, Any]) -> None:
        upload_resumable(
            sftp,
            bundle.path / entry["path"],
            f"{folder}/{entry['path']}",
            int(entry["size"]),
            throttle,
            outcome,
            advanced,
        )

    try:
        for entry in entries:
            if entry["path"] not in complete:
                send(entry)
    except OSError as exc:
        needed = sum(int(e["size"]) for e in entries if e["path"] not in complete)
        full = None if session.aborted else _disk_full(session, folder, needed)
        if full is None:
            raise
        raise DeviceDiskFullError(full) from exc
    # files the agent copied from installed versions were checked against their hash
    bad = hash_mismatches(session, folder, [e for e in entries if e["path"] not in linked])
    if bad:
        outcome.notes.append("re-sent after a hash mismatch: " + ", ".join(bad))
        session.run_as_agent_user("rm -f -- " + " ".join(shlex.quote(f"{folder}/{p}") for p in bad))
        for entry in entries:
            if entry["path"] in bad:
                send(entry)
        still = hash_mismatches(session, folder, [e for e in entries if e["path"] in bad])
        if still:
            # the local bundle itself differs from its manifest: the agent refuses it and says so
            outcome.notes.append("still differ after re-sending: " + ", ".join(still))
    outcome.staged_at = folder
    return folder


def _activate(
    session: DeviceSession, folder: str, outcome: DeviceOutcome, options: DeployOptions
) -> None:
    outcome.stage = "activate"
    res = session.agent(f"activate {shlex.quote(folder)} --timeout {options.health_timeout:g}")
    answer = res.json_or_none()
    outcome.agent = answer
    if answer is None:
        outcome.result = "error"
        tail = res.stderr.strip()[-500:]
        outcome.message = f"agent exited with {res.code} without an answer" + (
            f": {tail}"
            if tail
            else " (it stopped mid-activation; the device recovers on the next agent command)"
        )
        return
    outcome.result = AGENT_RESULTS.get(res.code, "error")
    if res.code == 0 and answer.get("result") == "unchanged":
        outcome.result = "unchanged"
    outcome.refusal = answer.get("refusal")
    outcome.health = answer.get("health")
    outcome.version = answer.get("version") if res.code != 10 else answer.get("current")
    if res.code == 10:
        outcome.message = str(answer.get("message", ""))
    elif res.code in (11, 12):
        reason = (answer.get("health") or {}).get("reason")
        outcome.message = f"health check of version {answer.get('failed_version')} failed: {reason}"
        refused = answer.get("rollback_refused")
        if refused:
            outcome.message += "; " + str(refused.get("message"))
    elif res.code not in (0,):
        outcome.message = str(answer.get("message", ""))


def deploy_device(
    fleet: FleetConfig,
    device: DeviceConfig,
    bundle: Bundle,
    store: KeyStore | None,
    options: DeployOptions,
    outcome: DeviceOutcome,
    on_step: StepCallback | None = None,
) -> None:
    """One device: connect -> trust -> (skip if it runs this bundle) -> upload -> activate.

    Fills in ``outcome``; raises what :func:`run_device` turns into an outcome (unreachable,
    host key, timeout). ``options.device_timeout`` closes the connection when the device
    takes longer; ``on_step`` hears each step (for a rollout's journal).
    """
    started = time.monotonic()
    step = on_step or (lambda name, info: None)
    problems = bundle_problems(bundle, store)
    if problems:
        outcome.result, outcome.refusal = "refused", problems[0][0]
        outcome.message = "refused on this host, nothing sent: " + "; ".join(m for _, m in problems)
        raise DeviceDone()
    with connect(device, Path(fleet.known_hosts), timeout=options.connect_timeout) as session:
        timer = None
        if options.device_timeout:
            left = options.device_timeout - (time.monotonic() - started)
            timer = threading.Timer(max(left, 0.01), session.abort)
            timer.daemon = True
            timer.start()
        try:
            _deploy_session(session, fleet, bundle, store, options, outcome, step)
        except DeviceDone:
            raise
        except Exception as exc:
            if session.aborted:
                raise DeviceTimeoutError(
                    f"no result within {options.device_timeout:g}s (during {outcome.stage}); "
                    "the connection was closed"
                ) from exc
            transport = session.connection.transport
            if not isinstance(exc, EdgeshipError) and (
                transport is None or not transport.is_active()
            ):
                raise DeviceUnreachableError(
                    f"connection lost during {outcome.stage}: {type(exc).__name__}: {exc}"
                ) from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()


def _deploy_session(
    session: DeviceSession,
    fleet: FleetConfig,
    bundle: Bundle,
    store: KeyStore | None,
    options: DeployOptions,
    outcome: DeviceOutcome,
    step: StepCallback,
) -> None:
    status = agent_status(session, inventory=True)
    if status is None or not status.get("enrolled"):
        outcome.result = "error"
        outcome.message = "device is not enrolled; run: edgeship enroll fleet=" + fleet.name
        return
    current = status.get("current")
    outcome.from_version = current
    step(
        "connected",
        {
            "from_version": current,
            "deployment": status.get("deployment"),
            "trust_serial": (status.get("trust") or {}).get("serial"),
        },
    )
    if store is not None and store.exists():
        outcome.stage = "trust"
        sync_trust(session, store, outcome, status)
    installed = (status.get("versions") or {}).get(str(bundle.version)) or {}
    if (
        current == bundle.version
        and installed.get("manifest_sha256") == bundle.digest
        and not status.get("pending_health")
    ):
        outcome.result = "unchanged"
        outcome.version = current
        outcome.message = "already running this bundle"
        return
    outcome.stage = "upload"
    step("upload", {})
    folder = stage_bundle(session, bundle, outcome, options, status.get("inventory") or {})
    step(
        "uploaded",
        {
            "bytes_sent": outcome.bytes_sent,
            "bytes_resumed": outcome.bytes_resumed,
            "files_sent": outcome.files_sent,
            "files_linked": outcome.files_linked,
            "files_present": outcome.files_present,
        },
    )
    if options.stage_only:
        outcome.result = "staged"
        outcome.version = current
        return
    step("activate", {})
    _activate(session, folder, outcome, options)


def require_approval(fleet: FleetConfig, bundle: Bundle, store: KeyStore | None) -> None:
    """Refuse (ApprovalError) a bundle without the approval its fleet requires.

    What the fleet requires is the stricter of its file (``requires: [approved]``,
    ``two_person``) and the root of trust (what devices enforce). Checked before any
    connection is made; devices check the same approval again on their own.
    """
    from registry.approval import approval_problem, fleet_requirement

    trust = store.trust() if store is not None and store.exists() else None
    need = fleet_requirement(fleet, trust)
    if not need.approved or bundle.manifest.get("kind") != bundle_rules.BUNDLE_KIND:
        return
    if trust is None:
        raise ApprovalError(
            f"error: fleet {fleet.name} requires {need.describe()}; no key store here to "
            "check the approval against (set EDGESHIP_KEYS_DIR)"
        )
    why = approval_problem(bundle.path, bundle.manifest, trust, need.two_person)
    if why is not None:
        raise ApprovalError(
            f"error: fleet {fleet.name} requires {need.describe()}; {bundle.deployment} "
            f"version {bundle.version} is refused before anything is sent: {why}\n"
            f"  approve it with: edgeship approve deployment={bundle.deployment} "
            f'version={bundle.version} --comment "..." --as APPROVER'
        )


def deploy(
    fleet: FleetConfig,
    devices: list[DeviceConfig],
    bundle: Bundle,
    store: KeyStore | None = None,
    options: DeployOptions | None = None,
) -> RolloutResult:
    """Deploy ``bundle`` to ``devices``; raises RolloutError (with every outcome) on any failure.

    ``store`` (the signing key store) lets the deploy bring devices' trust sets up to
    date first; without it devices keep the trust set they have.
    """
    opts = options or DeployOptions()
    require_approval(fleet, bundle, store)
    problems = bundle_problems(bundle, store)
    if problems:
        lines = [f"  {message} ({code})" for code, message in problems]
        raise BundleError(
            f"error: deploy: the bundle at {bundle.path} is refused before anything is sent "
            f"({len(problems)} problem(s))\n" + "\n".join(lines)
        )

    def work(device: DeviceConfig, outcome: DeviceOutcome) -> None:
        deploy_device(fleet, device, bundle, store, opts, outcome)

    result = RolloutResult("deploy", run_per_device(devices, work, opts.parallel))
    if result.failed:
        raise RolloutError("deploy", result)
    return result
