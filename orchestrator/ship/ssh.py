"""SSH to devices with Fabric, host keys checked strictly against the fleet's pinned file.

Enrolment is the one trust-on-first-use moment: :func:`pin_host_key` fetches a
device's host key (or takes the one the fleet file states) and writes it to the
fleet's known_hosts file. Every other connection loads only that file and uses
paramiko's ``RejectPolicy``: an unknown host key or a changed one is refused
(Fabric's default would be to add any key it is shown).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shlex
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
from fabric import Config, Connection

from orchestrator.errors import DeviceUnreachableError, HostKeyError
from orchestrator.spec.fleet import DeviceConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15
_PIN_LOCK = threading.Lock()


def host_entry(device: DeviceConfig) -> str:
    """The known_hosts name of a device: ``addr`` on port 22, else ``[addr]:port``."""
    return device.address if device.port == 22 else f"[{device.address}]:{device.port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint."""
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _key_from_line(text: str) -> paramiko.PKey:
    kind, blob = text.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


def connect_failure(exc: BaseException, timeout: float) -> str:
    """Why a connection failed, in words (paramiko's own text says ``[Errno None]``)."""
    import errno

    inner: BaseException = exc
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        inner = next(iter(exc.errors.values()))
    if isinstance(inner, socket.gaierror):
        return "the address does not resolve (DNS or /etc/hosts)"
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s (device off, or a firewall drops the packets)"
    code = getattr(inner, "errno", None)
    words = {
        errno.ECONNREFUSED: "connection refused (no SSH server listens on that port)",
        errno.EHOSTUNREACH: "no route to the host (device off or on another network)",
        errno.ENETUNREACH: "the network is unreachable from here",
        errno.ECONNRESET: "the connection was reset by the device",
        errno.ETIMEDOUT: f"no answer within {timeout:g}s (device off, or a firewall drops it)",
    }
    if code in words:
        return words[code]
    if isinstance(inner, EOFError) or "Error reading SSH protocol banner" in str(inner):
        return "something answered on that port, but not an SSH server"
    return str(inner).replace("[Errno None] ", "") or type(inner).__name__


def fetch_host_key(device: DeviceConfig, timeout: float = CONNECT_TIMEOUT) -> paramiko.PKey:
    """The host key the device presents now (used only at enrolment)."""
    where = f"{device.name} ({device.address} port {device.port})"
    try:
        sock = socket.create_connection((device.address, device.port), timeout=timeout)
    except OSError as exc:
        raise DeviceUnreachableError(f"{where}: {connect_failure(exc, timeout)}") from exc
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError) as exc:
        raise DeviceUnreachableError(f"{where}: {connect_failure(exc, timeout)}") from exc
    finally:
        transport.close()


def pinned_key(device: DeviceConfig, known_hosts: Path) -> paramiko.PKey | None:
    """The key pinned for ``device`` in ``known_hosts`` (None when not pinned)."""
    if not known_hosts.is_file():
        return None
    keys = paramiko.HostKeys(str(known_hosts))
    entry = keys.lookup(host_entry(device))
    if not entry:
        return None
    return next(iter(entry.values()))


def pin_host_key(device: DeviceConfig, known_hosts: Path, repin: bool = False) -> str:
    """Pin the device's host key in ``known_hosts``; returns what was done.

    The key comes from the fleet file (``host_key``) when given, else from the
    device itself (trust on first use). A key already pinned that differs is
    refused unless ``repin``.
    """
    with _PIN_LOCK:
        current = pinned_key(device, known_hosts)
        if device.host_key:
            offered = _key_from_line(device.host_key)
            source = "fleet file"
        else:
            if current is not None and not repin:
                return f"already pinned ({fingerprint(current)})"
            offered = fetch_host_key(device)
            source = "device (first use)"
        if current is not None and not repin:
            if current.get_name() == offered.get_name() and current.asbytes() == offered.asbytes():
                return f"already pinned ({fingerprint(current)})"
            raise HostKeyError(
                f"error: {device.name} ({host_entry(device)}): host key {fingerprint(offered)} "
                "differs "
                f"from the one pinned in {known_hosts} ({fingerprint(current)}); if the device was "
                f"reinstalled, re-pin it with: edgeship enroll --repin ... device={device.name}"
            )
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        keys = paramiko.HostKeys()
        if known_hosts.is_file():
            keys.load(str(known_hosts))
        name = host_entry(device)
        if name in keys:
            del keys[name]
        keys.add(name, offered.get_name(), offered)
        keys.save(str(known_hosts))
        log.info("pinned host key of %s (%s) from %s", device.name, fingerprint(offered), source)
        return f"pinned {fingerprint(offered)} from {source}"


@dataclass
class RemoteResult:
    """What a remote command returned."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The last line of stdout as JSON (the agent prints one JSON line)."""
        lines = [line for line in self.stdout.strip().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"no output (exit {self.code}): {self.stderr.strip()[-500:]}")
        data = json.loads(lines[-1])
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def json_or_none(self) -> dict[str, Any] | None:
        """Like :meth:`json`, None when the output is not a JSON object."""
        try:
            return self.json()
        except ValueError:
            return None


