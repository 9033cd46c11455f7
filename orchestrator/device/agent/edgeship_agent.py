#!/usr/bin/env python3
"""edgeship device agent: verify, activate, health-check and roll back signed bundles.

This file runs ON THE DEVICE. It needs only the Python standard library (3.8+),
``openssl`` and ``sha256sum``; the health check imports the device's own runtime
(onnxruntime or openvino, whichever the bundle's runtime.json names) and numpy.
It never imports edgeship.

Layout under the install root (``--root``, default /opt/edgeship)::

    bin/edgeship_agent.py, bin/edgeship-agent   this agent and its wrapper
    device.json                                 name and target family (written at enrolment)
    trust/current -> trust/<serial>-<hash>/     trust.json, trust.json.sig, keys/<key id>.pem
    versions/<version>/                         installed bundles, side by side
    current -> versions/<version>               the active bundle (switched with one rename)
    previous -> versions/<version>              the one before it
    state.json                                  installed versions, health results, history
    staging/<name>/                             uploads in progress (resumable)
    log/agent.log                               one JSON line per action and refusal

Commands (JSON on stdout)::

    verify BUNDLE          check signature, key, hashes, family, version, expiry, runtime
                           (--manifest-only: all but the files, before uploading them)
    activate BUNDLE        verify, install, switch `current`, health check, roll back on failure
    health                 run the current bundle's smoke test with the device runtime
    rollback [--to V]      switch `current` back to `previous` (or to installed version V)
    status                 what is installed and active, trust set, runtimes
    update-trust FILE      accept a new trust set signed by a trusted key with a higher serial
    init --name N --family F --trust FILE    enrolment (first trust set)
    inventory              sha256 -> path of every installed file (for deduplicated uploads)
    link --plan FILE       hard-link installed files into a staging folder

BUNDLE is a bundle folder or an exported bundle ``.tar``.

Exit codes::

    0   done (including "already installed": activation is idempotent)
    1   agent error (a tool missing, a file unreadable)
    2   usage error
    10  refused: nothing was changed; the JSON says why (``refusal``)
    11  health check failed (activate: rolled back to the previous version)
    12  health check failed and there is no previous version to go back to
    13  nothing to act on (not enrolled, no current or previous version)
    99  stopped on purpose at an activation step (EDGESHIP_AGENT_CRASH_AT, for tests)

Versions: a bundle whose version is lower than the active one is refused unless
a signed rollback order (rollback.json + .sig, beside the manifest) names that
version and manifest digest. The same version with the same manifest digest is
a no-op ("unchanged"); the same version with another digest is refused.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime

AGENT_VERSION = "1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
ROLLBACK = "rollback.json"
ROLLBACK_SIG = "rollback.json.sig"
ENVELOPE = (MANIFEST, SIGNATURE, ROLLBACK, ROLLBACK_SIG)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$")
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
CRASH_ENV = "EDGESHIP_AGENT_CRASH_AT"
ACTIVATION_STEPS = (
    "copying",  # half of the files copied into versions/.<v>.tmp
    "copied",
    "verified",
    "installed",  # versions/<v> in place
    "journal",  # state.json says an activation is under way
    "previous_link",  # temp symlink for `previous` created
    "previous_switched",
    "current_link",  # temp symlink for `current` created
    "current_switched",
    "state_written",
    "health_done",
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 10
EXIT_UNHEALTHY = 11
EXIT_UNHEALTHY_NO_PREVIOUS = 12
EXIT_NOTHING = 13
EXIT_CRASH = 99

RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": (
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-openvino",
        "onnxruntime-directml",
    ),
    "openvino": ("openvino",),
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None = None) -> str:
    return (moment or utcnow()).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


class Refusal(Exception):
    """A bundle (or trust set) the device will not accept. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, more: list | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.more = more or []  # further (code, message) pairs found in the same check


class AgentError(Exception):
    """Something the agent needs is missing or broken (exit 1)."""


class Nothing(Exception):
    """There is nothing to act on (exit 13)."""


# -- small helpers -------------------------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: str, data: object) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> dict:
    with open(path, "rb") as fh:
        data = json.loads(fh.read().decode())
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def key_id_of_pem(pem: str) -> str:
    """First 16 hex of sha256(raw Ed25519 public key), from a SubjectPublicKeyInfo PEM."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise ValueError("not an Ed25519 public key")
    return hashlib.sha256(der[12:]).hexdigest()[:16]


def openssl_verify(pem_path: str, data_path: str, sig_path: str) -> bool:
    """``openssl pkeyutl -verify -pubin -inkey KEY -rawin -in DATA -sigfile SIG``."""
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pem_path, "-rawin"]
    cmd += ["-in", data_path, "-sigfile", sig_path]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60)
    except FileNotFoundError as exc:
        raise AgentError("openssl is not installed on this device") from exc
    return proc.returncode == 0


def sha256sum_check(folder: str, entries: list) -> list:
    """Paths (relative to ``folder``) whose SHA-256 differs, checked with ``sha256sum -c``."""
    if not entries:
        return []
    listing = "".join("{}  {}\n".format(e["sha256"], e["path"]) for e in entries)
    try:
        proc = subprocess.run(
            ["sha256sum", "-c", "-"],
            input=listing.encode(),
            cwd=folder,
            capture_output=True,
            timeout=600,
        )
    except FileNotFoundError as exc:
        raise AgentError("sha256sum is not installed on this device") from exc
    ok = set()
    for line in proc.stdout.decode(errors="replace").splitlines():
        name, _, verdict = line.rpartition(": ")
        if verdict.strip() == "OK":
            ok.add(name)
    return [e["path"] for e in entries if e["path"] not in ok]


def parse_release(text: str) -> tuple:
    match = re.match(r"\d+(\.\d+)*", text.strip())
    if not match:
        return ()
    return tuple(int(p) for p in match.group(0).split("."))


def _cmp(a: tuple, b: tuple) -> int:
    width = max(len(a), len(b))
    a = a + (0,) * (width - len(a))
    b = b + (0,) * (width - len(b))
    return (a > b) - (a < b)


def satisfies(version: str, specifier: str) -> bool:
    """A small PEP 440 specifier check on release numbers (>=, <=, >, <, ==, !=, ~=, ==X.*)."""
    have = parse_release(version)
    for clause in [c.strip() for c in specifier.split(",") if c.strip()]:
        match = re.match(r"(~=|==|!=|>=|<=|>|<)\s*(.+)$", clause)
        if not match:
            return False
        op, want_text = match.group(1), match.group(2).strip()
        if want_text.endswith(".*"):
            prefix = parse_release(want_text[:-2])
            same = have[: len(prefix)] == prefix
            if (op == "==" and not same) or (op == "!=" and same):
                return False
            continue
        want = parse_release(want_text)
        c = _cmp(have, want)
        ok = {
            "==": c == 0,
            "!=": c != 0,
            ">=": c >= 0,
            "<=": c <= 0,
            ">": c > 0,
            "<": c < 0,
            "~=": c >= 0 and have[: max(len(want) - 1, 1)] == want[: max(len(want) - 1, 1)],
        }[op]
        if not ok:
            return False
    return True


def runtime_version(runtime: str) -> str | None:
    """The installed version of a runtime, from package metadata (no import)."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    for dist in RUNTIME_DISTRIBUTIONS.get(runtime, (runtime,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def emit(data: dict) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


