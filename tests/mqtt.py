"""A real Mosquitto broker on loopback: a password per client and an ACL per device, TLS
with a CA and a server certificate generated for the test when asked."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.sim.broker import make_ca, server_certificate
from tests.conftest import free_port, stop_group

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None
)
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None or shutil.which("mosquitto_passwd") is None,
    reason="needs the mosquitto broker (apt-get install mosquitto; tools/system-deps.sh)",
)


class Broker:
    """``users``: name -> password; a device ``(fleet, name)`` may publish only its own events
    topic and read nothing; ``collector`` may only read every device's events topic.

    ``tls``: the listener speaks TLS with a server certificate from a generated CA
    (``ca_file``). ``passwords``/``acl``: use these files (e.g. written by enrolment) instead
    of generating them; ``collector`` is added to them."""

    def __init__(
        self,
        folder: Path,
        devices: list[tuple[str, str]],
        tls: bool = False,
        passwords: Path | None = None,
        acl: Path | None = None,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = {name: f"secret-{name}" for _, name in devices}
        self.users["collector"] = "secret-collector"
        passwords = passwords or folder / "passwords"
        if not passwords.exists():
            passwords.write_text("")
        for name, password in self.users.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(passwords), name, password],
                check=True,
                capture_output=True,
            )
            (folder / f"{name}.secret").write_text(password + "\n")
        lines = ["user collector", "topic read edgeship/+/+/events", ""]
        for fleet, name in devices:
            lines += [f"user {name}", f"topic write edgeship/{fleet}/{name}/events", ""]
        acl_file = acl or folder / "acl"
        before = acl_file.read_text() if acl_file.exists() else ""
        acl_file.write_text("\n".join(lines) + "\n" + before)
        self.ca_file: Path | None = None
        tls_lines: list[str] = []
        if tls:
            self.ca_file, ca_cert, ca_key = make_ca(folder / "tls")
            cert, key = server_certificate(folder / "tls", ca_cert, ca_key)
            tls_lines = [f"cafile {self.ca_file}", f"certfile {cert}", f"keyfile {key}"]
        (folder / "mosquitto.conf").write_text(
            "\n".join(
                [
                    f"user {getpass.getuser()}",
                    "per_listener_settings false",
                    "allow_anonymous false",
                    f"password_file {passwords}",
                    f"acl_file {acl_file}",
                    # what waits for the collector survives a broker restart (saved on stop)
                    "persistence true",
                    f"persistence_location {folder}/",
                    # the collector acknowledges in batches once they are stored; a backlog
                    # waits at the broker instead of being dropped past 1,000 messages
                    "max_inflight_messages 1000",
                    "max_queued_messages 1000000",
                    f"listener {self.port} 127.0.0.1",
                    *tls_lines,
                    "log_dest stderr",
                    "log_type all",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen | None = None
        self.log = folder / "mosquitto.log"

    def password_file(self, name: str) -> Path:
        return self.folder / f"{name}.secret"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.folder / "mosquitto.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
