"""An unreachable device is named with its address, port and the reason in words."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from orchestrator.errors import DeviceUnreachableError, ExitCode
from orchestrator.ship.ssh import connect, fetch_host_key
from orchestrator.spec.fleet import DeviceConfig


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _device(port: int) -> DeviceConfig:
    return DeviceConfig(
        name="bed-01", address="127.0.0.1", port=port, user="edge", identity_file="/nonexistent"
    )


def test_nothing_listening_is_connection_refused(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    port = _closed_port()
    with pytest.raises(DeviceUnreachableError) as info:
        connect(_device(port), known, timeout=3)
    assert str(info.value) == (
        f"bed-01 (127.0.0.1 port {port}): connection refused (no SSH server listens on that port)"
    )
    assert "Errno" not in str(info.value)
    assert info.value.exit_code == ExitCode.UNREACHABLE
    with pytest.raises(DeviceUnreachableError) as info:
        fetch_host_key(_device(port), timeout=3)
    assert "connection refused" in str(info.value)


def test_a_port_that_is_not_ssh_is_named_as_such(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = int(server.getsockname()[1])

    def answer() -> None:
        conn, _ = server.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(DeviceUnreachableError) as info:
            fetch_host_key(_device(port), timeout=3)
    finally:
        server.close()
    assert str(info.value) == (
        f"bed-01 (127.0.0.1 port {port}): something answered on that port, but not an SSH server"
    )
