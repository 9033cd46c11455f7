"""Pull mode: poll the fleet's signed repository, install what is addressed here, report.

A device that can only make outgoing connections runs ``edgeship-agent pull``
(once, or every ``--interval`` seconds from a service). Each poll:

1. fetches ``.tuf/timestamp.json`` (a few hundred bytes; the same bytes as last time
   mean nothing moved) and checks it as TUF does: signed by the threshold of the
   ``timestamp`` keys of this device's root, not expired, never older than seen;
2. when it moved: ``snapshot.json`` (the version the timestamp names, ``snapshot``
   keys) and ``targets.json`` (the version the snapshot names, ``targets`` keys);
3. reads the fleet's rollout document ``fleets/<fleet>/rollout.json``, a target
   whose length and SHA-256 the signed targets metadata give: the deployment,
   the version, the waves (device names) and how many are open, halted or not;
4. when this device is in an open wave and runs another version: downloads the
   bundle's files (each a target: length and SHA-256 checked while it streams;
   files already installed are copied here instead of downloaded), then activates
   it exactly as a pushed bundle (signature, rules, approvals, health check,
   automatic rollback); a halted rollout that says ``rollback`` switches back to
   the version it names, verified again;
5. reports its state (JSON over HTTP(S) POST) to the fleet's report URL; a report
   that could not be delivered is sent again at the next poll.

A repository whose timestamp expired is a frozen (or cut-off) repository: nothing
is installed and the report says ``stale_repository``. What was verified last is
kept in ``<root>/pull.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import time
import urllib.error
import urllib.request

from . import rootmeta
from .clock import iso
from .errors import EXIT_OK, EXIT_REFUSED, EXIT_UNHEALTHY, Refusal
from .files import ENVELOPE, read_json, remove_tree, write_json
from .rules import MAX_FILE_BYTES, path_problem

PULL_STATE = "pull.json"
METADATA = ".tuf/"
ROLLOUT_KIND = "edgeship.pull-rollout"
MAX_TIMESTAMP_BYTES = 64 * 1024
MAX_SNAPSHOT_BYTES = 1024 * 1024
MAX_TARGETS_BYTES = 64 * 1024 * 1024  # every file of every issued bundle: ~200 bytes each
MAX_ROLLOUT_BYTES = 8 * 1024 * 1024  # wave membership of a fleet of 100 000 devices
CHUNK = 1024 * 1024
DONE = ("healthy", "failed", "refused", "rolled_back")  # a report that ends this device's turn


def rollout_target(fleet: str) -> str:
    """The target path of a fleet's rollout document."""
    return f"fleets/{fleet}/rollout.json"


def _mismatch(found: object, named: int) -> str:
    """A newer file than the one named: the repository moved while it was read (try again);
    an older one: stale metadata."""
    newer = isinstance(found, int) and not isinstance(found, bool) and found > named
    return MOVING if newer else "stale_metadata"


MOVING = "repository_moving"


