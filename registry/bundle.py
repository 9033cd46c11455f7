"""Bundles: a passing artifact, a manifest of every file, and a detached Ed25519 signature.

Where bundles live: ``$EDGESHIP_BUNDLES``, else ``bundles/`` beside the artifacts
folder (``<project>/bundles`` by default; ``$EDGESHIP_ARTIFACTS/../bundles`` when
that is set). Every issued version is kept::

    bundles/<deployment>/<version>/manifest.json       what the signature covers
    bundles/<deployment>/<version>/manifest.json.sig   raw 64-byte Ed25519 signature
    bundles/<deployment>/<version>/<artifact files>    model/, runtime.json, smoke/, ...
    bundles/<deployment>/<version>/rollback.json(.sig) optional signed rollback order
    bundles/<deployment>/<version>/approval.json(.sig) optional signed approval (registry.approval)
    bundles/<deployment>/ledger.json                   every version issued, never reused

Versions are integers, per deployment, strictly increasing: the next one is one
more than the highest ever issued (the ledger, the folders, and the MLflow runs
of the deployment). Devices refuse a version lower than the one they run unless
a signed rollback order names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator import project
from orchestrator.core.fsutil import write_json
from orchestrator.core.model_file import sha256_file
from orchestrator.errors import BundleError
from registry import bundle_rules as rules
from registry.keys import KeyStore, TrustSet
from registry.repository import Repository
from registry.signing import (
    SIG_SUFFIX,
    canonical_json,
    load_public_pem,
    sha256_bytes,
    sign,
    verify,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE = MANIFEST + SIG_SUFFIX
ROLLBACK = "rollback.json"
APPROVAL = "approval.json"  # a named approver's signature (registry.approval)
ENVELOPE = frozenset(
    {MANIFEST, SIGNATURE, ROLLBACK, ROLLBACK + SIG_SUFFIX, APPROVAL, APPROVAL + SIG_SUFFIX}
)
MANIFEST_KIND = rules.BUNDLE_KIND
MEASURE_KIND = rules.MEASURE_KIND  # a candidate measured on a lab device, never installed
ROLLBACK_KIND = "edgeship.rollback"
MEASURE_VALID_HOURS = 24.0
DEFAULT_VALID_DAYS = 90
ENV_BUNDLES = project.ENV_BUNDLES
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def bundles_root(root: Path) -> Path:
    """``$EDGESHIP_BUNDLES``, else the ``bundles`` folder beside the artifacts folder."""
    return project.bundles_root(root)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """Parse a manifest timestamp (``2026-01-31T12:00:00Z``)."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Bundle:
    """An issued bundle on disk."""

    path: Path
    manifest: dict[str, Any]
    digest: str  # sha256 of manifest.json's bytes

    @property
    def deployment(self) -> str:
        return str(self.manifest["deployment"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def key_id(self) -> str:
        return str(self.manifest["signing"]["key_id"])

    @property
    def signature(self) -> bytes:
        return (self.path / SIGNATURE).read_bytes()

    def files(self) -> list[dict[str, Any]]:
        """The manifest's file entries: path, sha256, size."""
        return list(self.manifest["files"])

    @classmethod
    def open(cls, path: Path) -> Bundle:
        """Read a bundle folder's manifest within limits and check its rules (names, paths,
        structure; see :mod:`registry.bundle_rules`). The signature is not checked here; see
        :func:`signature_problem` and :func:`verify_bundle`."""
        mpath = path / MANIFEST
        if mpath.is_symlink() or not mpath.is_file():
            raise BundleError(f"error: {path}: no {MANIFEST}; not a bundle folder")
        manifest, data = read_manifest_bytes(mpath)
        problems = rules.manifest_problems(manifest, (MANIFEST_KIND, MEASURE_KIND))
        if problems:
            raise BundleRuleError(problems[0][0], _problem_text(mpath, problems))
        return cls(path, manifest, sha256_bytes(data))


class BundleRuleError(BundleError):
    """A bundle breaks a rule of :mod:`registry.bundle_rules`; ``code`` is the agent's refusal code
    for the first problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _problem_text(path: Path, problems: list[tuple[str, str]]) -> str:
    lines = [f"{path}: {message} ({code})" for code, message in problems]
    if len(lines) == 1:
        return "error: " + lines[0]
    return f"error: {len(lines)} problems\n" + "\n".join("  " + line for line in lines)


def read_manifest_bytes(mpath: Path, limit: int = rules.MAX_MANIFEST_BYTES) -> tuple[Any, bytes]:
    """(parsed JSON, raw bytes) of a manifest or order: size and nesting depth checked on the raw
    bytes before parsing, duplicate keys and NaN refused."""
    size = mpath.stat().st_size
    if size > limit:
        raise BundleRuleError(
            "too_large", f"error: {mpath}: {size} bytes; at most {limit} are accepted (too_large)"
        )
    with mpath.open("rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BundleRuleError("too_large", f"error: {mpath}: more than {limit} bytes (too_large)")
    why = rules.json_depth_problem(data)
    if why:
        raise BundleRuleError(
            "too_deep", f"error: {mpath}: {why}; refused before parsing (too_deep)"
        )
    try:
        parsed = rules.strict_json(data)
    except rules.DuplicateKey as exc:
        raise BundleRuleError("duplicate_key", f"error: {mpath}: {exc} (duplicate_key)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleRuleError("malformed", f"error: {mpath}: invalid JSON ({exc})") from exc
    if not isinstance(parsed, dict) or parsed.get("kind") not in (
        MANIFEST_KIND,
        MEASURE_KIND,
        ROLLBACK_KIND,
    ):
        raise BundleRuleError("malformed", f"error: {mpath}: kind: expected '{MANIFEST_KIND}'")
    return parsed, data


# -- versions --------------------------------------------------------------------------------


class Ledger:
    """Every version issued for one deployment (``bundles/<deployment>/ledger.json``)."""

    def __init__(self, folder: Path, deployment: str) -> None:
        self.folder = folder
        self.deployment = deployment
        self.path = folder / "ledger.json"

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"deployment": self.deployment, "issued": [], "rollbacks": [], "approvals": []}
        data = json.loads(self.path.read_text())
        data.setdefault("rollbacks", [])
        data.setdefault("approvals", [])
        return dict(data)

    def highest(self) -> int:
        """The highest version ever issued (ledger entries and version folders), 0 if none."""
        issued = [int(e["version"]) for e in self.read()["issued"]]
        folders = [int(p.name) for p in self.folder.glob("*") if p.is_dir() and p.name.isdigit()]
        return max([0, *issued, *folders])

    def append(self, section: str, entry: dict[str, Any]) -> None:
        data = self.read()
        data[section].append(entry)
        write_json(self.path, data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the deployment's bundle lock (one issuer at a time)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def issued_versions(root: Path, deployment: str) -> list[int]:
    """Version folders of a deployment, ascending."""
    folder = root / deployment
    return sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit())


def find_bundle(root: Path, deployment: str, version: int | None = None) -> Bundle:
    """The bundle of ``deployment`` at ``version`` (default: the highest issued)."""
    versions = issued_versions(root, deployment)
    if not versions:
        raise BundleError(
            f"error: no bundles of {deployment} in {root / deployment}; "
            f"make one with: edgeship bundle deployment={deployment}"
        )
    if version is None:
        version = versions[-1]
    if version not in versions:
        shown = ", ".join(str(v) for v in versions)
        raise BundleError(f"error: {deployment} has no bundle version {version}; issued: {shown}")
    return Bundle.open(root / deployment / str(version))


# -- making a bundle ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"error: {path} is missing; is this a complete artifact?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"error: {path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(f"error: {path}: expected a JSON object")
    return data


def artifact_files(artifact: Path) -> list[Path]:
    """Every regular file of an artifact folder (relative), sorted; refuses links."""
    out = []
    for path in sorted(artifact.rglob("*")):
        rel = path.relative_to(artifact)
        if path.is_symlink():
            raise BundleError(f"error: {path} is a symbolic link; artifacts hold plain files only")
        if path.is_file():
            if rel.parts[0].startswith(".") or rel.name in ENVELOPE:
                continue
            out.append(rel)
    problems = [
        ("unsafe_path", f"{rel.as_posix()}: {why}")
        for rel in out
        if (why := rules.path_problem(rel.as_posix()))
    ]
    problems += rules.collision_problems([rel.as_posix() for rel in out], str(artifact))
    if problems:
        raise BundleError(_problem_text(artifact, problems))
    return out


def build_manifest(
    artifact: Path,
    version: int,
    key_id: str,
    created: datetime,
    valid_days: float,
) -> dict[str, Any]:
    """The manifest of an artifact folder: files with hashes, provenance, compatibility."""
    runtime = _read_json(artifact / "runtime.json")
    validation = _read_json(artifact / "validation.json")
    build = _read_json(artifact / "build.json")
    _read_json(artifact / "smoke" / "smoke.json")
    if build.get("status") != "passed" or validation.get("passed") is not True:
        raise BundleError(
            f"error: {artifact}: build.json status is '{build.get('status')}' and "
            f"validation.json passed is {validation.get('passed')}; only passing builds are bundled"
        )
    files = [
        {
            "path": rel.as_posix(),
            "sha256": sha256_file(artifact / rel),
            "size": (artifact / rel).stat().st_size,
        }
        for rel in artifact_files(artifact)
    ]
    target = runtime.get("target", {})
    manifest = {
        "schema": 1,
        "kind": MANIFEST_KIND,
        "deployment": runtime["deployment"],
        "version": version,
        "created_at": _iso(created),
        "expires_at": _iso(created + timedelta(days=valid_days)),
        "target": {
            "family": target.get("family"),
            "name": target.get("name"),
            "runtime": target.get("runtime"),
            "device": target.get("device"),
            "runtime_requirement": runtime.get("runtime_requirement", ""),
            "runtime_version_built_with": runtime.get("runtime_version_built_with"),
        },
        "model": runtime.get("model", {}),
        "runtime_config": "runtime.json",
        "smoke_test": "smoke/smoke.json",
        "files": files,
        "provenance": {
            "git": build.get("git", {}),
            "mlflow": build.get("mlflow", {}),
            "source": build.get("source", {}),
            "code": build.get("code", {}),
            "built_at": build.get("built_at"),
            "built_by": build.get("built_by"),
            "choices": build.get("choices", {}),
            "validation": {
                "passed": validation.get("passed"),
                "metrics": validation.get("metrics", {}),
                "gates": validation.get("gates", []),
                "data": validation.get("data", {}),
                # where the gated figures were measured: a lab device, or the build machine
                "device_validated": bool(validation.get("device_validated")),
                "validated_on": validation.get("validated_on"),
                "build_machine_gates": (
                    (validation.get("details") or {}).get("build_machine") or {}
                ).get("gates"),
            },
            "signing_key_id": key_id,
        },
        "signing": {"algorithm": "ed25519", "key_id": key_id},
    }
    problems = rules.manifest_problems(manifest)
    if problems:
        raise BundleError(_problem_text(artifact, problems))
    return manifest


def make_bundle(
    artifact: Path,
    store: KeyStore,
    root: Path,
    valid_days: float = DEFAULT_VALID_DAYS,
    now: datetime | None = None,
    tracker: Any | None = None,
    allow_dirty: bool = False,
) -> Bundle:
    """Bundle and sign a passing artifact as the deployment's next version.

    ``tracker`` (a :class:`registry.tracking.Tracker`) records the bundle digest and
    signature on the build's MLflow run; pass None to skip MLflow (e.g. a build
    made with ``--no-record``, which has no run).

    A build made from a git tree with uncommitted changes is refused unless
    ``allow_dirty``; when allowed, the manifest (``provenance.allow_dirty``) and the
    ledger say so.
    """
    if valid_days <= 0:
        raise BundleError(f"error: validity must be positive, found {valid_days} days")
    runtime = _read_json(artifact / "runtime.json")
    deployment = str(runtime.get("deployment") or artifact.name)
    git = _read_json(artifact / "build.json").get("git") or {}
    if git.get("dirty") and not allow_dirty:
        changes = ", ".join(str(c) for c in (git.get("changes") or [])[:5])
        raise BundleError(
            f"error: {artifact / 'build.json'}: git.dirty: expected a build from a clean tree, "
            f"found uncommitted changes at build time ({changes or 'unlisted'}); commit them "
            "and build again, or bundle anyway with: edgeship bundle "
            f"deployment={deployment} --allow-dirty (recorded in the manifest and ledger)"
        )
    kid, private = store.signing_key()
    created = now or datetime.now(UTC)
    run_id = (_read_json(artifact / "build.json").get("mlflow") or {}).get("run_id")
    folder = root / deployment
    with Ledger(folder, deployment).locked() as ledger:
        version = ledger.highest()
        if tracker is not None:
            version = max(version, tracker.max_bundle_version(deployment))
        version += 1
        manifest = build_manifest(artifact, version, kid, created, valid_days)
        manifest["provenance"]["bundled_by"] = {"user": project.os_user(), "key_id": kid}
        if git.get("dirty"):
            manifest["provenance"]["allow_dirty"] = True
        staging = folder / f".{version}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir(parents=True)
        try:
            for entry in manifest["files"]:
                dest = staging / entry["path"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(artifact / entry["path"], dest)
                if sha256_file(dest) != entry["sha256"]:
                    raise BundleError(f"error: {artifact / entry['path']} changed while bundling")
            data = canonical_json(manifest)
            (staging / MANIFEST).write_bytes(data)
            (staging / SIGNATURE).write_bytes(sign(private, data))
            bundle = Bundle(staging, manifest, sha256_bytes(data))
            if tracker is not None and run_id:
                tracker.record_bundle(
                    str(run_id), staging / MANIFEST, bundle.digest, bundle.signature, version, kid
                )
                source = (manifest.get("provenance") or {}).get("mlflow") or {}
                if source.get("model_name") and source.get("model_version"):
                    # the link back: the registered model version names its bundles
                    tracker.tag_version(
                        str(source["model_name"]),
                        str(source["model_version"]),
                        {
                            "edgeship.bundle.version": str(version),
                            f"edgeship.bundle.{version}.sha256": bundle.digest,
                        },
                    )
            final = folder / str(version)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        Repository(root, store).add_bundle(final, deployment, version)
        ledger.append(
            "issued",
            {
                "version": version,
                "manifest_sha256": bundle.digest,
                "created_at": manifest["created_at"],
                "expires_at": manifest["expires_at"],
                "key_id": kid,
                "mlflow_run_id": run_id,
                "model_sha256": manifest["model"].get("sha256"),
                "artifact": str(artifact),
                "allow_dirty": bool(git.get("dirty")),
            },
        )
    log.info("bundled %s version %d (%s) signed by %s", deployment, version, bundle.digest, kid)
    return Bundle(final, manifest, bundle.digest)


def make_measure_bundle(
    candidate: Path,
    store: KeyStore,
    dest: Path,
    valid_hours: float = MEASURE_VALID_HOURS,
    now: datetime | None = None,
) -> Bundle:
    """Sign a candidate folder as a measurement candidate for a lab device, into ``dest``.

    ``candidate`` holds runtime.json, the model files and ``measure/`` (the evaluation
    inputs and the latency plan; see :mod:`orchestrator.device.agent.measure`). The
    manifest's kind is ``edgeship.measure``: it has no version, takes no place in the
    ledger or the TUF repository, and devices refuse to activate it. It expires after
    ``valid_hours``.
    """
    if valid_hours <= 0:
        raise BundleError(f"error: validity must be positive, found {valid_hours} hours")
    runtime = _read_json(candidate / "runtime.json")
    _read_json(candidate / "measure" / "measure.json")
    kid, private = store.signing_key()
    created = now or datetime.now(UTC)
    files: list[dict[str, Any]] = [
        {
            "path": rel.as_posix(),
            "sha256": sha256_file(candidate / rel),
            "size": (candidate / rel).stat().st_size,
        }
        for rel in artifact_files(candidate)
    ]
    target = runtime.get("target", {})
    manifest: dict[str, Any] = {
        "schema": 1,
        "kind": MEASURE_KIND,
        "deployment": runtime.get("deployment"),
        "created_at": _iso(created),
        "expires_at": _iso(created + timedelta(hours=valid_hours)),
        "target": {
            "family": target.get("family"),
            "name": target.get("name"),
            "runtime": target.get("runtime"),
            "device": target.get("device"),
            "runtime_requirement": runtime.get("runtime_requirement", ""),
            "runtime_version_built_with": runtime.get("runtime_version_built_with"),
        },
        "model": runtime.get("model", {}),
        "runtime_config": "runtime.json",
        "measure": "measure/measure.json",
        "files": files,
        "signing": {"algorithm": "ed25519", "key_id": kid},
    }
    problems = rules.manifest_problems(manifest, (MEASURE_KIND,))
    if problems:
        raise BundleError(_problem_text(candidate, problems))
    dest.mkdir(parents=True, exist_ok=False)
    for entry in files:
        target_path = dest / entry["path"]
        target_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(candidate / entry["path"], target_path)
        if sha256_file(target_path) != entry["sha256"]:
            raise BundleError(f"error: {candidate / entry['path']} changed while signing")
    data = canonical_json(manifest)
    (dest / MANIFEST).write_bytes(data)
    (dest / SIGNATURE).write_bytes(sign(private, data))
    return Bundle(dest, manifest, sha256_bytes(data))


def issue_rollback(
    bundle: Bundle,
    store: KeyStore,
    from_version: int,
    fleet: str | None = None,
    device: str | None = None,
    valid_days: float = 7,
    now: datetime | None = None,
) -> Path:
    """Sign a one-time rollback order taking devices from ``from_version`` back to ``bundle``.

    A device refuses a version lower than the one it runs; with this order beside
    the manifest it accepts exactly this bundle (version and manifest digest), once
    (the order's random ``nonce`` is remembered by the device), only while it runs
    ``from_version``, and only when it is ``device`` or in ``fleet`` (at least one is
    required; both must match when both are given).
    """
    if fleet is None and device is None:
        raise BundleError(
            "error: a rollback order names the devices it applies to: give a fleet or a device"
        )
    for value, what in ((fleet, "fleet"), (device, "device")):
        if value is not None and (why := rules.identifier_problem(value, what)):
            raise BundleError(f"error: {why}")
    if (why := rules.version_problem(from_version, "from_version")) is not None:
        raise BundleError(f"error: {why}")
    if from_version <= bundle.version:
        raise BundleError(
            f"error: from_version {from_version} must be higher than the version rolled back "
            f"to ({bundle.version}); a rollback order goes back to an older version"
        )
    kid, private = store.signing_key()
    created = now or datetime.now(UTC)
    order: dict[str, Any] = {
        "schema": 2,
        "kind": ROLLBACK_KIND,
        "deployment": bundle.deployment,
        "version": bundle.version,
        "manifest_sha256": bundle.digest,
        "from_version": from_version,
        "fleet": fleet,
        "device": device,
        "nonce": secrets.token_hex(16),
        "created_at": _iso(created),
        "expires_at": _iso(created + timedelta(days=valid_days)),
        "signing": {"algorithm": "ed25519", "key_id": kid},
    }
    data = canonical_json(order)
    path = bundle.path / ROLLBACK
    (bundle.path / (ROLLBACK + SIG_SUFFIX)).write_bytes(sign(private, data))
    path.write_bytes(data)
    with Ledger(bundle.path.parent, bundle.deployment).locked() as ledger:
        ledger.append(
            "rollbacks",
            {
                k: order[k]
                for k in (
                    "version",
                    "manifest_sha256",
                    "from_version",
                    "fleet",
                    "device",
                    "nonce",
                    "created_at",
                    "expires_at",
                )
            }
            | {"key_id": kid},
        )
    return path


# -- verification on the build host (devices use the agent: openssl + sha256sum) -----------------


def signature_problem(path: Path, trust: TrustSet) -> str | None:
    """Why the manifest's signature in bundle folder ``path`` is not good under ``trust``, or None.

    Checked on the raw bytes before anything parses the manifest.
    """
    mpath, sig = path / MANIFEST, path / SIGNATURE
    if not mpath.is_file():
        return f"{path}: no {MANIFEST}; not a bundle folder"
    if not sig.is_file():
        return f"missing signature: {sig}"
    data, signature = mpath.read_bytes(), sig.read_bytes()
    for pem in trust.keys.values():
        if verify(load_public_pem(pem), data, signature):
            return None
    return (
        f"bad signature: {sig} does not verify with any key of the targets role of root "
        f"version {trust.serial}"
    )


def verify_bundle(path: Path, trust: TrustSet, now: datetime | None = None) -> list[str]:
    """Every reason a device would refuse this bundle on signature, key, expiry or hashes.

    An empty list means it verifies. (Target family and version order depend on the
    device; the agent checks those.)
    """
    problems: list[str] = []
    try:
        bundle = Bundle.open(path)
    except BundleError as exc:
        return [str(exc)]
    sig = path / SIGNATURE
    kid = str(bundle.manifest.get("signing", {}).get("key_id", ""))
    if not sig.is_file():
        problems.append(f"missing signature: {sig}")
    elif kid in trust.revoked:
        problems.append(f"signed by revoked key {kid}")
    elif kid not in trust.keys:
        problems.append(f"signed by untrusted key {kid}")
    elif not verify(
        load_public_pem(trust.keys[kid]), (path / MANIFEST).read_bytes(), sig.read_bytes()
    ):
        problems.append(f"bad signature: {sig} does not verify with key {kid}")
    moment = now or datetime.now(UTC)
    try:
        if parse_time(str(bundle.manifest["expires_at"])) <= moment:
            problems.append(f"expired at {bundle.manifest['expires_at']}")
        created = parse_time(str(bundle.manifest["created_at"]))
    except (KeyError, ValueError):
        problems.append("created_at/expires_at: expected YYYY-MM-DDTHH:MM:SSZ")
    else:
        if created > moment + timedelta(seconds=rules.MAX_CLOCK_SKEW_SECONDS):
            problems.append(
                f"created_at {bundle.manifest['created_at']} is in the future (more than "
                f"{rules.MAX_CLOCK_SKEW_SECONDS} s ahead) (future_manifest)"
            )
    listed = {e["path"]: e for e in bundle.files()}
    for rel, entry in listed.items():
        file = path / rel
        if not file.is_file() or any(
            (path / rel).parents[i].is_symlink() for i in range(len(Path(rel).parts) - 1)
        ):
            problems.append(f"missing file: {rel}")
        elif sha256_file(file) != entry["sha256"]:
            problems.append(f"hash mismatch: {rel}")
    for file in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        rel = file.relative_to(path).as_posix()
        if file.is_symlink():
            problems.append(f"symbolic link in bundle: {rel}")
        elif rel not in listed and rel not in ENVELOPE:
            problems.append(f"file not in the manifest: {rel}")
    return problems


# -- export for air-gapped devices ---------------------------------------------------------------


def export_bundle(
    bundle: Bundle, dest: Path, trust_chain: list[tuple[int, bytes]] | None = None
) -> Path:
    """Write the bundle as one tar file (folder ``<deployment>-v<version>/`` inside).

    ``trust_chain`` (from :meth:`KeyStore.trust_chain`) rides along as
    ``trust/<version>.root.json``: an air-gapped device's agent applies the root
    versions newer than its own before it verifies the bundle, so rotations and
    revocations reach it on the same medium.
    """
    prefix = f"{bundle.deployment}-v{bundle.version}"
    mtime = int(parse_time(str(bundle.manifest["created_at"])).timestamp())
    names = sorted(
        p.relative_to(bundle.path).as_posix() for p in bundle.path.rglob("*") if p.is_file()
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")

    def add(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
        info = tarfile.TarInfo(arcname)
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(data))

    try:
        with tarfile.open(tmp, "w") as tar:
            for serial, data in trust_chain or []:
                add(tar, f"trust/{serial}.root.json", data)
            for name in names:
                add(tar, f"{prefix}/{name}", (bundle.path / name).read_bytes())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return dest


def unpack_export(tar_path: Path, dest: Path) -> Path:
    """Extract an exported bundle into ``dest`` within limits; returns the bundle folder.

    :func:`registry.bundle_rules.extract_export` bounds members, sizes, expansion and
    member types while it writes; the bundle folder's manifest is then read by
    :meth:`Bundle.open`'s rules by the caller.
    """
    dest.mkdir(parents=True, exist_ok=True)
    rules.extract_export(tar_path, dest)
    found = [p for p in sorted(dest.iterdir()) if (p / MANIFEST).is_file()]
    if (dest / MANIFEST).is_file():
        found.append(dest)
    if len(found) != 1:
        raise BundleError(f"error: {tar_path}: expected one {MANIFEST}, found {len(found)}")
    return found[0]