# -- the agent -----------------------------------------------------------------------------------


class Agent:
    """The device side of edgeship, rooted at one install root."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.versions = os.path.join(self.root, "versions")
        self.current = os.path.join(self.root, "current")
        self.previous = os.path.join(self.root, "previous")
        self.trust_dir = os.path.join(self.root, "trust")
        self.staging = os.path.join(self.root, "staging")
        self.log_dir = os.path.join(self.root, "log")
        self.state_path = os.path.join(self.root, "state.json")
        self.device_path = os.path.join(self.root, "device.json")
        self.command = ""
        self.locked = False
        self._lock_fd: int | None = None

    def lock(self, wait: bool) -> bool:
        """Hold the device lock (one changing agent at a time); False when busy and not waiting."""
        if not os.path.isdir(self.root):
            return False
        fd = os.open(os.path.join(self.root, ".agent.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd  # released when the process exits, even on a crash
        self.locked = True
        return True

    # -- journal -------------------------------------------------------------------------

    def log(self, event: str, **fields: object) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        entry = {"ts": iso(), "pid": os.getpid(), "command": self.command, "event": event}
        entry.update(fields)
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        fd = os.open(
            os.path.join(self.log_dir, "agent.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def step(self, name: str) -> None:
        """An activation step; EDGESHIP_AGENT_CRASH_AT=<name> stops the agent right here."""
        if os.environ.get(CRASH_ENV) == name:
            self.log("crash_injected", step=name)
            os._exit(EXIT_CRASH)

    # -- device, state ---------------------------------------------------------------------

    def device(self) -> dict:
        if not os.path.isfile(self.device_path):
            raise Nothing(
                f"this device is not enrolled (no {self.device_path}); run edgeship enroll"
            )
        return read_json(self.device_path)

    def state(self) -> dict:
        if not os.path.isfile(self.state_path):
            return {
                "deployment": None,
                "versions": {},
                "history": [],
                "failed": [],
                "pending": None,
            }
        data = read_json(self.state_path)
        for key, default in (("versions", {}), ("history", []), ("failed", []), ("pending", None)):
            data.setdefault(key, default)
        return data

    def save_state(self, state: dict) -> None:
        write_json(self.state_path, state)

    def link_version(self, link: str) -> int | None:
        """The version a `current`/`previous` link points at, None when absent or dangling."""
        if not os.path.islink(link):
            return None
        target = os.readlink(link)
        full = os.path.join(self.root, target)
        if not os.path.isfile(os.path.join(full, MANIFEST)):
            return None
        name = os.path.basename(target.rstrip("/"))
        return int(name) if name.isdigit() else None

    def version_dir(self, version: int) -> str:
        return os.path.join(self.versions, str(version))

    def installed(self) -> list:
        if not os.path.isdir(self.versions):
            return []
        return sorted(int(n) for n in os.listdir(self.versions) if n.isdigit())

    def switch(self, link: str, version: int | None) -> None:
        """Point ``link`` at versions/<version> with one rename of a temp symlink (or remove it)."""
        name = os.path.basename(link)
        if version is None:
            if os.path.islink(link):
                os.unlink(link)
            return
        tmp = os.path.join(self.root, f".{name}.tmp-{os.getpid()}")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("versions", str(version)), tmp)
        self.step(f"{name}_link")
        os.replace(tmp, link)
        fsync_dir(self.root)
        self.step(f"{name}_switched")

    def recover(self) -> None:
        """Repair what an interrupted activation left: temp copies, temp links, the journal.

        Only while holding the device lock: without it, another agent may be mid-activation.
        """
        if not os.path.isdir(self.root) or not self.locked:
            return
        for name in os.listdir(self.root):
            if name.startswith((".current.tmp-", ".previous.tmp-")):
                os.unlink(os.path.join(self.root, name))
        if os.path.isdir(self.versions):
            for name in os.listdir(self.versions):
                if name.startswith("."):
                    shutil.rmtree(os.path.join(self.versions, name), ignore_errors=True)
        if os.path.islink(self.current) and self.link_version(self.current) is None:
            fallback = self.link_version(self.previous)
            self.log("recovered", reason="current pointed at no complete version", now=fallback)
            if fallback is None:
                os.unlink(self.current)
            else:
                self.switch(self.current, fallback)
        state = self.state()
        pending = state.get("pending")
        if pending and os.getpid() != pending.get("pid"):
            current = self.link_version(self.current)
            version = pending.get("version")
            if current != version:
                reason = f"activation of version {version} was interrupted before the switch"
            else:
                reason = f"activation of version {version} was interrupted after the switch"
                state["pending_health"] = version
                state["pending_from"] = pending.get("from")
                state["history"] = [v for v in state.get("history", []) if v != version] + [version]
            self.log("recovered", reason=reason, current=current)
            state["pending"] = None
            self.save_state(state)

    # -- trust -----------------------------------------------------------------------------

    def trust_path(self) -> str:
        return os.path.join(self.trust_dir, "current")

    def trust(self) -> dict:
        path = os.path.join(self.trust_path(), "trust.json")
        if not os.path.isfile(path):
            raise Nothing("no trust set on this device; run edgeship enroll")
        return read_json(path)

    def key_pem(self, kid: str, trust: dict | None = None) -> str:
        """The PEM file of a trusted key; Refusal for a revoked or unknown key."""
        trust = trust if trust is not None else self.trust()
        if kid in trust.get("revoked", []):
            raise Refusal("revoked_key", f"signed by revoked key {kid}")
        if kid not in [k["key_id"] for k in trust.get("keys", [])]:
            raise Refusal("untrusted_key", f"signed by key {kid}, which this device does not trust")
        return os.path.join(self.trust_path(), "keys", kid + ".pem")

    def _check_trust_doc(self, data: bytes, source: str) -> dict:
        try:
            doc = json.loads(data.decode())
        except ValueError as exc:
            raise Refusal("malformed_trust", f"{source}: invalid JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("kind") != "edgeship.trust":
            raise Refusal("malformed_trust", f"{source}: not an edgeship trust set")
        try:
            for entry in doc["keys"]:
                if key_id_of_pem(entry["public_key_pem"]) != entry["key_id"]:
                    raise Refusal(
                        "malformed_trust",
                        "{}: key {} does not match its id".format(source, entry["key_id"]),
                    )
            int(doc["serial"])
            str(doc["signed_by"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Refusal("malformed_trust", f"{source}: malformed trust set ({exc!r})") from exc
        return doc

    def _install_trust(self, data: bytes, sig: bytes, doc: dict) -> None:
        serial = int(doc["serial"])
        name = f"{serial}-{sha256_bytes(data)[:12]}"  # never the folder `current` points at
        folder = os.path.join(self.trust_dir, name)
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "keys"))
        for entry in doc["keys"]:
            if entry["key_id"] in doc.get("revoked", []):
                continue
            write_atomic(
                os.path.join(tmp, "keys", entry["key_id"] + ".pem"),
                entry["public_key_pem"].encode(),
            )
        write_atomic(os.path.join(tmp, "trust.json.sig"), sig)
        write_atomic(os.path.join(tmp, "trust.json"), data)
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(tmp, folder)
        link_tmp = os.path.join(self.trust_dir, f".current.tmp-{os.getpid()}")
        if os.path.lexists(link_tmp):
            os.unlink(link_tmp)
        os.symlink(name, link_tmp)
        os.replace(link_tmp, self.trust_path())
        fsync_dir(self.trust_dir)
        for entry in os.listdir(self.trust_dir):
            if entry not in ("current", name):
                shutil.rmtree(os.path.join(self.trust_dir, entry), ignore_errors=True)

    def _verify_with(self, pem_path: str, data: bytes, sig: bytes) -> bool:
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            data_path = os.path.join(tmp, "doc")
            sig_path = os.path.join(tmp, "doc.sig")
            with open(data_path, "wb") as fh:
                fh.write(data)
            with open(sig_path, "wb") as fh:
                fh.write(sig)
            return openssl_verify(pem_path, data_path, sig_path)

    def update_trust(self, path: str, sig_path: str | None, first: bool = False) -> dict:
        """Accept a trust set signed by a key this device trusts, with a higher serial."""
        sig_path = sig_path or path + ".sig"
        if not os.path.isfile(sig_path):
            raise Refusal("missing_signature", f"no signature {sig_path} for the trust set")
        with open(path, "rb") as fh:
            data = fh.read()
        with open(sig_path, "rb") as fh:
            sig = fh.read()
        self.drop_upload(path, sig_path)
        doc = self._check_trust_doc(data, path)
        signer = str(doc["signed_by"])
        if first:
            pems = {k["key_id"]: k["public_key_pem"] for k in doc["keys"]}
            if signer not in pems:
                raise Refusal(
                    "untrusted_key",
                    f"the trust set is signed by {signer}, which it does not list",
                )
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                pem = os.path.join(tmp, "signer.pem")
                with open(pem, "w") as fh:
                    fh.write(pems[signer])
                if not self._verify_with(pem, data, sig):
                    raise Refusal("bad_signature", "the trust set's signature does not verify")
            self._install_trust(data, sig, doc)
            self.log("trust_installed", serial=doc["serial"], keys=sorted(pems), first=True)
            return {"result": "installed", "serial": doc["serial"]}
        current = self.trust()
        if int(doc["serial"]) == int(current["serial"]):
            installed = os.path.join(self.trust_path(), "trust.json")
            with open(installed, "rb") as fh:
                if fh.read() == data:
                    return {"result": "unchanged", "serial": doc["serial"]}
            raise Refusal(
                "stale_trust",
                "trust set serial {} is already installed with other content".format(doc["serial"]),
            )
        if int(doc["serial"]) < int(current["serial"]):
            raise Refusal(
                "stale_trust",
                "trust set serial {} is not newer than the installed serial {}".format(
                    doc["serial"], current["serial"]
                ),
            )
        pem = self.key_pem(signer, current)
        if not self._verify_with(pem, data, sig):
            raise Refusal(
                "bad_signature",
                f"the trust set's signature does not verify with key {signer}",
            )
        self._install_trust(data, sig, doc)
        self.log(
            "trust_updated", serial=doc["serial"], signed_by=signer, revoked=doc.get("revoked", [])
        )
        return {"result": "updated", "serial": doc["serial"], "previous_serial": current["serial"]}

    # -- verification ----------------------------------------------------------------------

    def read_manifest(self, folder: str) -> tuple:
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise Refusal("malformed", f"{folder} has no {MANIFEST}")
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            manifest = json.loads(data.decode())
            if manifest.get("kind") != "edgeship.bundle":
                raise ValueError("kind is not edgeship.bundle")
            int(manifest["version"])
            str(manifest["signing"]["key_id"])
            list(manifest["files"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Refusal("malformed", f"{path}: not a valid manifest ({exc})") from exc
        return manifest, sha256_bytes(data)

    def check_signature(self, folder: str) -> tuple:
        """Signature of the manifest by a trusted, unrevoked key (openssl)."""
        sig = os.path.join(folder, SIGNATURE)
        if not os.path.isfile(os.path.join(folder, MANIFEST)):
            raise Refusal("malformed", f"{folder} has no {MANIFEST}")
        if not os.path.isfile(sig):
            raise Refusal("missing_signature", f"no signature: {SIGNATURE} is missing")
        manifest, digest = self.read_manifest(folder)
        kid = str(manifest["signing"]["key_id"])
        pem = self.key_pem(kid)
        if not openssl_verify(pem, os.path.join(folder, MANIFEST), sig):
            raise Refusal(
                "bad_signature",
                f"bad signature: {SIGNATURE} does not verify with key {kid}",
            )
        return manifest, digest

    def check_files(self, folder: str, manifest: dict) -> list:
        """Every file listed, none unlisted, every hash right (sha256sum). Returns problems."""
        problems = []
        listed = {}
        for entry in manifest["files"]:
            path = str(entry.get("path", ""))
            if not SAFE_PATH.match(path) or ".." in path.split("/"):
                problems.append(("malformed", f"unsafe file name in manifest: {path!r}"))
                continue
            listed[path] = entry
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in filenames + [
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ]:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                if rel in ENVELOPE and dirpath == folder:
                    continue
                if os.path.islink(full):
                    problems.append(("unlisted_file", f"symbolic link in bundle: {rel}"))
                elif rel not in listed:
                    problems.append(("unlisted_file", f"file not in the manifest: {rel}"))
        present = []
        for rel, entry in sorted(listed.items()):
            full = os.path.join(folder, rel)
            if not os.path.isfile(full) or os.path.islink(full):
                problems.append(("missing_file", f"file missing: {rel}"))
            elif os.path.getsize(full) != int(entry.get("size", -1)):
                problems.append(("hash_mismatch", f"size differs from the manifest: {rel}"))
            else:
                present.append(entry)
        for rel in sha256sum_check(folder, present):
            problems.append(("hash_mismatch", f"sha256 differs from the manifest: {rel}"))
        return problems

    def check_rollback_order(self, folder: str, manifest: dict, digest: str) -> str | None:
        """None when a valid signed rollback order names this bundle, else why not."""
        path = os.path.join(folder, ROLLBACK)
        sig = os.path.join(folder, ROLLBACK_SIG)
        if not os.path.isfile(path):
            return "no signed rollback order names it"
        if not os.path.isfile(sig):
            return "the rollback order has no signature"
        try:
            order = read_json(path)
            kid = str(order["signing"]["key_id"])
        except (ValueError, KeyError, TypeError) as exc:
            return f"the rollback order is malformed ({exc})"
        try:
            pem = self.key_pem(kid)
        except Refusal as exc:
            return f"the rollback order is {exc.message}"
        if not openssl_verify(pem, path, sig):
            return "the rollback order's signature does not verify"
        if order.get("kind") != "edgeship.rollback":
            return "the rollback order is not an edgeship rollback order"
        if (
            order.get("deployment") != manifest.get("deployment")
            or int(order.get("version", -1)) != int(manifest["version"])
            or order.get("manifest_sha256") != digest
        ):
            return "the rollback order names another bundle"
        if parse_time(str(order.get("expires_at"))) <= utcnow():
            return "the rollback order expired at {}".format(order.get("expires_at"))
        return None

    def check_policy(self, folder: str, manifest: dict, digest: str) -> tuple:
        """Expiry, family, deployment, version order, runtime; returns (problems, unchanged)."""
        problems = []
        device = self.device()
        try:
            expires = parse_time(str(manifest["expires_at"]))
        except (KeyError, ValueError):
            problems.append(("malformed", "manifest has no valid expires_at"))
        else:
            if expires <= utcnow():
                problems.append(
                    ("expired", "manifest expired at {}".format(manifest["expires_at"]))
                )
        target = manifest.get("target") or {}
        family = target.get("family")
        if family != device.get("family"):
            problems.append(
                (
                    "wrong_family",
                    "bundle is for target family '{}'; this device is '{}'".format(
                        family, device.get("family")
                    ),
                )
            )
        state = self.state()
        current = self.link_version(self.current)
        deployment = manifest.get("deployment")
        unchanged = False
        if current is not None:
            if state.get("deployment") and deployment != state.get("deployment"):
                problems.append(
                    (
                        "wrong_deployment",
                        "bundle is for deployment '{}'; this device runs '{}'".format(
                            deployment, state.get("deployment")
                        ),
                    )
                )
            version = int(manifest["version"])
            if version == current:
                installed = state.get("versions", {}).get(str(current), {})
                if installed.get("manifest_sha256") == digest:
                    unchanged = True
                else:
                    problems.append(
                        (
                            "version_conflict",
                            f"version {version} is installed with a different manifest",
                        )
                    )
            elif version < current:
                why = self.check_rollback_order(folder, manifest, digest)
                if why is not None:
                    problems.append(
                        (
                            "downgrade",
                            f"version {version} is lower than the active version {current} "
                            f"and {why}",
                        )
                    )
        runtime = target.get("runtime")
        have = runtime_version(str(runtime))
        if have is None:
            problems.append(
                (
                    "runtime_unavailable",
                    f"runtime {runtime} is not installed on this device",
                )
            )
        else:
            wanted = str(target.get("runtime_requirement") or "")
            if wanted and not satisfies(have, wanted):
                problems.append(
                    (
                        "runtime_version",
                        f"bundle needs {runtime} {wanted}; this device has {have}",
                    )
                )
        return problems, unchanged

    def verify(self, folder: str, policy: bool = True, files: bool = True) -> dict:
        """Everything a device checks before it installs a bundle; raises Refusal.

        ``files=False`` checks only the signed manifest (signature, key, policy): a
        sender asks that before uploading the files.
        """
        manifest, digest = self.check_signature(folder)
        problems = []
        unchanged = False
        if policy:
            problems, unchanged = self.check_policy(folder, manifest, digest)
        if files:
            problems += self.check_files(folder, manifest)
        if problems:
            code, message = problems[0]
            raise Refusal(code, message, problems[1:])
        return {
            "deployment": manifest.get("deployment"),
            "version": int(manifest["version"]),
            "manifest_sha256": digest,
            "key_id": manifest["signing"]["key_id"],
            "unchanged": unchanged,
            "manifest": manifest,
        }

    # -- bundles in, as folders or tar files ---------------------------------------------------

    def open_bundle(self, path: str) -> tuple:
        """A folder to verify: the folder itself, or a tar extracted into staging/."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return path, None
        if not os.path.isfile(path):
            raise AgentError(f"no bundle at {path}")
        os.makedirs(self.staging, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="tar-", dir=self.staging)
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for member in members:
                parts = member.name.split("/")
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise Refusal("malformed", f"unsafe entry in {path}: {member.name}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp, members=members)  # every member was checked above
        found = [d for d, _, files in os.walk(tmp) if MANIFEST in files]
        if len(found) != 1:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Refusal("malformed", f"{path} holds {len(found)} manifests; expected one")
        return found[0], tmp

    def apply_carried_trust(self, extracted: str) -> None:
        """Apply the trust sets an exported bundle carries (trust/), oldest first, if newer."""
        folder = os.path.join(extracted, "trust")
        if not os.path.isdir(folder):
            return
        serial = int(self.trust()["serial"])
        for name in sorted(os.listdir(folder)):
            match = re.match(r"trust-(\d+)\.json$", name)
            if match and int(match.group(1)) > serial:
                self.update_trust(os.path.join(folder, name), None)
                serial = int(match.group(1))

    # -- activation ------------------------------------------------------------------------------

    def known_files(self) -> dict:
        """sha256 -> absolute path of files already installed (trusted: verified at install)."""
        out: dict = {}
        for version in self.installed():
            folder = self.version_dir(version)
            try:
                manifest, _ = self.read_manifest(folder)
            except Refusal:
                continue
            for entry in manifest["files"]:
                full = os.path.join(folder, entry["path"])
                if os.path.isfile(full) and os.path.getsize(full) == int(entry.get("size", -1)):
                    out.setdefault(entry["sha256"], full)
        return out

    def install_copy(self, src: str, manifest: dict, version: int) -> str:
        """Copy a bundle into versions/.<v>.tmp (hard-linking files already installed)."""
        os.makedirs(self.versions, exist_ok=True)
        tmp = os.path.join(self.versions, f".{version}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        known = self.known_files()
        files = list(manifest["files"])
        for i, entry in enumerate(files):
            dest = os.path.join(tmp, entry["path"])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            source = known.get(entry["sha256"])
            if source is not None:
                try:
                    os.link(source, dest)
                except OSError:
                    shutil.copyfile(source, dest)
            else:
                shutil.copyfile(os.path.join(src, entry["path"]), dest)
            os.chmod(dest, 0o444)
            if i == len(files) // 2:
                self.step("copying")
        for name in ENVELOPE:
            if os.path.isfile(os.path.join(src, name)):
                shutil.copyfile(os.path.join(src, name), os.path.join(tmp, name))
        self.step("copied")
        return tmp

    def activate(self, bundle: str, timeout: float) -> tuple:
        self.recover()
        device = self.device()
        folder, extracted = self.open_bundle(bundle)
        try:
            try:
                if extracted:
                    self.apply_carried_trust(extracted)
                info = self.verify(folder)
            except Refusal as exc:
                self.log(
                    "refused",
                    refusal=exc.code,
                    message=exc.message,
                    more=[m for _, m in exc.more],
                    bundle=bundle,
                )
                self._drop_staged(bundle)
                return self.refusal_result(exc), EXIT_REFUSED
            version = info["version"]
            state = self.state()
            if info["unchanged"]:
                if state.get("pending_health") == version:
                    self._drop_staged(bundle)
                    return self._finish_health(version, state.get("pending_from"), timeout)
                self.log("unchanged", version=version, deployment=info["deployment"])
                self._drop_staged(bundle)
                return {
                    "result": "unchanged",
                    "version": version,
                    "deployment": info["deployment"],
                }, EXIT_OK
            dest = self.version_dir(version)
            if os.path.isdir(dest):
                _, existing = self.read_manifest(dest)
                if existing != info["manifest_sha256"]:
                    refusal = Refusal(
                        "version_conflict",
                        f"version {version} is installed with a different manifest",
                    )
                    self.log(
                        "refused", refusal=refusal.code, message=refusal.message, bundle=bundle
                    )
                    return self.refusal_result(refusal), EXIT_REFUSED
            else:
                tmp = self.install_copy(folder, info["manifest"], version)
                try:
                    self.verify(tmp, policy=False)
                except Refusal as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    self.log("refused", refusal=exc.code, message="installed copy: " + exc.message)
                    return self.refusal_result(exc), EXIT_REFUSED
                self.step("verified")
                os.rename(tmp, dest)
                fsync_dir(self.versions)
                self.step("installed")
        finally:
            if extracted:
                shutil.rmtree(extracted, ignore_errors=True)
        old = self.link_version(self.current)
        state["pending"] = {
            "version": version,
            "from": old,
            "pid": os.getpid(),
            "started_at": iso(),
        }
        state["deployment"] = info["deployment"]
        state.setdefault("versions", {})[str(version)] = {
            "manifest_sha256": info["manifest_sha256"],
            "key_id": info["key_id"],
            "installed_at": iso(),
            "created_at": info["manifest"].get("created_at"),
            "expires_at": info["manifest"].get("expires_at"),
            "provenance": {
                "git": (info["manifest"].get("provenance") or {}).get("git"),
                "mlflow": (info["manifest"].get("provenance") or {}).get("mlflow"),
            },
        }
        self.save_state(state)
        self.step("journal")
        if old is not None and old != version:
            self.switch(self.previous, old)
        self.switch(self.current, version)
        state = self.state()
        state["pending"] = None
        state["pending_health"] = version
        state["pending_from"] = old
        state["history"] = [v for v in state.get("history", []) if v != version] + [version]
        state["versions"][str(version)]["activated_at"] = iso()
        self.save_state(state)
        self.log(
            "activated",
            version=version,
            previous=old,
            deployment=info["deployment"],
            device=device.get("name"),
        )
        self.step("state_written")
        self._drop_staged(bundle)
        return self._finish_health(version, old, timeout)

    def drop_upload(self, *paths: str) -> None:
        """Remove uploaded single files (plans, trust sets) once read, if they are in staging/."""
        for path in paths:
            full = os.path.abspath(path)
            if full.startswith(self.staging + os.sep) and os.path.isfile(full):
                os.unlink(full)

    def _drop_staged(self, bundle: str) -> None:
        path = os.path.abspath(bundle)
        if os.path.dirname(path) == self.staging and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)

    def _finish_health(self, version: int, old: int | None, timeout: float) -> tuple:
        result = self.run_health(version, timeout)
        self.step("health_done")
        state = self.state()
        state["versions"].setdefault(str(version), {})["health"] = result
        state["pending_health"] = None
        state["pending_from"] = None
        self.save_state(state)
        if result["result"] == "pass":
            self.log("healthy", version=version, latency_ms=result.get("latency_ms"))
            return {
                "result": "activated",
                "version": version,
                "previous": old,
                "health": result,
            }, EXIT_OK
        self.log("unhealthy", version=version, reason=result.get("reason"))
        state["failed"] = sorted(set(state.get("failed", [])) | {version})
        state["history"] = [v for v in state.get("history", []) if v != version]
        self.save_state(state)
        if old is not None and old != version and os.path.isdir(self.version_dir(old)):
            self.switch(self.current, old)
            self.switch(self.previous, self._predecessor(old))
            self.log("rolled_back", version=old, from_version=version, reason="health check failed")
            return (
                {
                    "result": "rolled_back",
                    "version": old,
                    "failed_version": version,
                    "health": result,
                },
                EXIT_UNHEALTHY,
            )
        self.switch(self.current, None)
        self.log(
            "deactivated", version=version, reason="health check failed and no previous version"
        )
        return {
            "result": "unhealthy",
            "version": None,
            "failed_version": version,
            "health": result,
        }, (EXIT_UNHEALTHY_NO_PREVIOUS)

    def _predecessor(self, version: int) -> int | None:
        """The good version activated before ``version`` that is still on disk."""
        state = self.state()
        history = [v for v in state.get("history", []) if v not in state.get("failed", [])]
        if version in history:
            earlier = history[: history.index(version)]
        else:
            earlier = [v for v in history if v < version]
        for v in reversed(earlier):
            if os.path.isdir(self.version_dir(v)):
                return v
        return None

    def rollback(self, to: int | None) -> dict:
        self.recover()
        current = self.link_version(self.current)
        target = to if to is not None else self.link_version(self.previous)
        if target is None:
            raise Nothing("no previous version to roll back to")
        folder = self.version_dir(target)
        if not os.path.isdir(folder):
            raise Nothing(f"version {target} is not installed here; installed: {self.installed()}")
        if target == current:
            return {"result": "unchanged", "version": current}
        self.verify(folder, policy=False)
        self.switch(self.current, target)
        self.switch(self.previous, self._predecessor(target))
        state = self.state()
        state["history"] = [v for v in state.get("history", []) if v != target] + [target]
        self.save_state(state)
        self.log("rolled_back", version=target, from_version=current, reason="on command")
        return {"result": "rolled_back", "version": target, "from_version": current}

    # -- health -----------------------------------------------------------------------------

    def run_health(self, version: int | None, timeout: float) -> dict:
        """Run the smoke test in a child process (a crashing runtime cannot take the agent down)."""
        folder = self.version_dir(version) if version is not None else None
        if folder is None or not os.path.isdir(folder):
            return {"result": "fail", "reason": "no version to check", "version": version}
        cmd = [sys.executable, os.path.abspath(__file__), "--root", self.root, "health-run", folder]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {
                "result": "fail",
                "reason": f"health check timed out after {timeout}s",
                "version": version,
            }
        try:
            result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            return {
                "result": "fail",
                "reason": f"health check exited with {proc.returncode}: {' | '.join(tail)}",
                "version": version,
            }
        result["version"] = version
        return result

    def health(self, timeout: float) -> tuple:
        self.recover()
        version = self.link_version(self.current)
        if version is None:
            raise Nothing("no current version on this device")
        result = self.run_health(version, timeout)
        state = self.state()
        state["versions"].setdefault(str(version), {})["health"] = result
        if state.get("pending_health") == version and result["result"] == "pass":
            state["pending_health"] = None
        self.save_state(state)
        self.log("health", version=version, result=result["result"], reason=result.get("reason"))
        return result, EXIT_OK if result["result"] == "pass" else EXIT_UNHEALTHY

    # -- status and inventory -------------------------------------------------------------------

    def status(self) -> dict:
        self.recover()
        state = self.state()
        out = {
            "agent_version": AGENT_VERSION,
            "root": self.root,
            "enrolled": os.path.isfile(self.device_path),
            "busy": os.path.isdir(self.root) and not self.locked,  # another command is running
            "device": read_json(self.device_path) if os.path.isfile(self.device_path) else None,
            "deployment": state.get("deployment"),
            "current": self.link_version(self.current),
            "previous": self.link_version(self.previous),
            "installed": self.installed(),
            "failed": state.get("failed", []),
            "pending_health": state.get("pending_health"),
            "versions": state.get("versions", {}),
            "python": sys.executable,
            "runtimes": {name: runtime_version(name) for name in RUNTIME_DISTRIBUTIONS},
        }
        try:
            trust = self.trust()
            out["trust"] = {
                "serial": trust["serial"],
                "keys": [k["key_id"] for k in trust["keys"]],
                "revoked": trust.get("revoked", []),
                "active": trust.get("active"),
            }
        except Nothing:
            out["trust"] = None
        return out

    def inventory(self) -> dict:
        known = self.known_files()
        return {"files": {sha: os.path.relpath(p, self.root) for sha, p in known.items()}}

    def link(self, plan_path: str) -> dict:
        """Hard-link installed files into staging/ (plan: [{"sha256", "dest"}])."""
        with open(plan_path, "rb") as fh:
            plan = json.loads(fh.read().decode())
        self.drop_upload(plan_path)
        known = self.known_files()
        linked, missing = 0, []
        for item in plan:
            dest = os.path.abspath(os.path.join(self.root, item["dest"]))
            if not dest.startswith(self.staging + os.sep):
                raise AgentError("link destination outside staging/: {}".format(item["dest"]))
            source = known.get(item["sha256"])
            if source is None:
                missing.append(item["dest"])
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            for stale in (dest, dest + ".part"):
                if os.path.lexists(stale):
                    os.unlink(stale)
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
            linked += 1
        return {"linked": linked, "missing": missing}

    def init(self, name: str, family: str, trust_file: str, reset_trust: bool) -> dict:
        for folder in (self.root, self.versions, self.staging, self.log_dir, self.trust_dir):
            os.makedirs(folder, exist_ok=True)
        first = reset_trust or not os.path.isdir(self.trust_path())
        trust = self.update_trust(trust_file, None, first=first)
        previous = read_json(self.device_path) if os.path.isfile(self.device_path) else None
        device = {
            "name": name,
            "family": family,
            "enrolled_at": (previous or {}).get("enrolled_at") or iso(),
            "agent_version": AGENT_VERSION,
            "python": sys.executable,
        }
        write_json(self.device_path, device)
        self.log(
            "enrolled",
            name=name,
            family=family,
            trust_serial=trust["serial"],
            again=previous is not None,
        )
        return {"result": "enrolled", "device": device, "trust": trust}

    def refusal_result(self, exc: Refusal) -> dict:
        return {
            "result": "refused",
            "refusal": exc.code,
            "message": exc.message,
            "more": [{"refusal": c, "message": m} for c, m in exc.more],
            "current": self.link_version(self.current),
        }


# -- the health check itself (child process; imports the device runtime and numpy) -----------------


def health_run(folder: str) -> dict:
    """Load the model as runtime.json says, run smoke/input.npz, compare with expected.npz."""
    import numpy as np

    runtime = read_json(os.path.join(folder, "runtime.json"))
    smoke_dir = os.path.join(folder, "smoke")
    smoke = read_json(os.path.join(smoke_dir, "smoke.json"))
    name = runtime["target"]["runtime"]
    settings = runtime.get("settings") or {}
    model_path = os.path.join(folder, runtime["model"]["file"])
    in_names = [t["name"] for t in runtime["inputs"]]
    out_names = [t["name"] for t in runtime["outputs"]]
    with np.load(os.path.join(smoke_dir, smoke.get("input", "input.npz"))) as npz:
        inputs = {n: np.asarray(npz[n]) for n in in_names}
    for spec in runtime["inputs"]:
        inputs[spec["name"]] = inputs[spec["name"]].astype(spec.get("dtype", "float32"))
    with np.load(os.path.join(smoke_dir, smoke.get("expected", "expected.npz"))) as npz:
        expected = {n: np.asarray(npz[n]) for n in out_names}

    if name == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
        so.inter_op_num_threads = int(settings.get("inter_op_num_threads", 0))
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = settings.get("graph_optimization_level", "ORT_ENABLE_ALL")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        provider = settings.get("execution_provider", "CPUExecutionProvider")
        session = ort.InferenceSession(model_path, so, providers=[provider])
        version = ort.__version__

        def infer() -> list:
            return list(session.run(out_names, inputs))

    elif name == "openvino":
        import openvino as ov

        core = ov.Core()
        device = settings.get("device", runtime["target"].get("device", "CPU"))
        config = {k: v for k, v in settings.items() if k != "device"}
        compiled = core.compile_model(core.read_model(model_path), device, config)
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)
        version = ov.get_version()

        def infer() -> list:
            result = request.infer(inputs)
            return [np.array(result[o]) for o in outputs]

    else:
        return {"result": "fail", "reason": f"unsupported runtime {name}"}

    infer()  # warm-up
    start = time.perf_counter()
    got = infer()
    latency_ms = (time.perf_counter() - start) * 1000.0
    atol = float(smoke.get("atol", 1e-3))
    rtol = float(smoke.get("rtol", 0.0))
    report = {}
    failures = []
    for out_name, value in zip(out_names, got, strict=False):
        want = expected[out_name]
        if value.shape != want.shape:
            failures.append(f"{out_name}: shape {list(value.shape)}, expected {list(want.shape)}")
            continue
        diff = (
            float(np.max(np.abs(value.astype(np.float64) - want.astype(np.float64))))
            if value.size
            else 0.0
        )
        ok = bool(np.allclose(value, want, atol=atol, rtol=rtol))
        report[out_name] = {"max_abs_diff": diff, "atol": atol, "rtol": rtol, "passed": ok}
        if not ok:
            failures.append(f"{out_name}: max |diff| {diff:.6g} > atol {atol:.6g}")
    agreement = None
    if (
        got
        and expected.get(out_names[0]) is not None
        and got[0].shape == expected[out_names[0]].shape
    ):
        axis = int(smoke.get("argmax_axis", -1))
        agreement = float(
            np.mean(np.argmax(got[0], axis=axis) == np.argmax(expected[out_names[0]], axis=axis))
        )
        needed = float(smoke.get("min_argmax_agreement", 1.0))
        if agreement < needed:
            failures.append(f"argmax agreement {agreement:.4f} < {needed:.4f}")
    return {
        "result": "fail" if failures else "pass",
        "reason": "; ".join(failures) or None,
        "latency_ms": round(latency_ms, 3),
        "runtime": {"name": name, "version": str(version)},
        "python": sys.version.split()[0],
        "deployment": runtime.get("deployment"),
        "outputs": report,
        "argmax_agreement": agreement,
    }


