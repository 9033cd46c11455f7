"""``edgeship enroll``: pin host keys, install the agent and the trust set on each device.

Enrolment is the explicit trust-on-first-use moment: the device's host key is
pinned into the fleet's known_hosts file (or taken from the fleet file), the
agent is copied to ``<install root>/bin/``, and the current trust set becomes the
device's first. Enrolling again is safe: it refreshes the agent, keeps the
device's record of installed versions, and brings its trust set up to date
through the signed chain of trust sets (no re-pinning, no reset) unless asked.
A fleet that names an events broker (its ``events`` key) also gets, per device, a new
broker credential (:mod:`orchestrator.ship.broker_auth`).
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from orchestrator.device.agent import AGENT_FILE, WRAPPER, agent_source, wrapper_script
from orchestrator.errors import DeviceRequirementError, RolloutError
from orchestrator.ship import broker_auth
from orchestrator.ship.agent_user import prepare_agent_user
from orchestrator.ship.results import DeviceDone, DeviceOutcome, RolloutResult, run_per_device
from orchestrator.ship.ssh import DeviceSession, connect, pin_host_key
from orchestrator.spec.fleet import DeviceConfig, FleetConfig
from registry.keys import KeyStore

log = logging.getLogger(__name__)


def agent_status(session: DeviceSession, inventory: bool = False) -> dict | None:
    """The agent's status JSON (with ``inventory``: sha256 -> path), None when no agent answers."""
    res = session.agent("status --inventory" if inventory else "status")
    if res.code != 0:
        return None
    try:
        status = res.json()
    except ValueError:
        return None
    session.upload_as((status.get("user") or {}).get("name"))  # files travel as the agent user
    return status


def sync_trust(
    session: DeviceSession, store: KeyStore, outcome: DeviceOutcome, status: dict
) -> None:
    """Send the device every root version newer than the one it holds, in order.

    Each carries the root threshold of the one before it, so the device accepts the
    chain without re-enrolment; a refusal stops the chain and fails the device.
    """
    device_serial = int((status.get("trust") or {}).get("serial") or 0)
    local = store.trust()
    outcome.trust_serial = device_serial
    if device_serial > local.serial:
        outcome.notes.append(
            f"device root version {device_serial} is newer than this key store's {local.serial}"
        )
        return
    for serial, data in store.trust_chain(device_serial):
        remote = f"{session.root}/staging/{serial}.root.json"
        session.put_bytes(data, remote)
        res = session.agent(f"update-trust {shlex.quote(remote)}")
        answer = res.json_or_none()
        if res.code != 0:
            outcome.result = "refused"
            outcome.refusal = (answer or {}).get("refusal")
            outcome.message = f"root version {serial}: " + str(
                (answer or {}).get("message") or res.stderr
            )
            outcome.agent = answer
            raise DeviceDone()
        outcome.trust_serial = serial
        outcome.notes.append(f"root of trust updated to version {serial}")


def install_agent(session: DeviceSession) -> list[str]:
    """Copy the agent and its wrapper to ``<root>/bin`` (atomically, mode 0755) and set up
    the agent user (:mod:`orchestrator.ship.agent_user`); returns notes for the outcome."""
    root = session.root
    dev = session.device
    for folder in ("bin", "staging", "log", "versions"):
        session.makedirs(f"{root}/{folder}")
    user = prepare_agent_user(session)
    session.put_bytes(agent_source(), f"{root}/bin/{AGENT_FILE}", 0o755)
    wrapper = wrapper_script(dev.python, root, user.name)
    session.put_bytes(wrapper.encode(), f"{root}/bin/{WRAPPER}", 0o755)
    return user.notes


