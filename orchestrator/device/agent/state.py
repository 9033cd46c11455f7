"""The install root: its layout, the device lock, device.json and state.json, the version links.

Layout under the install root (``--root``, default /opt/edgeship)::

    bin/edgeship_agent.pyz, bin/edgeship-agent  this agent (one zipapp) and its wrapper
    device.json                                 name and target family (written at enrolment)
    trust/current -> trust/<serial>-<hash>/     trust.json, trust.json.sig, keys/<key id>.pem
    versions/<version>/                         installed bundles, side by side
    current -> versions/<version>               the active bundle (switched with one rename)
    previous -> versions/<version>              the one before it
    state.json                                  installed versions, health results, history
    staging/<name>/                             uploads in progress (resumable)
    log/agent.log                               one JSON line per action and refusal
"""

from __future__ import annotations

import fcntl
import os
import shutil

from .errors import EXIT_CRASH, Nothing, Refusal
from .files import MANIFEST, fsync_dir, read_json, remove_tree, write_json
from .log import log_event

CRASH_ENV = "EDGESHIP_AGENT_CRASH_AT"


class Install:
    """One install root: paths, lock, journal, state and the `current`/`previous` links."""

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

    def unlock(self) -> None:
        """Release the device lock (a long-running command holds it only while it acts)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = None
        self.locked = False

    # -- journal -------------------------------------------------------------------------

    def log(self, event: str, **fields: object) -> None:
        log_event(self.log_dir, self.command, event, fields)

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

    def usable_version(self, version: int) -> bool:
        """Whether recovery may switch to ``version`` (the activation side verifies it)."""
        return True

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
                    remove_tree(os.path.join(self.versions, name))
        if os.path.islink(self.current) and self.link_version(self.current) is None:
            fallback = self.link_version(self.previous)
            if fallback is not None and not self.usable_version(fallback):
                fallback = None
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
        elif os.path.dirname(path) == self.staging and os.path.isfile(path):
            os.unlink(path)  # an uploaded bundle file (.tar), refused or installed

    def refusal_result(self, exc: Refusal) -> dict:
        return {
            "result": "refused",
            "refusal": exc.code,
            "message": exc.message,
            "more": [{"refusal": c, "message": m} for c, m in exc.more],
            "current": self.link_version(self.current),
        }
