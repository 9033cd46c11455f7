"""Real OpenSSH devices on loopback for integration tests (and the fleet simulator).

The devices themselves live in :mod:`orchestrator.sim.simulator` (``edgeship sim`` uses the same
code); this module re-exports them and adds what only tests need: :func:`require_sshd`
and :class:`ShipLab`.

``start_devices(3, tmp)`` starts three ``sshd`` processes on 127.0.0.2, 127.0.0.3,
127.0.0.4, each on a free port, each with its own generated host key and its own
install root under ``tmp``. They all accept one generated client key. Stop them
with :meth:`SshDevice.stop` (or :func:`stop_devices`).

When ``sshd`` is not installed, :func:`require_sshd` fails with the install
command under CI (``CI=true``) and skips the test locally.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from orchestrator.sim.simulator import (
    DEVICE_PATH,
    INSTALL_HINT,
    SSHD_CANDIDATES,
    SshDevice,
    find_sshd,
    free_port,
    host_key_line,
    keygen,
    start_devices,
    stop_devices,
    write_fleet,
)

__all__ = [
    "DEVICE_PATH",
    "INSTALL_HINT",
    "SSHD_CANDIDATES",
    "ShipLab",
    "SshDevice",
    "find_sshd",
    "free_port",
    "host_key_line",
    "keygen",
    "require_sshd",
    "start_devices",
    "stop_devices",
    "write_fleet",
]


def require_sshd() -> str:
    """``sshd``'s path; fail under CI, skip locally, when it is missing."""
    import pytest

    path = find_sshd()
    missing = [t for t in ("ssh-keygen", "openssl", "sha256sum") if not shutil.which(t)]
    if path and not missing:
        return path
    what = "sshd" if not path else ", ".join(missing)
    reason = f"{what} not installed; install it with: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
    raise AssertionError("unreachable")


class ShipLab:
    """A signing key store, a bundle folder and a fleet of simulated devices for one test.

    Each lab gives every device a fresh install root under ``base`` (the sshd
    processes themselves may be shared between tests).
    """

    def __init__(
        self,
        base: Path,
        devices: list[SshDevice],
        artifact: Path,
        families: dict[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        """``python``: the devices' interpreter for the agent (default: this one), e.g. a
        tool environment's, for a device whose runtimes differ from the build machine's."""
        from registry.keys import KeyStore

        self.base = base
        self.devices = {d.name: d for d in devices}
        self.artifact = artifact
        self.store = KeyStore(base / "keys", passphrase=b"")
        self.store.init()
        self.bundles = base / "bundles"
        self.roots = {d.name: base / "devices" / d.name for d in devices}
        for root in self.roots.values():
            root.mkdir(parents=True, exist_ok=True)
        self.fleet_path = write_fleet(
            base / "fleet" / "lab.yaml",
            devices,
            self.roots,
            families,
            python=python,
            known_hosts=base / "fleet" / "known_hosts",
        )

    @property
    def fleet(self):
        from orchestrator.spec.fleet import load_fleet_file

        return load_fleet_file(self.fleet_path, self.base)

    def select(self, names: list[str] | None) -> list:
        fleet = self.fleet
        return fleet.select(names or None)

    def bundle(self, artifact: Path | None = None, store=None, **kwargs):
        """Bundle (and sign) an artifact as the next version."""
        from registry.bundle import make_bundle

        return make_bundle(artifact or self.artifact, store or self.store, self.bundles, **kwargs)

    def enroll(self, names: list[str] | None = None, **kwargs):
        """Enrol devices; returns the RolloutResult (also when some failed)."""
        from orchestrator.errors import RolloutError
        from orchestrator.ship.enroll import enroll

        try:
            return enroll(self.fleet, self.select(names), self.store, **kwargs)
        except RolloutError as exc:
            return exc.result

    def deploy(self, bundle, names: list[str] | None = None, store=..., **options):
        """Deploy a bundle; returns the RolloutResult (also when some failed)."""
        from orchestrator.errors import RolloutError
        from orchestrator.ship.deploy import DeployOptions, deploy

        try:
            return deploy(
                self.fleet,
                self.select(names),
                bundle,
                self.store if store is ... else store,
                DeployOptions(**options),
            )
        except RolloutError as exc:
            return exc.result

    def session(self, name: str):
        from orchestrator.ship.ssh import connect

        fleet = self.fleet
        return connect(fleet.device(name), Path(fleet.known_hosts))

    def agent(self, name: str, args: str, env: dict[str, str] | None = None):
        """Run the device's agent over SSH; returns the RemoteResult."""
        with self.session(name) as s:
            return s.agent(args, env=env)

    def status(self, name: str) -> dict:
        res = self.agent(name, "status")
        assert res.code == 0, res
        return res.json()

    def log(self, name: str) -> list[dict]:
        """The device's agent.log as a list of entries."""
        import json

        path = self.roots[name] / "log" / "agent.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the simulator: the devices of a fleet file, on this machine -----------------------------------


def simulate_fleet(fleet_name: str, state: Path | None = None) -> list[SshDevice]:
    """Start one sshd per device of a loopback fleet (``simulate_fleet`` of the simulator)."""
    from orchestrator.project import project_root
    from orchestrator.sim.simulator import simulate_fleet as simulate

    return simulate(fleet_name, project_root(), state)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.sshd FLEET``: run a fleet's simulated devices until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.sshd", description=main.__doc__)
    parser.add_argument("fleet", help="fleet name (conf/fleet/NAME.yaml) or fleet file")
    args = parser.parse_args(argv)
    if find_sshd() is None:
        print(f"sshd not installed; install it with: {INSTALL_HINT}", file=sys.stderr)
        return 1
    devices = simulate_fleet(args.fleet)
    for d in devices:
        print(f"{d.name:<10} {d.address}:{d.port}  sshd pid {d.pid or '-'}")
    print("simulated devices running; Ctrl-C stops them", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_devices(devices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