class PullError(Exception):
    """The repository could not be read or did not verify (``code`` is machine-readable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Http:
    """GETs and POSTs with urllib: size caps, a timeout, and who is asking."""

    def __init__(self, device: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.agent = f"edgeship-agent ({device})"
        self.received = 0

    def get(self, url: str, limit: int) -> tuple:
        """(status, body, None): the whole body, at most ``limit`` bytes."""
        request = urllib.request.Request(url, headers={"User-Agent": self.agent})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            code = "not_found" if exc.code == 404 else "http_error"
            raise PullError(code, f"{url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            raise PullError("unreachable", f"{url}: {exc}") from exc
        if len(body) > limit:
            raise PullError("too_large", f"{url}: more than {limit} bytes")
        self.received += len(body)
        return 200, body, None

    def download(self, url: str, dest: str, length: int, sha256: str) -> None:
        """Stream ``url`` into the new file ``dest``, checking length and SHA-256 on the way."""
        request = urllib.request.Request(url, headers={"User-Agent": self.agent})
        digest = hashlib.sha256()
        got = 0
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
            with response, open(dest, "xb") as out:
                while True:
                    chunk = response.read(min(CHUNK, length - got + 1))
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > length:
                        raise PullError("too_large", f"{url}: longer than its {length} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise PullError("http_error", f"{url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            raise PullError("unreachable", f"{url}: {exc}") from exc
        finally:
            self.received += got
        if got != length or digest.hexdigest() != sha256:
            raise PullError("hash_mismatch", f"{url}: length or SHA-256 differs from its target")

    def post(self, url: str, doc: dict) -> None:
        data = json.dumps(doc, sort_keys=True).encode()
        headers = {"User-Agent": self.agent, "Content-Type": "application/json"}
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1024)
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            raise PullError("unreachable", f"{url}: {exc}") from exc


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PullError("malformed", f"{what}: expected a non-negative integer, found {value!r}")
    return value


class Puller:
    """One device's side of a pull-based fleet, on top of an :class:`~.agent.Agent`."""

    def __init__(self, agent, repository: str, reports: str | None, timeout: float = 30.0):
        self.agent = agent
        self.base = repository.rstrip("/") + "/"
        self.reports = reports
        self.state_path = os.path.join(agent.root, PULL_STATE)
        self.device = agent.device()
        self.http = Http(str(self.device.get("name")), timeout)

    # -- metadata -----------------------------------------------------------------------------

    def _verified(self, data: bytes, role: str, trust: dict) -> dict:
        """The ``signed`` part of role metadata, after its signatures, type and expiry."""
        source = METADATA + role + ".json"
        try:
            doc = rootmeta.strict_loads(data, source, limit=MAX_TARGETS_BYTES, max_depth=16)
        except rootmeta.RootError as exc:
            raise PullError(exc.code, exc.message) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
            raise PullError("malformed", f"{source}: expected TUF metadata")
        signed = doc["signed"]
        if signed.get("_type") != role:
            raise PullError("malformed", f"{source}: _type is {signed.get('_type')!r}, not {role}")
        if not isinstance(doc.get("signatures"), list):
            raise PullError("malformed", f"{source}: no signatures")
        count, threshold = rootmeta.count_signatures(doc, trust, role, self.agent.verify_bytes)
        if count < threshold:
            raise PullError(
                "bad_signature",
                f"{source}: {count} valid signatures of the {role} role; it needs {threshold}",
            )
        try:
            stale = rootmeta.expired(signed)
        except (KeyError, ValueError) as exc:
            raise PullError("malformed", f"{source}: expires: {exc}") from exc
        if stale:
            raise PullError("stale_repository", f"{source} expired at {signed['expires']}")
        return signed

    def _refresh(self, state: dict, trust: dict) -> None:
        """Bring the verified metadata in ``state`` up to the repository's (TUF's order)."""
        known = state.get("timestamp") or {}
        _, body, _ = self.http.get(self.base + METADATA + "timestamp.json", MAX_TIMESTAMP_BYTES)
        digest = hashlib.sha256(body).hexdigest()
        if known and digest == known.get("sha256"):  # the same bytes as verified before
            if rootmeta.expired({"expires": known["expires"]}):
                raise PullError("stale_repository", f"the timestamp expired at {known['expires']}")
            return
        ts = self._verified(body, "timestamp", trust)
        version = _int(ts.get("version"), "timestamp.json version")
        if version < int(known.get("version", 0)):
            raise PullError(
                "stale_metadata",
                f"timestamp.json version {version} is older than the {known['version']} seen",
            )
        if version == known.get("version") and state.get("targets"):
            state["timestamp"] = {"version": version, "expires": ts["expires"], "sha256": digest}
            return
        snap_version = _int(
            ((ts.get("meta") or {}).get("snapshot.json") or {}).get("version"), "snapshot version"
        )
        _, body, _ = self.http.get(self.base + METADATA + "snapshot.json", MAX_SNAPSHOT_BYTES)
        snapshot = self._verified(body, "snapshot", trust)
        if snapshot.get("version") != snap_version:
            raise PullError(
                _mismatch(snapshot.get("version"), snap_version),
                f"snapshot.json is version {snapshot.get('version')}; the timestamp names "
                f"{snap_version}",
            )
        targets_version = _int(
            ((snapshot.get("meta") or {}).get("targets.json") or {}).get("version"),
            "targets version",
        )
        if targets_version < int(state.get("targets_version", 0)):
            raise PullError("stale_metadata", "targets.json is older than the one seen")
        if targets_version != state.get("targets_version"):
            _, body, _ = self.http.get(self.base + METADATA + "targets.json", MAX_TARGETS_BYTES)
            targets = self._verified(body, "targets", trust)
            if targets.get("version") != targets_version:
                raise PullError(
                    _mismatch(targets.get("version"), targets_version),
                    f"targets.json is version {targets.get('version')}; the snapshot names "
                    f"{targets_version}",
                )
            state["targets"] = self._mine(targets.get("targets") or {})
            state["targets_version"] = targets_version
        state["timestamp"] = {"version": version, "expires": ts["expires"], "sha256": digest}

    def _mine(self, targets: dict) -> dict:
        """The targets this device may need: its fleet's rollout and the bundles it names."""
        fleet = self.device.get("fleet")
        mine = {}
        entry = targets.get(rollout_target(str(fleet))) if fleet else None
        if entry is not None:
            mine["rollout"] = self._target_entry(rollout_target(str(fleet)), entry)
            rollout = self._rollout(mine["rollout"])
            mine["rollout_doc"] = rollout
            for version in {rollout.get("version"), rollout.get("previous")} - {None}:
                prefix = "{}/{}/".format(rollout["deployment"], version)
                mine[str(version)] = {
                    path[len(prefix) :]: self._target_entry(path, e)
                    for path, e in targets.items()
                    if path.startswith(prefix)
                }
        return mine

    def _target_entry(self, path: str, entry: object) -> dict:
        if not isinstance(entry, dict) or not isinstance(entry.get("hashes"), dict):
            raise PullError("malformed", f"targets.json: {path}: expected length and hashes")
        length = _int(entry.get("length"), f"targets.json: {path}: length")
        sha = entry["hashes"].get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise PullError("malformed", f"targets.json: {path}: no SHA-256")
        return {"path": path, "length": length, "sha256": sha}

    def _rollout(self, target: dict) -> dict:
        if target["length"] > MAX_ROLLOUT_BYTES:
            raise PullError("too_large", "{}: {} bytes".format(target["path"], target["length"]))
        _, body, _ = self.http.get(self.base + target["path"], MAX_ROLLOUT_BYTES)
        if len(body) != target["length"] or hashlib.sha256(body).hexdigest() != target["sha256"]:
            raise PullError("hash_mismatch", "{}: differs from its target".format(target["path"]))
        try:
            doc = rootmeta.strict_loads(body, target["path"], limit=MAX_ROLLOUT_BYTES)
        except rootmeta.RootError as exc:
            raise PullError(exc.code, exc.message) from exc
        if not isinstance(doc, dict) or doc.get("_type") != ROLLOUT_KIND:
            raise PullError("malformed", "{}: not a rollout document".format(target["path"]))
        if doc.get("fleet") != self.device.get("fleet"):
            found = doc.get("fleet")
            raise PullError("malformed", "{}: for fleet {!r}".format(target["path"], found))
        waves = doc.get("waves")
        if not isinstance(waves, list) or not all(
            isinstance(w, dict) and isinstance(w.get("devices"), list) for w in waves
        ):
            raise PullError("malformed", "{}: waves: expected a list".format(target["path"]))
        _int(doc.get("version"), "rollout version")
        _int(doc.get("open_waves"), "rollout open_waves")
        if doc.get("previous") is not None:
            _int(doc.get("previous"), "rollout previous")
        if path_problem(str(doc.get("deployment"))) or "/" in str(doc.get("deployment")):
            raise PullError("malformed", "rollout deployment: {!r}".format(doc.get("deployment")))
        name = self.device.get("name")
        index = None
        for i, wave in enumerate(waves):
            if name in wave["devices"]:
                index = i
                break
        return {
            "id": str(doc.get("id")),
            "deployment": doc["deployment"],
            "version": doc["version"],
            "previous": doc.get("previous"),
            "open_waves": doc["open_waves"],
            "halted": bool(doc.get("halted")),
            "rollback": bool(doc.get("rollback")),
            "wave": index,
        }

    # -- acting -------------------------------------------------------------------------------

    @staticmethod
    def desired(rollout: dict) -> int | None:
        """The version this device should run under ``rollout`` (None: leave it as it is)."""
        wave = rollout.get("wave")
        if wave is None or wave >= rollout["open_waves"]:
            return None  # not addressed, or its wave has not opened
        if rollout["halted"]:
            return rollout["previous"] if rollout["rollback"] else None
        return rollout["version"]

    def _stage(self, version: int, files: dict) -> tuple:
        """Download the bundle ``version`` into staging/; (folder, bytes fetched, bytes reused)."""
        agent = self.agent
        folder = os.path.join(agent.staging, f"pull-{version}")
        remove_tree(folder)
        os.makedirs(folder)
        known = agent.known_files()
        fetched = reused = 0
        for rel, target in sorted(files.items()):
            problem = None if rel in ENVELOPE else path_problem(rel)
            if problem is None and target["length"] > MAX_FILE_BYTES:
                problem = "larger than a bundle file may be"
            if problem is not None:
                raise Refusal("unsafe_path", f"repository target {target['path']}: {problem}")
            dest = os.path.join(folder, *rel.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            source = known.get(target["sha256"])
            entry = {"size": target["length"], "sha256": target["sha256"]}
            if source is not None and agent.copy_file(source, dest, entry):
                reused += target["length"]
                continue
            self.fetch_file(self.base + target["path"], dest, target)
            fetched += target["length"]
        return folder, fetched, reused

    def fetch_file(self, url: str, dest: str, target: dict) -> None:
        """Download one target (the simulator stores identical files once)."""
        self.http.download(url, dest, target["length"], target["sha256"])

    def once(self, timeout: float = 300.0) -> tuple:
        """One poll: (report, exit code)."""
        state = read_json(self.state_path) if os.path.isfile(self.state_path) else {}
        before = json.dumps(state, sort_keys=True)
        report = {"device": self.device.get("name"), "fleet": self.device.get("fleet")}
        code = EXIT_OK
        try:
            trust = self.agent.trust()
            if rootmeta.expired(trust):
                raise PullError("trust_expired", "the root of trust expired at " + trust["expires"])
            for attempt in range(3):  # a repository being published to: read it again
                try:
                    self._refresh(state, trust)
                    break
                except PullError as exc:
                    if exc.code != MOVING or attempt == 2:
                        raise
                    time.sleep(0.5)
            code = self._act(state, report, timeout)
        except PullError as exc:
            report.update(result="error", reason=exc.code, message=exc.message)
        except Refusal as exc:
            report.update(result="refused", reason=exc.code, message=exc.message)
            code = EXIT_REFUSED
        report["running"] = self.agent.link_version(self.agent.current)
        report["timestamp_version"] = (state.get("timestamp") or {}).get("version")
        report["received_bytes"] = self.http.received
        self._report(state, report)
        if json.dumps(state, sort_keys=True) != before:  # most polls change nothing
            write_json(self.state_path, state)
        return report, code

    def _act(self, state: dict, report: dict, timeout: float) -> int:
        targets = state.get("targets") or {}
        rollout = targets.get("rollout_doc")
        if not rollout:
            report.update(result="no_rollout")
            return EXIT_OK
        want = self.desired(rollout)
        running = self.agent.link_version(self.agent.current)
        report.update(rollout=rollout["id"], wave=rollout["wave"], desired=want)
        if want is None or want == running:
            report["result"] = "waiting" if want is None else "healthy"
            if want is not None:
                health = self._health_of(running)
                report["result"] = "healthy" if health.get("result") == "pass" else "failed"
                report["health"] = health.get("result")
            return EXIT_OK
        failed = state.setdefault("failed", {})
        key = "{}:{}".format(rollout["id"], want)
        if key in failed:  # tried under this rollout and it failed: wait for a new decision
            report.update(result="failed", reason=failed[key])
            return EXIT_UNHEALTHY
        if want in self.agent.installed():
            self.agent.rollback(want)
            report["result"] = "rolled_back"
            self.agent.log("pull", action="rollback", version=want, rollout=rollout["id"])
            return EXIT_OK
        files = targets.get(str(want))
        if not files or "manifest.json" not in files:
            raise PullError("not_found", f"the repository lists no bundle version {want}")
        folder, fetched, reused = self._stage(want, files)
        report.update(downloaded_bytes=fetched, reused_bytes=reused)
        try:
            result, code = self.agent.activate(folder, timeout)
        finally:
            remove_tree(folder)
        report["health"] = (result.get("health") or {}).get("result") or result.get("result")
        if code == EXIT_OK:
            report["result"] = "healthy"
        else:
            health = result.get("health") or {}
            reason = result.get("refusal") or health.get("reason") or result.get("result")
            failed[key] = reason
            report.update(result="refused" if code == EXIT_REFUSED else "failed", reason=reason)
        self.agent.log("pull", action="activate", version=want, result=report["result"])
        return code

    def _health_of(self, version: int | None) -> dict:
        entry = (self.agent.state().get("versions") or {}).get(str(version)) or {}
        return entry.get("health") or {}

    def _report(self, state: dict, report: dict) -> None:
        """Send the report when it says something new (or the last one was not delivered)."""
        if not self.reports:
            return
        said = {k: v for k, v in report.items() if k not in ("received_bytes",)}
        if state.get("reported") == said:
            return
        report["at"] = iso()
        try:
            self.http.post(self.reports, report)
        except PullError as exc:
            state["report_error"] = exc.message
            return
        state["reported"] = said
        state.pop("report_error", None)


def poll(puller: Puller, timeout: float) -> tuple:
    """One poll with the device lock held (another command may run between polls)."""
    agent = puller.agent
    agent.lock(wait=True)
    try:
        agent.recover()
        return puller.once(timeout)
    finally:
        agent.unlock()


def pull_command(agent, args) -> tuple:
    """``edgeship-agent pull``: one poll, or one every ``--interval`` seconds (a service)."""
    puller = Puller(agent, args.repository, args.reports, args.http_timeout)
    if not args.interval:
        return poll(puller, args.timeout)
    while True:  # spread in time, so that a fleet does not poll in step
        report, _ = poll(puller, args.timeout)
        agent.log("polled", result=report.get("result"), reason=report.get("reason"))
        time.sleep(args.interval * random.uniform(0.5, 1.5))
