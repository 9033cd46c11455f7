"""Events transport: TLS to a real Mosquitto broker (a CA and a server certificate generated
for the test), and broker credentials issued by `edgeship enroll` to real sshd devices."""

from __future__ import annotations

import json
import stat
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.events.collector import BrokerSettings, Collector, CollectorError
from orchestrator.events.store import EventQuery, EventStore
from tests.events_device import Device, events_artifact, samples
from tests.integration.test_events import FLEET, Running, infer, wait_for
from tests.mqtt import Broker, make_ca, needs_mosquitto
from tests.sshd import ShipLab

pytestmark = [pytest.mark.integration, needs_mosquitto]


def test_events_travel_over_tls_and_a_wrong_ca_is_refused(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", [(FLEET, "bed-12")], tls=True)
    broker.start()
    collector = None
    try:
        assert broker.ca_file is not None
        collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}", ca_file=broker.ca_file)
        device = Device(tmp_path / "bed-12", "bed-12", FLEET)
        ids = infer(device, tmp_path, [0, 2])
        flags = ["--broker", broker.address, "--username", "bed-12", "--password-file",
                 str(broker.password_file("bed-12")), "--timeout", "10"]  # fmt: skip
        other_ca, _, _ = make_ca(tmp_path / "other-ca", "not the broker's CA")
        code, answer = device.run("send", *flags, "--ca-file", str(other_ca))
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in answer["message"], answer
        code, answer = device.run("send", *flags)  # no CA: plain MQTT to a TLS listener
        assert code == 1, answer
        assert device.ok("events")["outbox"]["pending"] == 2
        code, answer = device.run("send", *flags, "--ca-file", str(broker.ca_file))
        assert code == 0 and answer["sent"] == 2, answer
        wait_for(lambda: collector.store.count() == 2, what="2 events stored over TLS")
        assert sorted(r["id"] for r in collector.store.query(EventQuery())) == sorted(ids)
        # the collector verifies the broker too
        wrong = Collector(EventStore(f"sqlite:///{tmp_path / 'other.db'}"), [])
        settings = BrokerSettings(
            "127.0.0.1", broker.port, "collector", broker.users["collector"],
            ca_file=str(other_ca), client_id="c-wrong-ca",
        )  # fmt: skip
        with pytest.raises(CollectorError, match="CERTIFICATE_VERIFY_FAILED"):
            wrong.serve(settings, threading.Event(), timeout=10)
        wrong.close()
    finally:
        if collector is not None:
            collector.close()
        broker.stop()


def _agent(root: Path, *args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [str(root / "bin" / "edgeship-agent"), *args], capture_output=True, text=True, timeout=120
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return proc.returncode, json.loads(lines[-1])


def test_events_enrolment_issues_each_device_its_own_broker_credential(
    tmp_path: Path, ssh_devices: list
) -> None:
    two = ssh_devices[:2]
    lab = ShipLab(tmp_path / "lab", two, events_artifact(tmp_path / "a" / "demo"))
    controller = tmp_path / "controller"
    broker = Broker(
        controller, [], tls=True, passwords=controller / "passwords", acl=controller / "acl"
    )
    assert broker.ca_file is not None
    data = yaml.safe_load(lab.fleet_path.read_text())
    data["events"] = {
        "broker": broker.address,
        "ca_file": str(broker.ca_file),
        "password_file": str(controller / "passwords"),
        "acl_file": str(controller / "acl"),
    }
    lab.fleet_path.write_text(yaml.safe_dump(data))
    result = lab.enroll()
    assert [o.result for o in result.outcomes] == ["enrolled", "enrolled"], result.outcomes
    fleet = lab.fleet.name
    users = [f"{fleet}.{d.name}" for d in two]
    acl = (controller / "acl").read_text()
    for d in two:
        root = lab.roots[d.name]
        secret = root / "events.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        settings = json.loads((root / "events.json").read_text())
        assert settings == {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": f"{fleet}.{d.name}",
            "password_file": str(secret),
            "ca_file": str(root / "events-ca.pem"),
        }
        assert f"user {fleet}.{d.name}\ntopic write edgeship/{fleet}/{d.name}/events\n" in acl
    hashes = dict(
        line.split(":", 1) for line in (controller / "passwords").read_text().splitlines()
    )
    assert set(users) <= set(hashes) and all(hashes[u].startswith("$7$101$") for u in users)
    # enrolling again issues a new password and keeps one entry per device
    first = (lab.roots[two[0].name] / "events.secret").read_text()
    lab.enroll([two[0].name])
    assert (lab.roots[two[0].name] / "events.secret").read_text() != first
    assert (controller / "acl").read_text().count(f"user {users[0]}\n") == 1
    assert (controller / "passwords").read_text().count(f"{users[0]}:") == 1

    broker.start()
    collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}", ca_file=broker.ca_file)
    try:
        bundle = lab.bundle()
        sent: dict[str, list[str]] = {}
        for i, d in enumerate(two):
            root = lab.roots[d.name]
            assert _agent(root, "activate", str(bundle.path))[0] == 0
            path = tmp_path / f"{d.name}.npz"
            np.savez(path, **samples([i, 2]))
            code, answer = _agent(root, "infer", "--inputs", str(path))
            assert code == 0, answer
            sent[d.name] = answer["ids"]
            code, answer = _agent(root, "send", "--timeout", "10")  # events.json only
            assert code == 0 and answer["sent"] == 2, answer
        wait_for(lambda: collector.store.count() == 4, what="both devices' events stored")
        for d in two:
            rows = collector.store.query(EventQuery(device=d.name))
            assert sorted(r["id"] for r in rows) == sorted(sent[d.name])
        # the second device with the first one's credential: its own topic is not the first's
        a, b = two
        path = tmp_path / "forged.npz"
        np.savez(path, **samples([2]))
        forged = _agent(lab.roots[b.name], "infer", "--inputs", str(path))[1]["ids"]
        code, answer = _agent(
            lab.roots[b.name], "send", "--username", users[0], "--password-file",
            str(lab.roots[a.name] / "events.secret"), "--timeout", "10",
        )  # fmt: skip
        assert code == 0, answer
        wait_for(lambda: "Denied PUBLISH from edgeship-" in broker.log.read_text(), what="denied")
        assert not {r["id"] for r in collector.store.query(EventQuery())} & set(forged)
        assert collector.store.count() == 4
    finally:
        collector.close()
        broker.stop()
