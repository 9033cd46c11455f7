"""The TUF repository of issued bundles: root, targets, snapshot and timestamp metadata.

Written with python-tuf's Metadata API beside the bundles, so any TUF client
verifies an edgeship bundle repository the standard way (python-tuf's ngclient
among them: tests/integration/test_tuf_repository.py serves one over HTTP)::

    <bundles root>/.tuf/<N>.root.json     every root version (from the key store)
    <bundles root>/.tuf/targets.json      every file of every bundle, with its length and
                                          SHA-256 (signed by the targets key)
    <bundles root>/.tuf/snapshot.json     the targets metadata's version (timestamp key)
    <bundles root>/.tuf/timestamp.json    the snapshot's version; short-lived, so a client
                                          notices a repository that stopped moving
    <bundles root>/<deployment>/<version>/<file>   the targets themselves

Target paths are ``<deployment>/<version>/<path>``; the manifest's entry carries
``custom.edgeship`` with the deployment and version. Serve ``.tuf/`` as the
metadata URL and the bundles root as the targets URL. The timestamp expires after
:data:`TIMESTAMP_DAYS`; ``edgeship keys refresh`` (e.g. daily from cron) signs a
new one. Consistent snapshots are off: bundle versions are never rewritten.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp

from orchestrator.core.fsutil import exclusive_lock
from registry.keys import PRETTY, KeyStore

log = logging.getLogger(__name__)

METADATA_DIR = ".tuf"
TARGETS_DAYS = 365
SNAPSHOT_DAYS = 7
TIMESTAMP_DAYS = 1


def _expiry(days: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)


class Repository:
    """The TUF metadata of one bundles root, signed with a key store's online keys."""

    def __init__(self, bundles_root: Path, store: KeyStore) -> None:
        self.root = bundles_root
        self.store = store
        self.folder = bundles_root / METADATA_DIR

    def _load(self, name: str) -> Metadata | None:
        path = self.folder / f"{name}.json"
        return Metadata.from_file(str(path)) if path.is_file() else None

    def _write(self, md: Metadata, name: str) -> None:
        path = self.folder / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(md.to_bytes(PRETTY))
        tmp.replace(path)

    def sync_roots(self) -> int:
        """Copy every root version of the key store here; returns the newest version."""
        self.folder.mkdir(parents=True, exist_ok=True)
        newest = 0
        for version, data in self.store.trust_chain(0):
            path = self.folder / f"{version}.root.json"
            if not path.is_file() or path.read_bytes() != data:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
            newest = version
        shutil.copyfile(self.folder / f"{newest}.root.json", self.folder / "root.json")
        return newest

    def _next(self, role: str, cls: type) -> Metadata:
        """The role's metadata as the next version (version 1 when there is none yet)."""
        md = self._load(role)
        if md is None:
            return Metadata(cls(version=1))
        md.signed.version += 1
        return md

    def _publish(self, md: Metadata, role: str, days: float, signer_role: str) -> None:
        """Give ``md`` a new expiry, sign it with the online key of ``signer_role``, write it."""
        md.signed.expires = _expiry(days)
        md.sign(self.store.online_signer(signer_role))
        self._write(md, f"{role}.json")

    def add_bundle(self, folder: Path, deployment: str, version: int) -> int:
        """List every file of the bundle ``folder`` as targets; returns the targets version."""
        with exclusive_lock(self.root / ".tuf.lock"):
            self.sync_roots()
            targets = self._next("targets", Targets)
            signed = targets.signed
            assert isinstance(signed, Targets)
            prefix = f"{deployment}/{version}/"
            for stale in [p for p in signed.targets if p.startswith(prefix)]:
                del signed.targets[stale]
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                name = prefix + path.relative_to(folder).as_posix()
                target = TargetFile.from_file(name, str(path), ["sha256"])
                if path.name == "manifest.json" and path.parent == folder:
                    target.unrecognized_fields["custom"] = {
                        "edgeship": {"deployment": deployment, "version": version}
                    }
                signed.targets[name] = target
            self._publish(targets, "targets", TARGETS_DAYS, "targets")
            self._snapshot_and_timestamp(signed.version)
            log.info(
                "targets metadata version %d lists %s v%d", signed.version, deployment, version
            )
            return int(signed.version)

    def publish_document(self, path: str, data: bytes) -> int:
        """Write ``data`` to ``<bundles root>/<path>`` and list it as a target (e.g. a pull
        fleet's rollout document); returns the new timestamp's version. Devices see it once
        they fetch the new timestamp, so this is also how a pull rollout halts."""
        with exclusive_lock(self.root / ".tuf.lock"):
            self.sync_roots()
            dest = self.root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
            targets = self._next("targets", Targets)
            signed = targets.signed
            assert isinstance(signed, Targets)
            signed.targets[path] = TargetFile.from_data(path, data, ["sha256"])
            self._publish(targets, "targets", TARGETS_DAYS, "targets")
            timestamp = self._snapshot_and_timestamp(signed.version)
            return int(timestamp.signed.version)

    def _snapshot_and_timestamp(self, targets_version: int) -> Metadata:
        """New snapshot (over ``targets_version``) and timestamp; returns the timestamp."""
        snapshot = self._next("snapshot", Snapshot)
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets_version)
        self._publish(snapshot, "snapshot", SNAPSHOT_DAYS, "timestamp")
        timestamp = self._next("timestamp", Timestamp)
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        self._publish(timestamp, "timestamp", TIMESTAMP_DAYS, "timestamp")
        return timestamp

    def refresh(self) -> tuple[int, datetime]:
        """Re-sign the snapshot and timestamp with new expiries (and copy new root versions).

        Returns the timestamp's version and expiry. Run it more often than
        :data:`TIMESTAMP_DAYS`, e.g. daily from cron (``edgeship keys refresh``).
        """
        with exclusive_lock(self.root / ".tuf.lock"):
            self.sync_roots()
            targets = self._next("targets", Targets)  # re-signed: the key may have been rotated
            self._publish(targets, "targets", TARGETS_DAYS, "targets")
            timestamp = self._snapshot_and_timestamp(int(targets.signed.version))
            return int(timestamp.signed.version), timestamp.signed.expires
