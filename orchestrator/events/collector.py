"""``edgeship events serve``: subscribe to ``edgeship/+/+/events``, store, deduplicate, act.

The topic names the fleet and the device (the broker's ACL lets a device publish
only under its own topic); an event whose own ``device`` or ``fleet`` field
names another is refused. A stored event (never a duplicate) is fed to the
rules; a rule that fires queues its webhook.
"""

from __future__ import annotations

import json
import logging
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

    def __init__(self, store: EventStore, rules: list[Rule]) -> None:
        self.store = store
        self.episodes = Episodes(rules)
        self.dispatcher = Dispatcher()
        self.counters = Counters()
        self.lock = threading.Lock()

    def refuse(self, why: str) -> None:
        self.counters.refused += 1
        self.counters.refusals.append(why)
        log.warning("refused: %s", why)

    def handle(self, topic: str, payload: bytes) -> str:
        """Store one message; returns ``stored``, ``duplicate`` or ``refused: <why>``."""
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
        with self.lock:
            if not self.store.add(fleet, device, event):
                self.counters.duplicates += 1
                return "duplicate"
            self.counters.stored += 1
            stored = dict(event, fleet=fleet, device=device)
            for rule, run in self.episodes.feed(stored, f"{fleet}/{device}"):
                self.counters.fired += 1
                log.info("rule %s fired for %s/%s", rule.name, fleet, device)
                self.dispatcher.submit(
                    rule.config.webhook,
                    {
                        "rule": rule.name,
                        "description": rule.config.description,
                        "when": rule.condition.text,
                        "fleet": fleet,
                        "device": device,
                        "events": run,
                    },
                )
        return "stored"

    def refused(self, why: str) -> str:
        self.refuse(why)
        return f"refused: {why}"

    def serve(self, broker: BrokerSettings, stop: threading.Event, timeout: float = 30.0) -> None:
        """Receive until ``stop`` is set; reconnects by itself when the broker goes away."""
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise MissingDependencyError("paho-mqtt", "pip install paho-mqtt") from exc
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=broker.client_id, clean_session=False
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

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            try:
                self.handle(message.topic, message.payload)
            except Exception:  # one bad message must not stop the collector
                log.exception("event on %s not handled", message.topic)

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
        try:
            if not connected.wait(timeout) or failure:
                raise CollectorError(
                    f"MQTT broker {broker.host}:{broker.port} refused the collector: "
                    f"{failure[0] if failure else 'no answer'}"
                )
            stop.wait()
        finally:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self.dispatcher.close()
        self.store.close()


def read_password(path: str) -> str:
    return Path(path).read_text().strip() if path else ""
