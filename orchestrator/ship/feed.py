"""Phones: a signed update feed, published over SSH to the fleet's feed host.

Phones are not SSH hosts; their app polls a static feed over HTTP(S). The feed
host (``feed:`` in the fleet file) is reached over SSH like any device, with its
host key pinned at ``edgeship enroll``. Layout under ``feed.path``, which the
host's web server serves at ``feed.base_url``::

    index/latest                      the newest index serial (plain text, for people)
    index/<serial>.json(.sig)         every signed index ever published (never rewritten)
    index/timestamp.json(.sig)        freshness: the newest index's serial and SHA-256, signed
                                      by the timestamp key, valid ``timestamp_valid_hours``
    trust/<version>.root.json         every root version (apps follow rotations)
    bundles/<deployment>/<version>/   manifest.json, manifest.json.sig and the bundle files

An index names, per channel (``stable``, ``beta``, ...), the bundle to run and the
staged rollout: ``rollout_fraction`` of installations, chosen by a stable hash of
their install id salted per release (:func:`bucket`), run it; the others keep the
channel's previous release (``fallback``). Raising the fraction for the same
release keeps every installation already in. Indexes are signed by the targets
key; the short-lived timestamp names the newest one, so an app refuses a replayed
older index even on its first poll, and notices a feed that stopped moving (a
freeze attack) once the timestamp expires: run ``edgeship publish fleet=NAME
--refresh`` more often than ``timestamp_valid_hours`` (e.g. hourly from cron).

Publishing to a channel with fraction 1.0 completes that channel's rollout: the
MLflow model version gets the fleet's alias (``<alias>`` for ``stable``,
``<alias>-<channel>`` for the others).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from orchestrator.errors import FeedError, Problem, SpecError, TrackingError
from orchestrator.ship.deploy import Throttle, hash_mismatches, upload_resumable
from orchestrator.ship.results import DeviceOutcome
from orchestrator.ship.ssh import DeviceSession, connect, pin_host_key
from orchestrator.spec.fleet import FleetConfig
from registry.bundle import ENVELOPE, Bundle, verify_bundle
from registry.keys import KeyStore
from registry.signing import canonical_json, load_public_pem, sign, verify

log = logging.getLogger(__name__)

FEED_KIND = "edgeship.feed"
TIMESTAMP_KIND = "edgeship.feed-timestamp"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def bucket(salt: str, install_id: str) -> float:
    """An installation's place in [0, 1) for a release: stable, uniform, salted per release."""
    digest = hashlib.sha256(f"{salt}:{install_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x100000000


def in_rollout(salt: str, install_id: str, fraction: float) -> bool:
    """Whether an installation is in a staged rollout of ``fraction``."""
    return bucket(salt, install_id) < fraction


@dataclass
class Publication:
    """What ``edgeship publish`` did."""

    fleet: str
    channel: str
    deployment: str
    version: int
    digest: str
    fraction: float
    serial: int
    index_url: str
    fallback: dict[str, Any] | None
    files_sent: int = 0
    bytes_sent: int = 0
    files_present: int = 0
    trust_sent: list[int] = field(default_factory=list)
    timestamp_expires: str = ""
    alias: str | None = None
    notes: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime(TIME_FORMAT)


def _read_remote(session: DeviceSession, path: str) -> bytes | None:
    try:
        with session.sftp().open(path, "rb") as fh:
            return bytes(fh.read())
    except FileNotFoundError:
        return None


def read_index(session: DeviceSession, store: KeyStore) -> tuple[int, dict[str, Any] | None]:
    """The feed's newest index (serial, document), its signature checked; (0, None) if none."""
    root = session.root
    latest = _read_remote(session, f"{root}/index/latest")
    if latest is None:
        return 0, None
    serial = int(latest.decode().strip())
    data = _read_remote(session, f"{root}/index/{serial}.json")
    sig = _read_remote(session, f"{root}/index/{serial}.json.sig")
    if data is None or sig is None:
        raise FeedError(f"error: feed {root}: index/latest names {serial}, which is missing")
    trust = store.trust()
    if not any(verify(load_public_pem(pem), data, sig) for pem in trust.keys.values()):
        raise FeedError(
            f"error: feed {root}: index {serial} is not signed by a targets key of root version "
            f"{trust.serial}; refusing to build on it"
        )
    return serial, json.loads(data)


def _remote_size(session: DeviceSession, path: str) -> int | None:
    try:
        return int(session.sftp().stat(path).st_size or 0)
    except FileNotFoundError:
        return None


def _upload_bundle(session: DeviceSession, bundle: Bundle, pub: Publication) -> str:
    rel = f"bundles/{bundle.deployment}/{bundle.version}"
    folder = f"{session.root}/{rel}"
    entries = bundle.files()
    envelope = sorted(n for n in ENVELOPE if (bundle.path / n).is_file())
    for d in sorted({str(Path(folder, e["path"]).parent) for e in entries} | {folder}):
        session.makedirs(d)
    outcome = DeviceOutcome("feed", session.device.address)
    throttle = Throttle(None)
    present = [
        e for e in entries if _remote_size(session, f"{folder}/{e['path']}") == int(e["size"])
    ]
    stale = set(hash_mismatches(session, folder, present))
    done = {e["path"] for e in present} - stale
    pub.files_present = len(done)
    for entry in entries:
        if entry["path"] in done:
            continue
        if entry["path"] in stale:
            session.run(f"rm -f {shlex.quote(folder + '/' + entry['path'])}")
        upload_resumable(
            session.sftp(),
            bundle.path / entry["path"],
            f"{folder}/{entry['path']}",
            int(entry["size"]),
            throttle,
            outcome,
        )
    bad = hash_mismatches(session, folder, [e for e in entries if e["path"] not in done])
    if bad:
        raise FeedError(f"error: feed {folder}: uploaded files differ: {', '.join(bad)}")
    # the envelope last: a bundle folder with a manifest is complete
    for name in envelope:
        session.put_bytes((bundle.path / name).read_bytes(), f"{folder}/{name}")
    pub.files_sent = outcome.files_sent
    pub.bytes_sent = outcome.bytes_sent
    return rel + "/"


def _upload_trust(session: DeviceSession, store: KeyStore, pub: Publication) -> int:
    session.makedirs(f"{session.root}/trust")
    serial = 0
    for serial, data in store.trust_chain(0):
        name = f"{session.root}/trust/{serial}.root.json"
        if _read_remote(session, name) != data:
            session.put_bytes(data, name)
            pub.trust_sent.append(serial)
    return serial


def write_timestamp(
    session: DeviceSession,
    fleet: FleetConfig,
    store: KeyStore,
    serial: int,
    index: bytes,
    now: datetime | None = None,
) -> str:
    """Sign ``index/timestamp.json``: the newest index's serial and digest, short-lived."""
    assert fleet.feed is not None
    moment = now or _now()
    expires = moment + timedelta(hours=fleet.feed.timestamp_valid_hours)
    kid, private = store.timestamp_key()
    doc = {
        "kind": TIMESTAMP_KIND,
        "schema": 1,
        "fleet": fleet.name,
        "index_serial": serial,
        "index_sha256": hashlib.sha256(index).hexdigest(),
        "created_at": _iso(moment),
        "expires_at": _iso(expires),
        "signing": {"algorithm": "ed25519", "key_id": kid, "role": "timestamp"},
    }
    data = canonical_json(doc)
    name = f"{session.root}/index/timestamp.json"
    # each file replaced atomically, the signature first: a poll between the two sees a
    # mismatch and tries again later; it never takes an unsigned document
    session.put_bytes(sign(private, data), name + ".sig")
    session.put_bytes(data, name)
    return _iso(expires)


def refresh_feed(fleet: FleetConfig, store: KeyStore, now: datetime | None = None) -> tuple:
    """Re-sign the feed's timestamp over its current index (and send new root versions).

    Returns (index serial, timestamp expiry).
    """
    if fleet.feed is None:
        raise SpecError(
            [Problem("command line", "fleet", f"fleet {fleet.name} has no feed: section")]
        )
    with connect(fleet.feed_host(), Path(fleet.known_hosts)) as session:
        serial, index = read_index(session, store)
        if index is None:
            raise FeedError(f"error: feed of fleet {fleet.name}: nothing published yet")
        pub = Publication(fleet.name, "", "", 0, "", 1.0, serial, "", None)
        _upload_trust(session, store, pub)
        data = _read_remote(session, f"{session.root}/index/{serial}.json") or b""
        expires = write_timestamp(session, fleet, store, serial, data, now)
    return serial, expires


def enroll_feed(fleet: FleetConfig, repin: bool = False) -> str:
    """Pin the feed host's key and create its folders; returns what was done."""
    host = fleet.feed_host()
    known_hosts = Path(fleet.known_hosts)
    note = pin_host_key(host, known_hosts, repin)
    with connect(host, known_hosts) as session:
        for sub in ("index", "trust", "bundles"):
            session.makedirs(f"{session.root}/{sub}")
        res = session.run(f"test -w {shlex.quote(session.root)}")
        if res.code != 0:
            raise FeedError(f"error: feed host {host.address}: {session.root} is not writable")
    return note


def publish(
    fleet: FleetConfig,
    bundle: Bundle,
    channel: str,
    fraction: float,
    store: KeyStore,
    now: datetime | None = None,
) -> Publication:
    """Upload ``bundle`` to the feed and announce it on ``channel`` to ``fraction`` of installs."""
    if fleet.feed is None:
        raise SpecError(
            [Problem("command line", "fleet", f"fleet {fleet.name} has no feed: section")]
        )
    feed = fleet.feed
    if channel not in feed.channels:
        from orchestrator.core.typecheck import unknown_name_message

        raise SpecError(
            [
                Problem(
                    "command line",
                    "channel",
                    unknown_name_message("channel", channel, feed.channels),
                )
            ]
        )
    if not 0 < fraction <= 1:
        raise SpecError(
            [
                Problem(
                    "command line", "--fraction", f"expected a number in (0, 1], found {fraction}"
                )
            ]
        )
    problems = verify_bundle(bundle.path, store.trust())
    if problems:
        raise FeedError(
            f"error: {bundle.path} would be refused by the apps: " + "; ".join(problems)
        )
    from orchestrator.ship.deploy import require_approval

    require_approval(fleet, bundle, store)  # before the feed host is reached
    moment = now or _now()
    host = fleet.feed_host()
    with connect(host, Path(fleet.known_hosts)) as session:
        serial, current = read_index(session, store)
        channels = dict((current or {}).get("channels") or {})
        previous = channels.get(channel)
        pub = Publication(
            fleet.name,
            channel,
            bundle.deployment,
            bundle.version,
            bundle.digest,
            fraction,
            serial + 1,
            f"{feed.base_url.rstrip('/')}/index/latest",
            None,
        )
        trust_serial = _upload_trust(session, store, pub)
        path = _upload_bundle(session, bundle, pub)
        if previous and previous.get("manifest_sha256") == bundle.digest:
            fallback = previous.get("fallback")
            salt = str(previous.get("bucket_salt"))
            if fraction < float(previous.get("rollout_fraction", 1.0)):
                pub.notes.append(
                    f"fraction lowered from {previous.get('rollout_fraction')} to {fraction}: "
                    "installations that already run it keep it until a release replaces it"
                )
        else:
            fallback = (
                {k: previous[k] for k in ("deployment", "version", "manifest_sha256", "path")}
                if previous
                else None
            )
            salt = bundle.digest[:16]
        pub.fallback = fallback
        entry = {
            "deployment": bundle.deployment,
            "version": bundle.version,
            "manifest_sha256": bundle.digest,
            "path": path,
            "family": (bundle.manifest.get("target") or {}).get("family"),
            "size": sum(int(e["size"]) for e in bundle.files()),
            "rollout_fraction": fraction,
            "bucket_salt": salt,
            "fallback": fallback,
            "published_at": _iso(moment),
        }
        channels[channel] = entry
        kid, private = store.signing_key()
        doc = {
            "kind": FEED_KIND,
            "schema": 1,
            "fleet": fleet.name,
            "serial": serial + 1,
            "created_at": _iso(moment),
            "expires_at": _iso(moment + timedelta(days=feed.index_valid_days)),
            "trust_serial": trust_serial,
            "signing": {"algorithm": "ed25519", "key_id": kid},
            "channels": channels,
        }
        data = canonical_json(doc)
        name = f"{session.root}/index/{serial + 1}.json"
        session.makedirs(f"{session.root}/index")
        session.put_bytes(sign(private, data), name + ".sig")
        session.put_bytes(data, name)
        pub.timestamp_expires = write_timestamp(session, fleet, store, serial + 1, data, moment)
        session.put_bytes(f"{serial + 1}\n".encode(), f"{session.root}/index/latest")
    log.info(
        "published %s v%d on %s/%s at %.0f%%",
        bundle.deployment,
        bundle.version,
        fleet.name,
        channel,
        fraction * 100,
    )
    return pub


def show_index(fleet: FleetConfig, store: KeyStore) -> tuple[int, dict[str, Any] | None]:
    """The feed's current signed index (serial, document)."""
    with connect(fleet.feed_host(), Path(fleet.known_hosts)) as session:
        return read_index(session, store)


def channel_alias(fleet: FleetConfig, channel: str) -> str:
    """The MLflow alias a completed channel rollout sets."""
    return fleet.alias if channel == "stable" else f"{fleet.alias}-{channel}"


def record_publication(root: Path, fleet: FleetConfig, bundle: Bundle, pub: Any) -> None:
    """Tag the bundle's MLflow run with what was published; a full release moves the channel's
    alias. MLflow trouble becomes a note on ``pub``, never a failed publish."""
    mlflow = (bundle.manifest.get("provenance") or {}).get("mlflow") or {}
    if not mlflow.get("run_id"):
        return
    from registry.tracking import Tracker

    tracker = Tracker(root)
    prefix = f"edgeship.feed.{fleet.name}.{pub.channel}"
    try:
        tracker.set_tags(
            str(mlflow["run_id"]),
            {
                f"{prefix}.version": str(pub.version),
                f"{prefix}.fraction": str(pub.fraction),
                f"{prefix}.index_serial": str(pub.serial),
            },
        )
        if pub.fraction >= 1.0 and mlflow.get("model_version"):
            pub.alias = channel_alias(fleet, pub.channel)
            tracker.promote(str(mlflow["model_name"]), str(mlflow["model_version"]), pub.alias)
    except TrackingError as exc:
        pub.notes.append(f"MLflow: {exc}")
    except Exception as exc:
        pub.notes.append(f"MLflow: {type(exc).__name__}: {exc}")