class DeviceSession:
    """An open, strictly host-key-checked SSH connection to one enrolled (or enrolling) device."""

    def __init__(self, device: DeviceConfig, connection: Connection) -> None:
        self.device = device
        self.connection = connection
        self._sftp: paramiko.SFTPClient | None = None
        self.aborted = False  # set by abort(): the connection was closed on purpose
        self.sftp_user: str | None = None  # files travel as this user (None: the SSH user)

    def abort(self) -> None:
        """Close the connection from another thread (a device past its time limit).

        Whatever the device's worker is blocked in (an upload, a remote command)
        fails at once; the device itself finishes or recovers on its own (the agent's
        activation is atomic and resumable).
        """
        self.aborted = True
        transport = self.connection.transport
        if transport is not None:
            transport.close()

    @property
    def root(self) -> str:
        return self.device.install_root.rstrip("/") or "/"

    @property
    def agent_cmd(self) -> str:
        return shlex.quote(f"{self.root}/bin/edgeship-agent")

    def upload_as(self, user: str | None) -> None:
        """Send files as ``user`` from now on (the agent user, so that it owns what it is sent).

        Only when logged in as root and ``user`` is another one: the agent's ``sftp-server``
        command drops to its user and runs OpenSSH's sftp-server over this channel.
        """
        wanted = user if user and user != "root" and self.device.user == "root" else None
        if wanted != self.sftp_user:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            self.sftp_user = wanted

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            if self.sftp_user is None:
                self._sftp = self.connection.sftp()
            else:
                self._sftp = self._agent_sftp()
        return self._sftp

    def _agent_sftp(self) -> paramiko.SFTPClient:
        transport = self.connection.transport
        if transport is None:
            self.connection.open()
            transport = self.connection.transport
        assert transport is not None
        channel = transport.open_session()
        channel.exec_command(f"{self.agent_cmd} sftp-server")
        try:
            return paramiko.SFTPClient(channel)
        except (paramiko.SSHException, EOFError) as exc:
            said = b""
            while channel.recv_ready():
                said += channel.recv(65536)
            channel.close()
            raise RuntimeError(
                f"{self.device.name}: no file transfer as the agent user {self.sftp_user} "
                f"({self.agent_cmd} sftp-server): {said.decode(errors='replace').strip() or exc}"
            ) from exc

    def run(self, command: str, timeout: float | None = None) -> RemoteResult:
        """Run a shell command on the device; never raises for a non-zero exit."""
        result = self.connection.run(
            command, hide=True, warn=True, in_stream=False, timeout=timeout
        )
        return RemoteResult(int(result.exited), result.stdout, result.stderr)

    def run_as_agent_user(self, command: str, timeout: float | None = None) -> RemoteResult:
        """Run a shell command on the agent's own folders with the agent user's rights.

        Logged in as root with a dedicated agent user, root never acts on paths that user
        can change (a link planted in staging/ would turn root's ``rm`` elsewhere): the
        agent drops to its user first (``edgeship-agent as-agent-user``).
        """
        if self.sftp_user is None:
            return self.run(command, timeout=timeout)
        return self.run(f"{self.agent_cmd} as-agent-user {shlex.quote(command)}", timeout=timeout)

    def agent(
        self, args: str, env: dict[str, str] | None = None, timeout: float | None = None
    ) -> RemoteResult:
        """Run ``<root>/bin/edgeship-agent ARGS`` (env given as a VAR=value prefix)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        return self.run(f"{prefix} {self.agent_cmd} {args}".strip(), timeout=timeout)

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        """Write a small file atomically (temp name, then rename)."""
        sftp = self.sftp()
        tmp = f"{remote}.tmp-upload"
        sftp.putfo(io.BytesIO(data), tmp)
        sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, remote)

    def makedirs(self, path: str) -> None:
        """``mkdir -p`` over SFTP."""
        sftp = self.sftp()
        parts = PurePosixPath(path).parts
        current = ""
        for part in parts:
            current = part if not current else f"{current.rstrip('/')}/{part}"
            try:
                sftp.stat(current)
            except FileNotFoundError:
                try:
                    sftp.mkdir(current)
                except OSError:
                    # another session (a device sharing this parent) made it meanwhile
                    if not stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                        raise

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self.connection.close()

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    device: DeviceConfig, known_hosts: Path, timeout: float = CONNECT_TIMEOUT
) -> DeviceSession:
    """Open a connection, refusing any host key not pinned in ``known_hosts``."""
    if not known_hosts.is_file():
        raise HostKeyError(
            f"error: {device.name}: no pinned host keys ({known_hosts} is missing); "
            "run edgeship enroll first"
        )
    connection = Connection(
        host=device.address,
        user=device.user,
        port=device.port,
        connect_timeout=int(timeout),
        config=Config(overrides={"load_ssh_configs": False}),
        connect_kwargs={
            "key_filename": [device.identity_file],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
        },
    )
    client = connection.client
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().clear()
    client.get_host_keys().load(str(known_hosts))
    where = f"{device.name} ({device.address} port {device.port})"
    try:
        connection.open()
    except paramiko.BadHostKeyException as exc:
        connection.close()
        raise HostKeyError(
            f"error: {where}: host key CHANGED: the device shows {fingerprint(exc.key)}, "
            f"{known_hosts} pins {fingerprint(exc.expected_key)}; refusing to connect (if the "
            "device was reinstalled, re-pin it: edgeship enroll --repin fleet=... "
            f"device={device.name})"
        ) from exc
    except paramiko.SSHException as exc:
        connection.close()
        if "not found in known_hosts" in str(exc):
            raise HostKeyError(
                f"error: {where}: host key not pinned in {known_hosts}; refusing to connect "
                "(enrol the device first: edgeship enroll)"
            ) from exc
        raise DeviceUnreachableError(f"{where}: {connect_failure(exc, timeout)}") from exc
    except (OSError, EOFError) as exc:
        connection.close()
        raise DeviceUnreachableError(f"{where}: {connect_failure(exc, timeout)}") from exc
    return DeviceSession(device, connection)
