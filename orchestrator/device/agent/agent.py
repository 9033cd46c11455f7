"""The agent as a whole: every command's side, plus status and enrolment."""

from __future__ import annotations

import os
import sys

from .clock import iso
from .errors import Nothing, Refusal
from .files import make_read_only, read_json, remove_tree, write_json
from .measure import Measure
from .privilege import SETTING, identity
from .runtimes import RUNTIME_DISTRIBUTIONS, runtime_version

AGENT_VERSION = "1"


class Agent(Measure):
    """The device side of edgeship, rooted at one install root."""

    user: dict | None = None  # who the agent runs as (privilege.enter), set by __main__

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
            "user": self.user or identity(),  # the agent user: name, uid, gid, groups
        }
        try:
            trust = self.trust()
            out["trust"] = {
                "serial": trust["version"],
                "expires": trust["expires"],
                "keys": list(trust["roles"]["targets"]["keyids"]),
                "roles": {
                    role: {"keyids": entry["keyids"], "threshold": entry["threshold"]}
                    for role, entry in sorted(trust["roles"].items())
                },
            }
        except (Nothing, Refusal) as exc:
            out["trust_error"] = getattr(exc, "message", str(exc))
            out["trust"] = None
        return out

    def drop_refused(self, bundle: str | None) -> None:
        """After a refusal: remove the refused bundle when it is a staged upload (and the lock is
        held), and any extraction or verification left in staging/."""
        if not self.locked or not os.path.isdir(self.staging):
            return
        if bundle:
            self._drop_staged(bundle)
        for name in os.listdir(self.staging):
            if name.startswith(("tar-", ".verify-", ".measure-")):
                remove_tree(os.path.join(self.staging, name))

    def init(
        self, name: str, family: str, trust_file: str, reset_trust: bool, fleet: str | None = None
    ) -> dict:
        for folder in (self.root, self.versions, self.staging, self.log_dir, self.trust_dir):
            os.makedirs(folder, exist_ok=True)
        first = reset_trust or not os.path.isfile(os.path.join(self.trust_path(), "root.json"))
        trust = self.update_trust(trust_file, None, first=first)
        previous = read_json(self.device_path) if os.path.isfile(self.device_path) else None
        me = self.user or identity()
        device = {
            "name": name,
            "family": family,
            "fleet": fleet if fleet is not None else (previous or {}).get("fleet"),
            "enrolled_at": (previous or {}).get("enrolled_at") or iso(),
            "agent_version": AGENT_VERSION,
            "python": sys.executable,
            SETTING: me["name"],  # a root agent is refused unless this says root
            "agent_uid": me["uid"],
        }
        write_json(self.device_path, device)
        for version in self.installed():  # versions installed before they were made read-only
            make_read_only(self.version_dir(version))
        self.log(
            "enrolled",
            name=name,
            family=family,
            fleet=device["fleet"],
            trust_serial=trust["serial"],
            again=previous is not None,
        )
        return {"result": "enrolled", "device": device, "trust": trust}
