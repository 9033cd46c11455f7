"""Sending the outbox to the MQTT broker (QoS 1) on ``edgeship/<fleet>/<device>/events``.

This is the one part of the agent that needs a package beyond the standard
library: paho-mqtt, when the device has it. Without it ``send`` and ``run``
refuse with the install command, and the events stay in the outbox.

The broker is named by flags or by ``<root>/events.json``::

    {"host": "broker.example", "port": 8883, "username": "bed-12",
     "password_file": "/opt/edgeship/events.secret", "ca_file": "/opt/edgeship/ca.pem"}
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

from .errors import AgentError
from .outbox import Outbox

BROKER_FILE = "events.json"
TOPIC = "edgeship/{fleet}/{device}/events"
_TOPIC_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BROKER_KEYS = ("host", "port", "username", "password_file", "ca_file")


def topic(fleet: object, device: object) -> str:
    for what, value in (("fleet", fleet), ("device", device)):
        if not isinstance(value, str) or not _TOPIC_PART.match(value):
            raise AgentError(
                f"events need the device's {what} name in its topic; expected letters, digits, "
                f"'.', '_' or '-', found {value!r} (enrol the device with --fleet)"
            )
    return TOPIC.format(fleet=fleet, device=device)


def broker_settings(root: str, given: dict) -> dict:
    """The broker: ``<root>/events.json`` with the flags given on top; host and port required."""
    settings: dict = {}
    path = os.path.join(root, BROKER_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
        if not isinstance(loaded, dict):
            raise AgentError(f"{path}: expected a JSON object, found {type(loaded).__name__}")
        unknown = sorted(set(loaded) - set(BROKER_KEYS))
        if unknown:
            raise AgentError(
                f"{path}: unknown keys {unknown}; expected some of {list(BROKER_KEYS)}"
            )
        settings.update(loaded)
    settings.update({k: v for k, v in given.items() if v is not None})
    if not settings.get("host") or not settings.get("port"):
        raise AgentError(f"no MQTT broker: give --broker HOST:PORT or write {path}")
    return settings


def _mqtt():
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise AgentError(
            "sending events needs paho-mqtt on the device (python3 -m pip install paho-mqtt); "
            "the events stay in the outbox until then"
        ) from exc
    return mqtt


def send(outbox: Outbox, settings: dict, to: str, client_id: str, timeout: float = 30.0) -> dict:
    """Publish every waiting event (QoS 1), forgetting each once the broker acknowledged it.

    Raises AgentError when the broker cannot be reached or refuses the login; what
    was acknowledged before is already gone from the outbox, the rest stays.
    """
    mqtt = _mqtt()
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    else:
        client = mqtt.Client(client_id=client_id)
    if settings.get("username"):
        password = None
        if settings.get("password_file"):
            with open(settings["password_file"], encoding="utf-8") as f:
                password = f.read().strip()
        client.username_pw_set(settings["username"], password)
    if settings.get("ca_file"):
        client.tls_set(ca_certs=settings["ca_file"])
    connected = threading.Event()
    outcome: dict = {}

    def on_connect(client, userdata, flags, reason, properties=None):
        outcome["reason"] = str(reason)
        outcome["ok"] = not getattr(reason, "is_failure", bool(reason))
        connected.set()

    client.on_connect = on_connect
    host, port = str(settings["host"]), int(settings["port"])
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise AgentError(f"MQTT broker {host}:{port} unreachable: {exc}") from exc
    client.loop_start()
    sent = 0
    try:
        if not connected.wait(timeout) or not outcome.get("ok"):
            why = outcome.get("reason", "no answer")
            raise AgentError(f"MQTT broker {host}:{port} refused the connection: {why}")
        deadline = time.monotonic() + timeout
        while True:
            batch = outbox.pending(100)
            if not batch:
                break
            infos = [(seq, client.publish(to, body, qos=1)) for seq, body in batch]
            acked = []
            for seq, info in infos:
                left = deadline - time.monotonic()
                try:
                    info.wait_for_publish(max(left, 0.1))
                except (RuntimeError, ValueError):
                    break
                if not info.is_published():
                    break
                acked.append(seq)
            outbox.remove(acked)
            sent += len(acked)
            if len(acked) < len(infos):
                raise AgentError(
                    f"MQTT broker {host}:{port} stopped acknowledging; "
                    f"{sent} sent, the rest stays in the outbox"
                )
    finally:
        client.disconnect()
        client.loop_stop()
    return {"sent": sent, "outbox": outbox.stats()}
