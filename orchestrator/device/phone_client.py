"""Reference update client for phone apps: poll the signed feed, verify, activate, smoke-test.

What an app does with an edgeship feed (see :mod:`orchestrator.ship.feed`), in
the standard library plus the app's own platform crypto (here ``cryptography``'s
Ed25519) and ONNX Runtime. Of edgeship it imports only the standalone
:mod:`orchestrator.device.agent.rootmeta` (TUF root checks) and
:mod:`orchestrator.device.agent.runners` (the device runners and their output checks,
shared with the device agent's health check), so it can be read (and ported) on its own::

    python -m orchestrator.device.phone_client --feed http://127.0.0.1:8000/ --channel beta \\
        --state ~/.posture-app --trust 1.root.json --family android_phone

The app ships with a TUF root (``--trust``: a ``<N>.root.json`` of the key store).
One poll:

1. follow newer root versions from ``trust/<N+1>.root.json`` (each must carry the
   root threshold of the one before it and its own);
2. fetch ``index/timestamp.json``, signed by a timestamp key of the root: refuse it
   when expired (a feed that stopped moving) or when it names an index older than
   one seen before; fetch the index it names, check its SHA-256 against the
   timestamp and its signature against the targets keys, its serial and expiry.
   A fresh installation thus refuses a replayed older index too;
2. pick the channel's release: installations whose bucket (a hash of the release's
   salt and this install id) is below ``rollout_fraction`` take it, the others the
   channel's ``fallback``;
3. download the bundle's manifest, check its digest against the index and its
   signature against the trust set, its deployment and target family; download
   every file and check its size and SHA-256; no file outside the manifest;
4. install side by side, switch ``current`` atomically (keeping ``previous``), run
   the bundle's smoke test through the runner of its runtime (ONNX Runtime Mobile's ``.ort``
   with the session options of ``runtime.json``) and the agent's checks (tolerances and
   argmax agreement), and switch back when it fails;
5. print (and keep) a JSON report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.device.agent import rootmeta, runners

FEED_KIND = "edgeship.feed"
TIMESTAMP_KIND = "edgeship.feed-timestamp"
MAX_DOCUMENT = 4 * 1024 * 1024  # an index, timestamp or manifest larger than this is refused
CHUNK = 256 * 1024
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$")


class UpdateRefused(Exception):
    """The feed or a bundle failed a check; nothing was changed. ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(pem: str, data: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _strict_json(data: bytes, source: str) -> dict[str, Any]:
    """A JSON object (duplicate keys refused, nesting checked on the raw bytes first)."""
    try:
        doc = rootmeta.strict_loads(data, source, MAX_DOCUMENT, max_depth=64, floats=True)
    except rootmeta.RootError as exc:
        code = "malformed" if exc.code == "malformed_trust" else exc.code
        raise UpdateRefused(code, exc.message) from exc
    if not isinstance(doc, dict):
        raise UpdateRefused("malformed", f"{source}: expected a JSON object")
    return doc


def bucket(salt: str, install_id: str) -> float:
    """This installation's place in [0, 1) for a release (the feed's staged rollout)."""
    digest = hashlib.sha256(f"{salt}:{install_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x100000000


class PhoneClient:
    """One app installation's update state under ``state``."""

    def __init__(
        self,
        feed_url: str,
        channel: str,
        state: Path,
        family: str,
        trust_file: Path | None = None,
        install_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.feed = feed_url.rstrip("/") + "/"
        self.channel = channel
        self.state = state
        self.family = family
        self.timeout = timeout
        state.mkdir(parents=True, exist_ok=True)
        id_file = state / "install_id"
        if install_id:
            id_file.write_text(install_id + "\n")
        elif not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex + "\n")
        self.install_id = id_file.read_text().strip()
        trust_dir = state / "trust"
        if not (trust_dir / "root.json").is_file():
            if trust_file is None:
                raise UpdateRefused("no_trust", f"no root of trust in {trust_dir}; pass --trust")
            trust_dir.mkdir(parents=True, exist_ok=True)
            data = trust_file.read_bytes()
            try:
                rootmeta.check_first_root(
                    rootmeta.parse_root(data, str(trust_file)), str(trust_file), _verify
                )
            except rootmeta.RootError as exc:
                raise UpdateRefused(exc.code, exc.message) from exc
            (trust_dir / "root.json").write_bytes(data)

    # -- http ----------------------------------------------------------------------------------

    def _open(self, rel: str) -> Any:
        url = urllib.parse.urljoin(self.feed, rel)
        try:
            return urllib.request.urlopen(url, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise UpdateRefused("unavailable", f"{url}: HTTP {exc.code}") from exc
        except OSError as exc:
            raise UpdateRefused("unavailable", f"{url}: {exc}") from exc

    def _get(self, rel: str, limit: int = MAX_DOCUMENT) -> bytes:
        """A small document, refused (before reading the rest) when larger than ``limit``."""
        with self._open(rel) as resp:
            data = bytes(resp.read(limit + 1))
        if len(data) > limit:
            raise UpdateRefused("too_large", f"{rel}: larger than {limit} bytes; refused")
        return data

    def _fetch_file(self, rel: str, dest: Path, size: int, sha256: str) -> None:
        """Stream one bundle file to ``dest``: at most ``size`` bytes, hashed on the way."""
        digest = hashlib.sha256()
        count = 0
        with self._open(rel) as resp, dest.open("wb") as out:
            while True:
                block = resp.read(min(CHUNK, size - count + 1))
                if not block:
                    break
                count += len(block)
                if count > size:
                    raise UpdateRefused("hash_mismatch", f"{rel} is larger than the manifest says")
                digest.update(block)
                out.write(block)
        if count != size or digest.hexdigest() != sha256:
            raise UpdateRefused("hash_mismatch", f"{rel} differs from the manifest")

    # -- trust ---------------------------------------------------------------------------------

    def _root(self) -> dict[str, Any]:
        path = self.state / "trust" / "root.json"
        doc: dict[str, Any] = rootmeta.parse_root(path.read_bytes(), str(path))
        return doc

    def trust(self) -> dict[str, Any]:
        """The root of trust's ``signed`` part (``version`` is the trust serial)."""
        signed: dict[str, Any] = self._root()["signed"]
        return signed

    def _signed_by(self, role: str, data: bytes, signature: bytes) -> bool:
        signed = self.trust()
        if rootmeta.expired(signed):
            raise UpdateRefused(
                "trust_expired",
                f"the root of trust (version {signed['version']}) expired at {signed['expires']}",
            )
        keys = rootmeta.role_keys(signed, role)
        return any(_verify(pem, data, signature) for pem in keys.values())

    def follow_trust(self) -> int:
        """Take newer root versions from the feed, each signed by the thresholds it needs."""
        current = self._root()
        while True:
            version = int(current["signed"]["version"]) + 1
            name = f"trust/{version}.root.json"
            try:
                data = self._get(name, rootmeta.MAX_ROOT_BYTES)
            except UpdateRefused as exc:
                if exc.code == "unavailable":
                    return version - 1
                raise
            try:
                doc = rootmeta.parse_root(data, name)
                rootmeta.check_root_update(current, doc, name, _verify)
            except rootmeta.RootError as exc:
                raise UpdateRefused(exc.code, exc.message) from exc
            path = self.state / "trust" / "root.json"
            tmp = path.with_name(".root.json.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            current = doc

    # -- the index -----------------------------------------------------------------------------

    def fetch_index(self) -> dict[str, Any]:
        """The index the feed's fresh, signed timestamp names; signature, digest, age checked."""
        self.follow_trust()
        ts_data = self._get("index/timestamp.json")
        ts_sig = self._get("index/timestamp.json.sig", 1024)
        if not self._signed_by("timestamp", ts_data, ts_sig):
            raise UpdateRefused(
                "bad_signature", "index/timestamp.json is not signed by a timestamp key"
            )
        stamp = _strict_json(ts_data, "index/timestamp.json")
        if stamp.get("kind") != TIMESTAMP_KIND:
            raise UpdateRefused("malformed", "index/timestamp.json is not a feed timestamp")
        if _parse_time(str(stamp["expires_at"])) <= datetime.now(timezone.utc):
            raise UpdateRefused(
                "stale_feed",
                f"the feed's timestamp expired at {stamp['expires_at']}: the feed stopped "
                "moving or is being replayed; keeping the installed version",
            )
        latest = int(stamp["index_serial"])
        seen_file = self.state / "feed.json"
        seen = json.loads(seen_file.read_text()) if seen_file.is_file() else {"serial": 0}
        if latest < int(seen["serial"]):
            raise UpdateRefused(
                "stale_index", f"the feed offers index {latest}; this app has seen {seen['serial']}"
            )
        data = self._get(f"index/{latest}.json")
        sig = self._get(f"index/{latest}.json.sig", 1024)
        if _sha256(data) != stamp["index_sha256"]:
            raise UpdateRefused(
                "hash_mismatch", f"index {latest} is not the one the feed's timestamp names"
            )
        if not self._signed_by("targets", data, sig):
            raise UpdateRefused("bad_signature", f"index {latest}: the signature does not verify")
        doc = _strict_json(data, f"index/{latest}.json")
        if doc.get("kind") != FEED_KIND or int(doc.get("serial", -1)) != latest:
            raise UpdateRefused("malformed", f"index {latest} names serial {doc.get('serial')}")
        if _parse_time(str(doc["expires_at"])) <= datetime.now(timezone.utc):
            raise UpdateRefused("expired", f"index {latest} expired at {doc['expires_at']}")
        seen_file.write_text(json.dumps({"serial": latest}) + "\n")
        return dict(doc)

    # -- installing ----------------------------------------------------------------------------

    def _link_version(self, name: str) -> tuple[str, int] | None:
        link = self.state / name
        if not link.is_symlink():
            return None
        target = Path(os.readlink(link))
        return target.parent.name, int(target.name)

    def _switch(self, name: str, rel: str | None) -> None:
        link = self.state / name
        if rel is None:
            if link.is_symlink():
                link.unlink()
            return
        tmp = self.state / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(rel, tmp)
        os.replace(tmp, link)

    def download(self, target: dict[str, Any]) -> Path:
        """Download and verify a bundle into versions/<deployment>/<version>/ (if not there)."""
        deployment, version = str(target["deployment"]), int(target["version"])
        dest = self.state / "versions" / deployment / str(version)
        base = str(target["path"])
        manifest_bytes = self._get(base + "manifest.json")
        if _sha256(manifest_bytes) != target["manifest_sha256"]:
            raise UpdateRefused(
                "hash_mismatch", "the manifest differs from the one the index names"
            )
        if (dest / "manifest.json").is_file():
            if (dest / "manifest.json").read_bytes() == manifest_bytes:
                return dest
            raise UpdateRefused(
                "version_conflict", f"v{version} is installed with another manifest"
            )
        sig = self._get(base + "manifest.json.sig", 1024)
        if not self._signed_by("targets", manifest_bytes, sig):
            raise UpdateRefused(
                "bad_signature", f"manifest of v{version} is not signed by a targets key"
            )
        manifest = _strict_json(manifest_bytes, f"manifest of v{version}")
        if manifest.get("deployment") != deployment or int(manifest["version"]) != version:
            raise UpdateRefused("malformed", "the manifest names another deployment or version")
        family = (manifest.get("target") or {}).get("family")
        if family != self.family:
            raise UpdateRefused(
                "wrong_family", f"the bundle is for {family}; this app is {self.family}"
            )
        if _parse_time(str(manifest["expires_at"])) <= datetime.now(timezone.utc):
            raise UpdateRefused("expired", f"the bundle expired at {manifest['expires_at']}")
        tmp = dest.with_name(f".{version}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            seen: set = set()
            for entry in manifest["files"]:
                rel = str(entry["path"])
                if not SAFE_PATH.match(rel) or ".." in rel.split("/"):
                    raise UpdateRefused("malformed", f"unsafe file name {rel!r}")
                if rel.casefold() in seen or rel in ("manifest.json", "manifest.json.sig"):
                    raise UpdateRefused("malformed", f"file name {rel!r} listed twice")
                seen.add(rel.casefold())
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fetch_file(base + rel, path, int(entry["size"]), str(entry["sha256"]))
            (tmp / "manifest.json").write_bytes(manifest_bytes)
            (tmp / "manifest.json.sig").write_bytes(sig)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def poll(self) -> dict[str, Any]:
        """One poll of the feed; returns the report (also kept in ``last_report.json``)."""
        report: dict[str, Any] = {
            "install_id": self.install_id,
            "channel": self.channel,
            "time": datetime.now(timezone.utc).strftime(TIME_FORMAT),
        }
        current = self._link_version("current")
        report["current_before"] = (
            {"deployment": current[0], "version": current[1]} if current else None
        )
        try:
            index = self.fetch_index()
            report["feed_serial"] = index["serial"]
            entry = (index.get("channels") or {}).get(self.channel)
            if entry is None:
                raise UpdateRefused(
                    "no_release", f"the feed has no release on channel {self.channel}"
                )
            place = bucket(str(entry["bucket_salt"]), self.install_id)
            report["bucket"] = round(place, 6)
            report["rollout_fraction"] = entry["rollout_fraction"]
            report["in_rollout"] = place < float(entry["rollout_fraction"])
            target = entry if report["in_rollout"] else entry.get("fallback")
            if target is None:
                report.update(result="waiting", version=current[1] if current else None)
                report["message"] = (
                    f"not in the first {float(entry['rollout_fraction']):.0%} of installations "
                    "and the channel has no earlier release"
                )
                return self._keep(report)
            report["target"] = {"deployment": target["deployment"], "version": target["version"]}
            if current == (str(target["deployment"]), int(target["version"])):
                installed = self.state / "versions" / current[0] / str(current[1])
                digest = _sha256((installed / "manifest.json").read_bytes())
                if digest == target["manifest_sha256"]:
                    report.update(result="unchanged", version=current[1])
                    return self._keep(report)
            folder = self.download(target)
            rel = f"versions/{target['deployment']}/{target['version']}"
            if current is not None:
                self._switch("previous", f"versions/{current[0]}/{current[1]}")
            self._switch("current", rel)
            health = smoke_test(folder)
            report["health"] = health
            if health["result"] == "pass":
                downgrade = current is not None and int(target["version"]) < current[1]
                report.update(result="rolled_back" if downgrade else "activated")
                report["version"] = int(target["version"])
            else:
                if current is not None:
                    self._switch("current", f"versions/{current[0]}/{current[1]}")
                else:
                    self._switch("current", None)
                report.update(result="unhealthy", version=current[1] if current else None)
                report["message"] = f"smoke test failed: {health.get('reason')}"
        except UpdateRefused as exc:
            report.update(result="refused", refusal=exc.code, message=exc.message)
            report["version"] = current[1] if current else None
        return self._keep(report)

    def _keep(self, report: dict[str, Any]) -> dict[str, Any]:
        (self.state / "last_report.json").write_text(
            json.dumps(report, indent=2, sort_keys=True) + "\n"
        )
        return report


def smoke_test(folder: Path) -> dict[str, Any]:
    """Run the bundle's smoke test as the app would: its runtime's runner (ONNX Runtime Mobile's
    ``.ort`` with the app's session options), judged by the agent's own checks (tolerances and
    argmax agreement, :func:`orchestrator.device.agent.runners.check_outputs`)."""
    try:
        report: dict[str, Any] = runners.smoke_check(str(folder))
    except Exception as exc:
        return {"result": "fail", "reason": f"{type(exc).__name__}: {exc}"}
    report["providers"] = (report.get("runtime") or {}).get("providers")
    return report


def main(argv: list[str] | None = None) -> int:
    """Poll a feed once (or every ``--poll`` seconds) and print the JSON report."""
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.device.phone_client", description=main.__doc__
    )
    p.add_argument("--feed", required=True, help="the feed's base URL")
    p.add_argument("--channel", default="stable")
    p.add_argument("--state", required=True, type=Path, help="this installation's folder")
    p.add_argument(
        "--trust", type=Path, help="the TUF root shipped with the app (<N>.root.json; first run)"
    )
    p.add_argument("--family", default="android_phone", help="this app's target family")
    p.add_argument("--install-id", help="fix the install id (default: a random one, kept)")
    p.add_argument("--poll", type=float, default=0.0, help="poll every N seconds (0: once)")
    args = p.parse_args(argv)
    try:
        client = PhoneClient(
            args.feed, args.channel, args.state, args.family, args.trust, args.install_id
        )
    except UpdateRefused as exc:
        print(json.dumps({"result": "refused", "refusal": exc.code, "message": exc.message}))
        return 10
    while True:
        report = client.poll()
        print(json.dumps(report, sort_keys=True), flush=True)
        if args.poll <= 0:
            return (
                0
                if report["result"] in ("activated", "unchanged", "rolled_back", "waiting")
                else 10
            )
        time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