# -- command line ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeship-agent", description="edgeship device agent")
    p.add_argument("--root", default=os.environ.get("EDGESHIP_AGENT_ROOT", "/opt/edgeship"))
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("verify", help="verify a bundle folder or exported .tar")
    s.add_argument("bundle")
    s.add_argument("--manifest-only", action="store_true", help="signature and policy, not files")
    s = sub.add_parser("activate", help="verify, install, switch, health-check")
    s.add_argument("bundle")
    s.add_argument("--timeout", type=float, default=300.0, help="health check timeout (seconds)")
    s = sub.add_parser("health", help="health check of the current version")
    s.add_argument("--timeout", type=float, default=300.0)
    s = sub.add_parser("rollback", help="switch back to previous (or --to VERSION)")
    s.add_argument("--to", type=int, default=None)
    s = sub.add_parser("status", help="JSON status")
    s.add_argument(
        "--inventory", action="store_true", help="include sha256 -> path of installed files"
    )
    s = sub.add_parser("update-trust", help="install a newer trust set")
    s.add_argument("file")
    s.add_argument("--sig", default=None)
    s = sub.add_parser("init", help="enrolment")
    s.add_argument("--name", required=True)
    s.add_argument("--family", required=True)
    s.add_argument("--trust", required=True)
    s.add_argument("--reset-trust", action="store_true")
    sub.add_parser("inventory", help="sha256 -> path of installed files")
    s = sub.add_parser("link", help="hard-link installed files into staging")
    s.add_argument("--plan", required=True)
    s = sub.add_parser("health-run", help=argparse.SUPPRESS)
    s.add_argument("folder")
    return p


