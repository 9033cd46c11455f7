"""Broker credentials issued at enrolment: a password per device and an ACL entry per device.

The controller keeps the broker's two files (the fleet's ``events.password_file`` and
``events.acl_file``, in Mosquitto's formats); enrolling a device replaces that device's
line in the password file and its block in the ACL file and leaves every other line as
it was (the collector's own entries included). The broker reads them again on SIGHUP
(``systemctl reload mosquitto``).

A device's user name is ``<fleet>.<device>``; its ACL lets it write its own events topic,
``edgeship/<fleet>/<device>/events``, and nothing else.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
from pathlib import Path

from orchestrator.core.mosquitto import (
    broker_user,
    events_topic,
    mosquitto_hash,
    set_acl,
    set_password,
)
from orchestrator.spec.fleet import FleetEventsConfig

__all__ = [
    "broker_user",
    "events_topic",
    "issue",
    "mosquitto_hash",
    "reload_broker",
    "set_acl",
    "set_password",
]

_lock = threading.Lock()  # devices are enrolled in parallel; the files are shared


def issue(events: FleetEventsConfig, fleet: str, device: str) -> tuple[str, str]:
    """A fresh random password for the device's broker user, written (hashed) into the
    password file with the device's ACL entry; returns (user, password)."""
    user = broker_user(fleet, device)
    password = secrets.token_urlsafe(32)
    with _lock:
        set_password(Path(events.password_file), user, password)
        set_acl(Path(events.acl_file), user, events_topic(fleet, device))
    return user, password


def reload_broker(events: FleetEventsConfig) -> str:
    """Make the broker read its password and ACL files again, as the fleet says: SIGHUP to the
    pid in ``pid_file`` (a broker on this machine) or the ``reload`` command. Returns what
    was done, for the enrolment's output; never raises (the credentials are issued either
    way, and the broker reads them at its next reload)."""
    if events.pid_file:
        try:
            pid = int(Path(events.pid_file).read_text().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as exc:
            return (
                f"broker not reloaded: {events.pid_file}: {getattr(exc, 'strerror', None) or exc}; "
                "reload it by hand (SIGHUP) so the new credentials count"
            )
        return f"broker (pid {pid}) reloaded its password and ACL files (SIGHUP)"
    if events.reload:
        try:
            done = subprocess.run(
                list(events.reload), capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"broker not reloaded: {' '.join(events.reload)}: {exc}"
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip() or "").splitlines()[-1:]
            return f"broker not reloaded: {' '.join(events.reload)} exited {done.returncode}" + (
                f": {tail[0]}" if tail else ""
            )
        return f"broker reloaded: {' '.join(events.reload)}"
    return (
        "the broker reads the new credentials at its next reload (SIGHUP, systemctl reload "
        "mosquitto); set events.pid_file or events.reload in the fleet file to have it done"
    )
