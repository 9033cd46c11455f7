"""Events over HTTPS: the way in for apps that cannot hold an MQTT connection (a phone app
that the system suspends, a network that allows only HTTPS).

``POST /v1/events`` with ``Authorization: Bearer <token>`` and a JSON body
``{"events": [event, ...]}`` (at most :data:`MAX_BODY` bytes, :data:`MAX_EVENTS` events).
The token names one device of one fleet, as a device's MQTT credential does: its events
go through the same :meth:`Collector.handle` as ``edgeship/<fleet>/<device>/events``, so
an event that claims another device is refused, a repeated id is stored once and the
rules see each event once. The answer lists every event's fate (``stored``,
``duplicate``, ``refused: why``); a client deletes an event from its outbox once the
answer names it stored or duplicate.

Tokens: ``edgeship events token --fleet F --device D`` prints a new token once and keeps
only its SHA-256 in the tokens file (``.edgeship/event-tokens.json``, mode 0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from orchestrator.errors import EdgeshipError
from orchestrator.events.collector import Collector

MAX_BODY = 1024 * 1024
MAX_EVENTS = 500
PATH = "/v1/events"


class TokenError(EdgeshipError):
    """The tokens file cannot be read or written."""


@dataclass(frozen=True)
class Identity:
    fleet: str
    device: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> dict[str, Identity]:
    """sha256 of a token -> the device it names (an absent file: no tokens)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["tokens"]
        return {str(e["sha256"]): Identity(str(e["fleet"]), str(e["device"])) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenError(
            f"error: {path}: expected {{'tokens': [{{'sha256', 'fleet', 'device'}}, ...]}}: {exc}"
        ) from exc


def issue_token(path: Path, fleet: str, device: str) -> str:
    """A new token for ``fleet``/``device`` (replacing the device's old one); returns it."""
    from orchestrator.events.collector import parse_topic

    if parse_topic(f"edgeship/{fleet}/{device}/events") is None or "" in (fleet, device):
        raise TokenError(f"error: fleet {fleet!r} and device {device!r} must be topic names")
    known = load_tokens(path)
    kept = [
        {"sha256": digest, "fleet": who.fleet, "device": who.device}
        for digest, who in known.items()
        if who != Identity(fleet, device)
    ]
    token = secrets.token_urlsafe(32)
    kept.append({"sha256": _digest(token), "fleet": fleet, "device": device})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"tokens": kept}, f, indent=2)
    os.replace(tmp, path)
    return token


class IngestServer:
    """The HTTP(S) endpoint, in its own threads, in front of a :class:`Collector`."""

    def __init__(
        self,
        collector: Collector,
        tokens: Path,
        host: str,
        port: int,
        certfile: str = "",
        keyfile: str = "",
    ) -> None:
        self.collector = collector
        self.tokens_path = tokens
        self.tokens = load_tokens(tokens)
        server = ThreadingHTTPServer((host, port), _handler(self))
        server.daemon_threads = True
        if certfile:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile or None)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, name="edgeship-events-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def identity(self, header: str) -> Identity | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = _digest(token.strip())
        if digest not in self.tokens:  # issued since start: read the file again
            with contextlib.suppress(TokenError):
                self.tokens = load_tokens(self.tokens_path)
        for known, who in self.tokens.items():
            if hmac.compare_digest(known, digest):
                return who
        return None

    def ingest(self, who: Identity, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            return 400, {"error": "expected a JSON object {'events': [...]}"}
        events = body["events"]
        if len(events) > MAX_EVENTS:
            return 413, {"error": f"at most {MAX_EVENTS} events per request, found {len(events)}"}
        topic = f"edgeship/{who.fleet}/{who.device}/events"
        fates = self.collector.handle_batch([(topic, json.dumps(e).encode()) for e in events])
        results = [
            {"id": e.get("id") if isinstance(e, dict) else None, "status": fate}
            for e, fate in zip(events, fates, strict=True)
        ]
        return 200, {"results": results}


def _handler(server: IngestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgeship-events"

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # http.server calls do_<METHOD>
            if self.path != PATH:
                self._answer(404, {"error": f"events go to POST {PATH}"})
                return
            who = server.identity(self.headers.get("Authorization", ""))
            if who is None:
                self._answer(401, {"error": "a device token is required (Bearer)"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, {"error": "Content-Length is required"})
                return
            if length > MAX_BODY:
                self._answer(413, {"error": f"at most {MAX_BODY} bytes, found {length}"})
                return
            try:
                body = json.loads(self.rfile.read(length))
            except (UnicodeDecodeError, ValueError) as exc:
                self._answer(400, {"error": f"not JSON: {exc}"})
                return
            code, answer = server.ingest(who, body)
            self._answer(code, answer)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the collector logs
            pass

    return Handler