def main(argv: list | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.command:
        parser().print_usage(sys.stderr)
        return EXIT_USAGE
    agent = Agent(args.root)
    agent.command = args.command
    if args.command == "init":
        os.makedirs(agent.root, exist_ok=True)
    if args.command in ("activate", "rollback", "health", "update-trust", "init", "link"):
        agent.lock(wait=True)
    elif args.command in ("status", "verify", "inventory"):
        agent.lock(wait=False)  # busy: answer without repairing anything
    try:
        if args.command == "health-run":
            try:
                result = health_run(args.folder)
            except Exception as exc:  # the runtime refused the model: report it as the reason
                result = {"result": "fail", "reason": f"{type(exc).__name__}: {exc}"}
            emit(result)
            return EXIT_OK if result["result"] == "pass" else EXIT_UNHEALTHY
        if args.command == "verify":
            agent.recover()
            agent.device()
            folder, extracted = agent.open_bundle(args.bundle)
            try:
                info = agent.verify(folder, files=not args.manifest_only)
            finally:
                if extracted:
                    shutil.rmtree(extracted, ignore_errors=True)
            info.pop("manifest")
            agent.log("verified", version=info["version"], deployment=info["deployment"])
            emit(dict(info, result="ok"))
            return EXIT_OK
        if args.command == "activate":
            result, code = agent.activate(args.bundle, args.timeout)
            emit(result)
            return code
        if args.command == "health":
            result, code = agent.health(args.timeout)
            emit(result)
            return code
        if args.command == "rollback":
            emit(agent.rollback(args.to))
            return EXIT_OK
        if args.command == "status":
            status = agent.status()
            if args.inventory:
                status["inventory"] = agent.inventory()["files"]
            emit(status)
            return EXIT_OK
        if args.command == "update-trust":
            agent.device()
            emit(agent.update_trust(args.file, args.sig))
            return EXIT_OK
        if args.command == "init":
            emit(agent.init(args.name, args.family, args.trust, args.reset_trust))
            return EXIT_OK
        if args.command == "inventory":
            emit(agent.inventory())
            return EXIT_OK
        if args.command == "link":
            emit(agent.link(args.plan))
            return EXIT_OK
    except Refusal as exc:
        agent.log("refused", refusal=exc.code, message=exc.message, more=[m for _, m in exc.more])
        emit(agent.refusal_result(exc))
        return EXIT_REFUSED
    except Nothing as exc:
        agent.log("nothing", message=str(exc))
        emit({"result": "nothing", "message": str(exc)})
        return EXIT_NOTHING
    except (AgentError, OSError, ValueError, KeyError) as exc:
        with contextlib.suppress(OSError):
            agent.log("error", message=f"{type(exc).__name__}: {exc}")
        emit({"result": "error", "message": f"{type(exc).__name__}: {exc}"})
        return EXIT_ERROR
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
