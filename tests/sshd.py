"""Real OpenSSH devices on loopback for integration tests (and the fleet simulator).

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
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "apt-get install -y openssh-server (or run tools/system-deps.sh)"


def find_sshd() -> str | None:
    """The ``sshd`` binary, or None when OpenSSH's server is not installed."""
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


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


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "edgeship-test") -> Path:
    """Generate an ed25519 key pair at ``path`` (+ ``.pub``) without a passphrase."""
    if path.exists():
        path.unlink()
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        pub.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def host_key_line(device: SshDevice) -> str:
    """The device's host key as a known_hosts line (``[addr]:port type base64``)."""
    kind, blob = device.host_public_key().split()[:2]
    return f"[{device.address}]:{device.port} {kind} {blob}"


@dataclass
class SshDevice:
    """One ``sshd`` on a loopback address: a device with its own host key and install root."""

    name: str
    address: str
    base: Path  # everything of this device lives here
    client_key: Path  # private key the test client logs in with
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host_key(self) -> Path:
        return self.base / "ssh_host_ed25519_key"

    @property
    def install_root(self) -> Path:
        return self.base / "root"

    @property
    def config_path(self) -> Path:
        return self.base / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.base / "sshd.log"

    def host_public_key(self) -> str:
        """The host key's public line (``ssh-ed25519 AAAA... comment``)."""
        return self.host_key.with_name(self.host_key.name + ".pub").read_text().strip()

    def write_config(self) -> None:
        """sshd_config for this device (loopback only, key auth only, sftp)."""
        authorized = self.client_key.with_name(self.client_key.name + ".pub")
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "Subsystem sftp internal-sftp",
                    # the device's own home (not the test runner's), and a PATH whose
                    # python3 is this environment's (it has the runtimes the agent imports)
                    f"SetEnv HOME={self.base} PATH={Path(sys.executable).parent}:{DEVICE_PATH}",
                    "MaxStartups 50",
                    "MaxSessions 50",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 10.0) -> SshDevice:
        """Start ``sshd -D -e`` and wait until it accepts TCP connections."""
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError(f"sshd not installed; install it with: {INSTALL_HINT}")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        self.base.mkdir(parents=True, exist_ok=True)
        self.install_root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, comment=f"{self.name}-host")
        if not self.port:
            self.port = free_port(self.address)
        self.write_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sshd for {self.name} exited with {self.process.returncode}: "
                    + self.log_path.read_text()[-2000:]
                )
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"sshd for {self.name} did not answer on {self.address}:{self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sshd and every session it started (one process group)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def restart(self, new_host_key: bool = False) -> SshDevice:
        """Stop and start again on the same address and port, optionally with a new host key."""
        self.stop()
        if new_host_key:
            keygen(self.host_key, comment=f"{self.name}-host-new")
        return self.start()


def start_devices(count: int, base: Path, first_octet: int = 2) -> list[SshDevice]:
    """Start ``count`` devices on 127.0.0.<first_octet>... sharing one client key."""
    base.mkdir(parents=True, exist_ok=True)
    client_key = base / "client_ed25519"
    if not client_key.exists():
        keygen(client_key, comment="edgeship-fleet")
    devices: list[SshDevice] = []
    try:
        for i in range(count):
            name = f"dev{i + 1:02d}"
            dev = SshDevice(name, f"127.0.0.{first_octet + i}", base / name, client_key)
            devices.append(dev.start())
    except BaseException:
        stop_devices(devices)
        raise
    return devices


def stop_devices(devices: list[SshDevice]) -> None:
    """Stop every device."""
    for dev in devices:
        dev.stop()


# -- fleets of simulated devices ------------------------------------------------------------------


def write_fleet(
    path: Path,
    devices: list[SshDevice],
    install_roots: dict[str, Path] | None = None,
    families: dict[str, str] | None = None,
    python: str | None = None,
    known_hosts: Path | None = None,
    family: str = "server",
) -> Path:
    """Write a fleet YAML for ``devices`` (name = the file's stem); returns its path."""
    import yaml

    roots = install_roots or {}
    fams = families or {}
    data = {
        "name": path.stem,
        "description": "simulated devices (sshd on loopback)",
        "known_hosts": str(known_hosts or path.with_suffix(".known_hosts")),
        "defaults": {
            "family": family,
            "user": "root",
            "identity_file": str(devices[0].client_key) if devices else "",
            "python": python or sys.executable,
        },
        "devices": [
            {
                "name": d.name,
                "address": d.address,
                "port": d.port,
                "install_root": str(roots.get(d.name, d.install_root)),
                **({"family": fams[d.name]} if d.name in fams else {}),
            }
            for d in devices
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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
    ) -> None:
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
            known_hosts=base / "fleet" / "known_hosts",
        )

    @property
    def fleet(self):
        from orchestrator.config.fleet import load_fleet_file

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
        from orchestrator.rollout.enroll import enroll
        from orchestrator.rollout.errors import RolloutError

        try:
            return enroll(self.fleet, self.select(names), self.store, **kwargs)
        except RolloutError as exc:
            return exc.result

    def deploy(self, bundle, names: list[str] | None = None, store=..., **options):
        """Deploy a bundle; returns the RolloutResult (also when some failed)."""
        from orchestrator.rollout.deploy import DeployOptions, deploy
        from orchestrator.rollout.errors import RolloutError

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
        from orchestrator.rollout.ssh import connect

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
    """Start one sshd per device of a loopback fleet (e.g. conf/fleet/ward_north.yaml).

    Host keys persist under ``state`` (default ``.edgeship/sim/`` in the project), so
    pinned host keys stay valid across restarts; the fleet's identity file is
    generated when missing and authorised on every device.
    """
    from orchestrator.config.fleet import load_fleet
    from orchestrator.config.loader import project_root

    root = project_root()
    fleet = load_fleet(fleet_name, root)
    state = state or root / ".edgeship" / "sim" / fleet.name
    devices: list[SshDevice] = []
    try:
        for dev in fleet.devices:
            if not dev.address.startswith("127."):
                raise SystemExit(f"{dev.name}: {dev.address} is not a loopback address")
            identity = Path(dev.identity_file)
            if not identity.exists():
                identity.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                keygen(identity, comment=f"edgeship-{fleet.name}")
            device = SshDevice(dev.name, dev.address, state / dev.name, identity, port=dev.port)
            Path(dev.install_root).mkdir(parents=True, exist_ok=True)
            devices.append(device.start())
    except BaseException:
        stop_devices(devices)
        raise
    return devices


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
        print(f"{d.name:<10} {d.address}:{d.port}  sshd pid {d.process.pid if d.process else '-'}")
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
