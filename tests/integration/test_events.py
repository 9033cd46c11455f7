"""Prediction events end to end: real inference on a device (the agent zipapp, a signed and
activated bundle), a real Mosquitto broker with a password and an ACL per device, the
collector (SQLite), rules and a webhook received by a real HTTP server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from orchestrator.events.collector import BrokerSettings, Collector
from orchestrator.events.rules import load_rules
from orchestrator.events.store import EventQuery, EventStore
from tests.conftest import ROOT, stop_group
from tests.events_device import Device, samples
from tests.mqtt import Broker, needs_mosquitto
from tests.postgres import needs_postgres

pytestmark = [pytest.mark.integration, needs_mosquitto]

FLEET = "ward-a"


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", [(FLEET, "bed-12"), (FLEET, "bed-14")])
    b.start()
    yield b
    b.stop()


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path / "bed-12", "bed-12", FLEET)


class Running:
    """A collector serving in a thread until the test ends."""

    def __init__(
        self, broker: Broker, db: str, project: Path | None = None, ca_file: Path | None = None
    ) -> None:
        rules = load_rules(project) if project else []
        self.store = EventStore(db)
        self.collector = Collector(self.store, rules)
        self.stop = threading.Event()
        settings = BrokerSettings(
            "127.0.0.1",
            broker.port,
            "collector",
            broker.users["collector"],
            ca_file=str(ca_file or ""),
            client_id="c-test",
        )
        self.thread = threading.Thread(target=self.collector.serve, args=(settings, self.stop))
        self.thread.start()
        wait_for(lambda: self.collector.counters.subscribed >= 1, what="collector subscribed")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.collector.close()


def send(device: Device, broker: Broker, user: str | None = None) -> tuple[int, dict]:
    user = user or device.name
    return device.run(
        "send",
        "--broker",
        broker.address,
        "--username",
        user,
        "--password-file",
        str(broker.password_file(user)),
        "--timeout",
        "10",
    )


def infer(device: Device, tmp_path: Path, classes: list[int]) -> list[str]:
    path = tmp_path / f"in-{time.monotonic_ns()}.npz"
    np.savez(path, **samples(classes))
    return list(device.ok("infer", "--inputs", str(path))["ids"])


def test_events_device_cut_off_from_the_broker_loses_nothing_and_catches_up(
    broker: Broker, device: Device, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'events.db'}"
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "config.yaml").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGESHIP_ROOT": str(project)}
    log = (tmp_path / "collector.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "events", "serve", "--broker",
         broker.address, "--username", "collector", "--password-file",
         str(broker.password_file("collector")), "--db", db],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    store = EventStore(db)
    try:
        wait_for(lambda: _subscriptions(broker) == 1, what="collector subscribed")
        first = infer(device, tmp_path, [2, 1, 0])
        code, answer = send(device, broker)
        assert code == 0 and answer["sent"] == 3, answer
        wait_for(lambda: store.count() == 3, what="3 events stored")

        broker.stop()
        backlog = infer(device, tmp_path, [0, 0, 1, 2])
        code, answer = send(device, broker)
        assert code == 1 and "unreachable" in answer["message"]
        assert device.ok("events")["outbox"]["pending"] == 4

        broker.start()
        # the collector reconnects and subscribes again before the device's backlog goes out
        wait_for(lambda: _subscriptions(broker) == 2, what="collector subscribed again")
        code, answer = send(device, broker)
        assert code == 0 and answer["sent"] == 4, answer
        assert answer["outbox"]["pending"] == 0
        wait_for(lambda: store.count() == 7, what="backlog stored")
        rows = store.query(EventQuery(device="bed-12", limit=100))
        assert sorted(r["id"] for r in rows) == sorted(first + backlog)
        assert {r["deployment"] for r in rows} == {"demo"}
        assert {r["bundle_digest"] for r in rows} == {device.digest}
        preds = {r["id"]: r["prediction"] for r in rows}
        assert [preds[i] for i in backlog] == ["Standing", "Standing", "Walking", "Running"]

        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", "events", "--db", db,
             "--device", "bed-12", "--version", "1", "--json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert sorted(e["id"] for e in json.loads(out.stdout)) == sorted(first + backlog)
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", "events", "--db", db,
             "--device", "bed-14", "--json"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(out.stdout) == []
    finally:
        store.close()
        stop_group(serve)
        log.close()
    # at-least-once: a message in flight when the broker went away may come twice (counted)
    summary = (tmp_path / "collector.log").read_text()
    assert re.search(r"stored 7, duplicates \d+, refused 0", summary), summary


def _subscriptions(broker: Broker, client: str = "edgeship-collector") -> int:
    """How many times the broker's log shows the collector's subscription being granted."""
    return broker.log.read_text().count(f"{client} 1 edgeship/+/+/events")


def _publish(broker: Broker, user: str, topic: str, bodies: list[dict]) -> None:
    """Publish as ``user`` (QoS 1) and wait for the broker's acknowledgements."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{user}")
    client.username_pw_set(user, broker.users[user])
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for body in bodies:
            client.publish(topic, json.dumps(body), qos=1).wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def test_events_device_cannot_publish_as_another_device(
    broker: Broker, device: Device, tmp_path: Path
) -> None:
    collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}")
    try:
        # a device enrolled as bed-14 but holding bed-12's credentials: its topic is bed-14's
        impostor = Device(tmp_path / "impostor", "bed-14", FLEET)
        forged = infer(impostor, tmp_path, [2, 2])
        code, answer = send(impostor, broker, user="bed-12")
        assert code == 0 and answer["topic"] == f"edgeship/{FLEET}/bed-14/events"
        # and a raw client with bed-12's credentials writing straight into bed-14's topic
        _publish(broker, "bed-12", f"edgeship/{FLEET}/bed-14/events", [{"id": "forged-raw"}])
        # bed-12's own events, sent after the forged ones, mark the point they would have arrived
        honest = infer(device, tmp_path, [0])
        assert send(device, broker)[0] == 0
        wait_for(lambda: collector.store.count() >= 1, what="bed-12's event stored")
        rows = collector.store.query(EventQuery(limit=100))
        assert [(r["id"], r["device"]) for r in rows] == [(honest[0], "bed-12")]
        assert not set(forged) & {r["id"] for r in rows}
        log = broker.log.read_text()
        assert log.count("Denied PUBLISH from edgeship-ward-a-bed-14") == 2
        assert log.count("Denied PUBLISH from raw-bed-12") == 1
    finally:
        collector.close()