def issue_broker_credential(
    session: DeviceSession, fleet: FleetConfig, device: DeviceConfig
) -> str:
    """A new broker credential for the device: its password in ``<root>/events.secret``
    (0600, the agent user's), the broker and CA in ``<root>/events.json`` and
    ``<root>/events-ca.pem``; the controller's password and ACL files get its entries."""
    events = fleet.events
    assert events is not None
    agent_status(session)  # files travel as the agent user, who alone may read the secret
    user, password = broker_auth.issue(events, fleet.name, device.name)
    host, _, port = events.broker.rpartition(":")
    root = session.root
    settings: dict[str, object] = {
        "host": host,
        "port": int(port),
        "username": user,
        "password_file": f"{root}/events.secret",
    }
    session.put_bytes((password + "\n").encode(), f"{root}/events.secret", 0o600)
    if events.ca_file:
        session.put_bytes(Path(events.ca_file).read_bytes(), f"{root}/events-ca.pem", 0o644)
        settings["ca_file"] = f"{root}/events-ca.pem"
    session.put_bytes(
        (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(),
        f"{root}/events.json",
        0o644,
    )
    topic = broker_auth.events_topic(fleet.name, device.name)
    return f"broker credential issued: user {user}, topic {topic}"


AGENT_PYTHON = (3, 8)  # the oldest Python the device agent runs on (orchestrator/device/)


def check_device_tools(session: DeviceSession) -> None:
    """The device has openssl, sha256sum and a Python the agent runs on (3.8 or newer).

    Raises :class:`DeviceRequirementError` naming the device, what was found and what is needed.
    """
    dev = session.device
    py = shlex.quote(dev.python)
    # the version line works on any Python (2.x included), so an old one is named, not crashed on
    res = session.run(
        "command -v openssl >/dev/null || { echo 'openssl is missing'; exit 3; }; "
        "command -v sha256sum >/dev/null || { echo 'sha256sum is missing'; exit 3; }; "
        f"command -v {py} >/dev/null || {{ echo 'no such interpreter'; exit 5; }}; "
        f"{py} -c 'import sys; print(\"%d.%d.%d\" % tuple(sys.version_info[:3]))'"
    )
    need = ".".join(str(n) for n in AGENT_PYTHON)
    where = f"set python: in the fleet file ({dev.name} or defaults) to a Python {need}+"
    if res.code == 3:
        raise DeviceRequirementError(
            f"device {dev.name}: {res.stdout.strip()}; the agent needs openssl and sha256sum"
        )
    if res.code == 5:
        raise DeviceRequirementError(
            f"device {dev.name}: no Python at '{dev.python}'; the edgeship agent needs "
            f"Python {need} or newer; install one or {where}"
        )
    found = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    try:
        version = tuple(int(p) for p in found.split("."))
    except ValueError:
        version = ()
    if res.code != 0 or not version:
        detail = (res.stderr.strip() or res.stdout.strip() or f"exit {res.code}").splitlines()
        raise DeviceRequirementError(
            f"device {dev.name}: '{dev.python}' did not report its version ({detail[-1]}); "
            f"the edgeship agent needs Python {need} or newer"
        )
    if version < AGENT_PYTHON:
        raise DeviceRequirementError(
            f"device {dev.name}: '{dev.python}' is Python {found}; the edgeship agent needs "
            f"Python {need} or newer (standard library only); install one or {where}"
        )


def enroll(
    fleet: FleetConfig,
    devices: list[DeviceConfig],
    store: KeyStore,
    repin: bool = False,
    reset_trust: bool = False,
    parallel: int = 4,
) -> RolloutResult:
    """Enrol ``devices``; raises RolloutError (carrying every outcome) when any fails."""
    known_hosts = Path(fleet.known_hosts)
    trust = store.trust()
    root_json = store.trust_files()

    def work(device: DeviceConfig, outcome: DeviceOutcome) -> None:
        outcome.notes.append("host key " + pin_host_key(device, known_hosts, repin))
        with connect(device, known_hosts) as session:
            outcome.stage = "enroll"
            check_device_tools(session)
            outcome.notes.extend(install_agent(session))
            status = agent_status(session) or {}
            if status.get("trust") and not reset_trust:
                outcome.stage = "trust"
                sync_trust(session, store, outcome, status)
            remote = f"{session.root}/staging/root-enroll.json"
            session.put_bytes(root_json, remote)
            args = (
                f"init --name {shlex.quote(device.name)} --family {shlex.quote(device.family)} "
                f"--trust {shlex.quote(remote)} --fleet {shlex.quote(fleet.name)}"
            )
            if reset_trust or not status.get("trust"):
                args += " --reset-trust"
            res = session.agent(args)
            answer = res.json_or_none()
            outcome.agent = answer
            if res.code != 0:
                outcome.result = "refused" if res.code == 10 else "error"
                outcome.refusal = (answer or {}).get("refusal")
                outcome.message = str((answer or {}).get("message") or res.stderr.strip())
                return
            if fleet.events is not None:
                outcome.stage = "events"
                outcome.notes.append(issue_broker_credential(session, fleet, device))
            outcome.result = "enrolled"
            outcome.trust_serial = trust.serial
            outcome.version = (status or {}).get("current")

    result = RolloutResult("enroll", run_per_device(devices, work, parallel))
    if fleet.events is not None and any(o.stage == "events" for o in result.outcomes):
        result.notes.append(broker_auth.reload_broker(fleet.events))
    if result.failed:
        raise RolloutError("enroll", result)
    return result
