"""``edgeship events serve``: subscribe to ``edgeship/+/+/events``, store, deduplicate, act.

The topic names the fleet and the device (the broker's ACL lets a device publish
only under its own topic); an event whose own ``device`` or ``fleet`` field
names another is refused. A stored event (never a duplicate) is fed to the
rules; a rule that fires queues its action (webhook or command).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import EdgeshipError, MissingDependencyError
from orchestrator.events.actions import Dispatcher
from orchestrator.events.rules import Episodes, Rule
from orchestrator.events.store import EventStore

log = logging.getLogger(__name__)
SUBSCRIPTION = "edgeship/+/+/events"
BATCH = 500  # events stored in one transaction at most


class CollectorError(EdgeshipError):
    """The collector cannot reach or log in to the broker."""


@dataclass
class BrokerSettings:
    host: str
    port: int
    username: str = ""
    password: str = ""
    ca_file: str = ""
    client_id: str = "edgeship-collector"


@dataclass
class Counters:
    stored: int = 0
    duplicates: int = 0
    refused: int = 0
    fired: int = 0
    subscribed: int = 0  # subscriptions the broker acknowledged (one per (re)connection)
    refusals: list[str] = field(default_factory=list)


def parse_topic(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "edgeship" and parts[3] == "events":
        return parts[1], parts[2]
    return None


class Collector:
    """Handles messages; :meth:`serve` connects it to a broker."""

    def __init__(self, store: EventStore, rules: list[Rule], cwd: Path | None = None) -> None:
        self.store = store
        self.episodes = Episodes(rules)
        self.dispatcher = Dispatcher(cwd)
        self.counters = Counters()
        self.lock = threading.Lock()

    def refuse(self, why: str) -> None:
        self.counters.refused += 1
        self.counters.refusals.append(why)
        log.warning("refused: %s", why)

    def parse(self, topic: str, payload: bytes) -> tuple[str, str, Mapping[str, Any]] | str:
        """(fleet, device, event) of a message, or why it is refused (``refused: ...``)."""
        where = parse_topic(topic)
        if where is None:
            return self.refused(f"{topic}: not an events topic")
        fleet, device = where
        try:
            event = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            return self.refused(f"{topic}: not JSON ({exc})")
        if not isinstance(event, Mapping) or not isinstance(event.get("id"), str):
            return self.refused(f"{topic}: expected an object with a string id")
        for key, value in (("device", device), ("fleet", fleet)):
            if key in event and event[key] != value:
                return self.refused(f"{topic}: event {event['id']} claims {key} {event[key]!r}")
        return fleet, device, event

    def refused(self, why: str) -> str:
        self.refuse(why)
        return f"refused: {why}"

    def handle(self, topic: str, payload: bytes) -> str:
        """Store one message; returns ``stored``, ``duplicate`` or ``refused: <why>``."""
        return self.handle_batch([(topic, payload)])[0]

    def handle_batch(self, messages: list[tuple[str, bytes]]) -> list[str]:
        """Store a batch of messages in one transaction, then feed the newly stored events
        to the rules in the order they arrived. Returns each message's fate, in order."""
        with self.lock:
            results = [self.parse(topic, payload) for topic, payload in messages]
            parsed = [r for r in results if not isinstance(r, str)]
            stored = self.store.add_many(parsed)
            self.counters.stored += len(stored)
            self.counters.duplicates += len(parsed) - len(stored)
            fates: list[str] = []
            for r in results:
                if isinstance(r, str):
                    fates.append(r)
                    continue
                fleet, device, event = r
                if event["id"] not in stored:
                    fates.append("duplicate")
                    continue
                stored.discard(event["id"])  # a second copy in the same batch is a duplicate
                fates.append("stored")
                self._rules(fleet, device, dict(event, fleet=fleet, device=device))
            return fates

    def _rules(self, fleet: str, device: str, stored: dict[str, Any]) -> None:
        for rule, run in self.episodes.feed(stored, f"{fleet}/{device}"):
            self.counters.fired += 1
            log.info("rule %s fired for %s/%s", rule.name, fleet, device)
            action = rule.config.command or rule.config.webhook
            assert action is not None  # a checked rule has exactly one
            self.dispatcher.submit(
                action,
                {
                    "rule": rule.name,
                    "description": rule.config.description,
                    "when": rule.condition.text,
                    "fleet": fleet,
                    "device": device,
                    "events": run,
                },
            )

    def serve(self, broker: BrokerSettings, stop: threading.Event, timeout: float = 30.0) -> None:
        """Receive until ``stop`` is set; reconnects by itself when the broker goes away."""
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise MissingDependencyError("paho-mqtt", "pip install paho-mqtt") from exc
        # a message is acknowledged to the broker only once it is stored: a collector that
        # stops in between gets it again from the broker (its session is kept)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            clean_session=False,
            manual_ack=True,
        )
        if broker.username:
            client.username_pw_set(broker.username, broker.password or None)
        if broker.ca_file:
            client.tls_set(ca_certs=broker.ca_file)
        connected = threading.Event()
        failure: list[str] = []

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            if reason.is_failure:
                failure.append(str(reason))
            else:
                client.subscribe(SUBSCRIPTION, qos=1)
            connected.set()

        inbox: queue.Queue[tuple[str, bytes, int, int]] = queue.Queue()
        writing = threading.Event()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            inbox.put((message.topic, message.payload, message.mid, message.qos))

        def writer() -> None:
            """Store what arrived in batches (one transaction each), then acknowledge it."""
            while writing.is_set() or not inbox.empty():
                try:
                    batch = [inbox.get(timeout=0.2)]
                except queue.Empty:
                    continue
                while len(batch) < BATCH:
                    try:
                        batch.append(inbox.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self.handle_batch([(topic, payload) for topic, payload, _, _ in batch])
                except Exception:  # not acknowledged: the broker delivers them again
                    log.exception("%d event(s) not stored", len(batch))
                    continue
                for _, _, mid, qos in batch:
                    client.ack(mid, qos)

        def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
            if reasons and not reasons[0].is_failure:
                self.counters.subscribed += 1
            else:
                log.error("the broker refused the subscription to %s: %s", SUBSCRIPTION, reasons)

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.reconnect_delay_set(1, 10)
        try:
            client.connect(broker.host, broker.port, keepalive=30)
        except OSError as exc:
            raise CollectorError(f"MQTT broker {broker.host}:{broker.port}: {exc}") from exc
        client.loop_start()
        writing.set()
        worker = threading.Thread(target=writer, name="events-writer", daemon=True)
        worker.start()
        try:
            if not connected.wait(timeout) or failure:
                raise CollectorError(
                    f"MQTT broker {broker.host}:{broker.port} refused the collector: "
                    f"{failure[0] if failure else 'no answer'}"
                )
            stop.wait()
        finally:
            writing.clear()
            worker.join(60)
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self.dispatcher.close()
        self.store.close()


def read_password(path: str) -> str:
    return Path(path).read_text().strip() if path else ""