def test_events_duplicate_delivery_is_stored_once(broker: Broker, tmp_path: Path) -> None:
    collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}")
    try:
        event = {
            "id": "0b7c9f0e-1",
            "deployment": "demo",
            "version": 1,
            "prediction": "Running",
            "score": 0.97,
            "device": "bed-12",
            "fleet": FLEET,
            "time": "2026-01-01T00:00:00Z",
        }
        other = dict(event, id="0b7c9f0e-2")
        _publish(broker, "bed-12", f"edgeship/{FLEET}/bed-12/events", [event, event, other])
        wait_for(lambda: collector.collector.counters.duplicates == 1, what="the duplicate seen")
        wait_for(lambda: collector.store.count() == 2, what="two events stored")
        assert collector.collector.counters.stored == 2
        assert sorted(r["id"] for r in collector.store.query(EventQuery())) == [
            "0b7c9f0e-1",
            "0b7c9f0e-2",
        ]
    finally:
        collector.close()


class _Hook(BaseHTTPRequestHandler):
    calls: list[dict] = []
    failures_left = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures_left > 0:  # the receiver is down for a moment: a retry follows
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        type(self).calls.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_events_rule_fires_its_webhook_once_per_episode(
    broker: Broker, device: Device, tmp_path: Path
) -> None:
    _Hook.calls = []
    _Hook.failures_left = 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    project = tmp_path / "project"
    (project / "conf" / "actions").mkdir(parents=True)
    (project / "conf" / "actions" / "running.yaml").write_text(
        "name: running\n"
        "description: a patient who should rest is running\n"
        'when: prediction == "Running" and score >= 0.9\n'
        "consecutive: 2\n"
        "webhook:\n"
        f"  url: http://127.0.0.1:{server.server_address[1]}/alert\n"
        "  backoff: 0.2\n"
    )
    collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}", project)
    try:
        # Running x3 (fires once, at the 2nd), Walking (ends the episode), Running x2 (fires),
        # a weak Running (score < 0.9: ends it), Running (one in a row: no fire)
        ids = infer(device, tmp_path, [2, 2, 2, 1, 2, 2])
        path = tmp_path / "weak.npz"
        np.savez(path, **samples([2], strength=1.0))
        ids += device.ok("infer", "--inputs", str(path))["ids"]
        ids += infer(device, tmp_path, [2])
        assert send(device, broker)[0] == 0
        wait_for(lambda: collector.store.count() == 8, what="8 events stored")
        collector.collector.dispatcher.close()  # every queued delivery done
        assert collector.collector.counters.fired == 2
        assert [[e["id"] for e in c["events"]] for c in _Hook.calls] == [ids[0:2], ids[4:6]]
        assert {(c["rule"], c["device"], c["fleet"]) for c in _Hook.calls} == {
            ("running", "bed-12", FLEET)
        }
        assert [o["attempts"] for o in collector.collector.dispatcher.outcomes] == [2, 1]
    finally:
        collector.close()
        server.shutdown()


def test_events_run_replay_infers_and_sends_every_sample(
    broker: Broker, device: Device, tmp_path: Path
) -> None:
    collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}")
    try:
        path = tmp_path / "replay.npz"
        np.savez(path, **samples([0, 1, 2]))
        answer = device.ok(
            "run", "--replay", str(path), "--interval", "0", "--broker", broker.address,
            "--username", "bed-12", "--password-file", str(broker.password_file("bed-12")),
        )  # fmt: skip
        assert (answer["sent"], answer["outbox"]["pending"]) == (3, 0)
        wait_for(lambda: collector.store.count() == 3, what="3 replayed events stored")
        rows = collector.store.query(EventQuery(device="bed-12"))
        assert sorted(r["prediction"] for r in rows) == ["Running", "Standing", "Walking"]
    finally:
        collector.close()


@pytest.fixture
def postgres() -> Iterator[Any]:
    from tests.postgres import Postgres

    server = Postgres()
    server.start()
    yield server
    server.stop()


@needs_postgres
def test_events_collector_stores_into_a_real_postgresql_once_per_event(
    broker: Broker, device: Device, postgres: Any, tmp_path: Path
) -> None:
    collector = Running(broker, postgres.url)
    try:
        ids = infer(device, tmp_path, [0, 1, 2])
        code, answer = send(device, broker)
        assert code == 0 and answer["sent"] == 3, answer
        duplicate = {"id": ids[0], "device": "bed-12", "fleet": FLEET, "prediction": "Standing"}
        _publish(broker, "bed-12", f"edgeship/{FLEET}/bed-12/events", [duplicate])
        wait_for(lambda: collector.collector.counters.duplicates == 1, what="the duplicate seen")
        assert collector.store.count() == 3
    finally:
        collector.close()
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "events", "--db", postgres.url,
         "--device", "bed-12", "--json"],
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert sorted(r["prediction"] for r in rows) == ["Running", "Standing", "Walking"]
