"""The simulation's events side: a Mosquitto broker on loopback (TLS, a password per client,
an ACL per device) and the collector (``edgeship events serve``) subscribed to it.

``edgeship sim up --events`` starts both and writes the fleet file's ``events`` section, so
``edgeship enroll`` issues every device its credential and makes the broker read them
(SIGHUP to the broker's pid file). The files live in ``<simulation>/broker/``:

    ca.pem, server.pem, server.key   a CA made for the simulation and the broker's certificate
                                     for 127.0.0.1 (the devices and the collector verify it)
    passwords, acl                   Mosquitto's files; enrolment adds the devices' entries
    collector.secret                 the collector's password (it may only read the events)
    mosquitto.conf, .pid, .log       the broker;  collector.log: the collector's output

The collector logs each version's live figures to the MLflow run of its build every
:data:`REPORT_EVERY` seconds (``events serve --report-every``).
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.core import mosquitto
from orchestrator.core.fsutil import pid_alive
from orchestrator.errors import SimError

COLLECTOR_USER = "collector"
REPORT_EVERY = 30  # seconds: the collector logs each version's live figures to MLflow
INSTALL_HINT = "apt-get install mosquitto"


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


def make_ca(
    folder: Path, name: str = "edgeship simulation CA", days: int = 365
) -> tuple[Path, Any, Any]:
    """A self-signed CA: (its PEM file, its certificate, its key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def server_certificate(
    folder: Path, ca_cert: Any, ca_key: Any, days: int = 365
) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by the CA: (cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _pid_of(path: Path, marker: bytes) -> int | None:
    """The pid in ``path`` when that process still runs and its command line has ``marker``."""
    try:
        pid = int(path.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker in cmdline else None


def _stop(pid: int | None, timeout: float = 15.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):  # a zombie (its starter has not reaped it yet) is gone too
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class SimBroker:
    """The broker and the collector of one simulation (files in ``folder``)."""

    def __init__(self, folder: Path, project: Path) -> None:
        self.folder = folder
        self.project = project
        self.ca_file = folder / "ca.pem"
        self.passwords = folder / "passwords"
        self.acl = folder / "acl"
        self.secret = folder / "collector.secret"
        self.conf = folder / "mosquitto.conf"
        self.pid_file = folder / "mosquitto.pid"
        self.log = folder / "mosquitto.log"
        self.collector_pid_file = folder / "collector.pid"
        self.collector_log = folder / "collector.log"

    def fleet_section(self, port: int) -> dict[str, Any]:
        """The fleet file's ``events`` section for this broker."""
        return {
            "broker": f"127.0.0.1:{port}",
            "ca_file": str(self.ca_file),
            "password_file": str(self.passwords),
            "acl_file": str(self.acl),
            "pid_file": str(self.pid_file),
        }

    def _prepare(self, port: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.ca_file.is_file() and (self.folder / "server.pem").is_file()):
            _, ca_cert, ca_key = make_ca(self.folder)
            server_certificate(self.folder, ca_cert, ca_key)
        if not self.secret.is_file():
            password = secrets.token_urlsafe(32)
            fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            mosquitto.set_password(self.passwords, COLLECTOR_USER, password)
        if not self.acl.is_file():
            self.acl.write_text(
                f"user {COLLECTOR_USER}\ntopic read {mosquitto.events_topic('+', '+')}\n"
            )
        self.conf.write_text(
            "\n".join(
                [
                    "# generated by `edgeship sim up --events`",
                    f"user {getpass.getuser()}",
                    "per_listener_settings false",
                    "allow_anonymous false",
                    f"password_file {self.passwords}",
                    f"acl_file {self.acl}",
                    "persistence true",
                    f"persistence_location {self.folder}/",
                    "max_inflight_messages 1000",
                    "max_queued_messages 1000000",
                    f"listener {port} 127.0.0.1",
                    f"cafile {self.ca_file}",
                    f"certfile {self.folder / 'server.pem'}",
                    f"keyfile {self.folder / 'server.key'}",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "",
                ]
            )
        )

    def broker_pid(self) -> int | None:
        return _pid_of(self.pid_file, str(self.conf).encode())

    def collector_pid(self) -> int | None:
        return _pid_of(self.collector_pid_file, b"serve")

    def start(self, port: int, timeout: float = 60.0) -> dict[str, Any]:
        """Start the broker on ``port`` and the collector; returns what ``sim.json`` keeps."""
        mosquitto = find_mosquitto()
        if mosquitto is None:
            raise SimError(f"mosquitto not installed; install it with: {INSTALL_HINT}")
        self._prepare(port)
        with self.log.open("ab") as out:
            broker = subprocess.Popen(
                [mosquitto, "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{broker.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            if broker.poll() is not None:
                raise SimError(f"mosquitto exited at start: {self._tail(self.log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                _stop(broker.pid)
                raise SimError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout:g}s")
            time.sleep(0.1)
        mark = self.log.stat().st_size
        env = dict(os.environ, EDGESHIP_ROOT=str(self.project))
        with self.collector_log.open("ab") as out:
            collector = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator.cli.main",
                    "events",
                    "serve",
                    "--broker",
                    f"127.0.0.1:{port}",
                    "--username",
                    COLLECTOR_USER,
                    "--password-file",
                    str(self.secret),
                    "--ca-file",
                    str(self.ca_file),
                    "--report-every",
                    str(REPORT_EVERY),
                ],
                cwd=self.project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.collector_pid_file.write_text(f"{collector.pid}\n")
        # the collector counts once the broker has seen it log in
        seen = f"u'{COLLECTOR_USER}'".encode()
        while True:
            if collector.poll() is not None:
                _stop(broker.pid)
                raise SimError(f"the collector exited at start: {self._tail(self.collector_log)}")
            with self.log.open("rb") as f:
                f.seek(mark)
                if seen in f.read():
                    break
            if time.monotonic() > deadline:
                _stop(collector.pid)
                _stop(broker.pid)
                raise SimError(
                    f"the collector did not connect to the broker within {timeout:g}s "
                    f"(see {self.collector_log})"
                )
            time.sleep(0.2)
        return {
            "broker": f"127.0.0.1:{port}",
            "broker_pid": broker.pid,
            "collector_pid": collector.pid,
            "folder": str(self.folder),
        }

    def stop(self) -> None:
        """Stop the collector (it prints its counters) and then the broker."""
        _stop(self.collector_pid())
        _stop(self.broker_pid())

    @staticmethod
    def _tail(path: Path) -> str:
        try:
            lines = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"
