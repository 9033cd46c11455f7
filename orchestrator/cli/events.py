"""``edgeship events``: query stored prediction events; ``edgeship events serve``: the collector."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from typing import Any

from orchestrator.cli.common import project_dir
from orchestrator.core.text import terminal
from orchestrator.errors import ExitCode, Problem, UsageError

log = logging.getLogger(__name__)


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(
            [Problem("command line", "--broker", f"expected HOST:PORT, found {value!r}")]
        )
    return host, int(port)


def _db(args: argparse.Namespace) -> str:
    from orchestrator.project import events_db_url

    return str(args.db) if args.db else events_db_url(project_dir())


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.events.collector import BrokerSettings, Collector, read_password
    from orchestrator.events.rules import load_rules
    from orchestrator.events.store import EventStore

    host, port = _broker(args.broker)
    rules = load_rules(project_dir())
    collector = Collector(EventStore(_db(args)), rules)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker = BrokerSettings(
        host=host,
        port=port,
        username=args.username or "",
        password=read_password(args.password_file or ""),
        ca_file=args.ca_file or "",
        client_id=args.client_id,
    )
    log.info("collecting from %s:%d with %d rule(s)", host, port, len(rules))
    print(f"collecting edgeship/+/+/events from {host}:{port}; rules: {len(rules)}", flush=True)
    try:
        collector.serve(broker, stop)
    finally:
        collector.close()
    c = collector.counters
    print(
        f"stored {c.stored}, duplicates {c.duplicates}, refused {c.refused}, rules fired {c.fired}"
    )
    return ExitCode.OK


def cmd_events(args: argparse.Namespace) -> int:
    from orchestrator.events.store import EventQuery, EventStore

    store = EventStore(_db(args))
    try:
        rows = store.query(
            EventQuery(
                device=args.device or "",
                fleet=args.fleet or "",
                deployment=args.deployment or "",
                version=args.version,
                since=args.since or "",
                until=args.until or "",
                limit=args.limit,
            )
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return ExitCode.OK
    print(f"{'time':<21} {'fleet/device':<28} {'deployment':<18} {'v':>3} {'prediction':<24} score")
    for r in rows:
        score = r.get("score")
        print(
            f"{terminal(str(r.get('time'))):<21} "
            f"{terminal(str(r['fleet']) + '/' + str(r['device'])):<28} "
            f"{terminal(str(r.get('deployment'))):<18} {r.get('version')!s:>3} "
            f"{terminal(json.dumps(r.get('prediction')))[:24]:<24} "
            f"{'' if score is None else f'{score:.3f}'}"
        )
    return ExitCode.OK


def register(sub: Any) -> None:
    """Add ``events`` (query) and ``events serve`` (the collector)."""
    p = sub.add_parser("events", help="prediction events from devices: query them, or collect them")
    p.add_argument(
        "--db",
        default=None,
        help="SQLAlchemy URL (default: $EDGESHIP_EVENTS_DB, "
        "else sqlite:///<project>/.edgeship/events.db)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--fleet", default=None)
    p.add_argument("--deployment", default=None)
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--since", default=None, help="UTC, ISO 8601 (inclusive)")
    p.add_argument("--until", default=None, help="UTC, ISO 8601 (exclusive)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print the events as JSON")
    p.set_defaults(func=cmd_events)
    verbs = p.add_subparsers(dest="events_verb")
    s = verbs.add_parser("serve", help="the collector: MQTT -> database, rules -> webhooks")
    s.add_argument("--broker", required=True, metavar="HOST:PORT")
    s.add_argument("--username", default=None)
    s.add_argument("--password-file", default=None)
    s.add_argument("--ca-file", default=None, help="CA of the broker's TLS certificate")
    s.add_argument("--client-id", default="edgeship-collector")
    s.add_argument("--db", default=None, help="SQLAlchemy URL (as for `edgeship events`)")
    s.set_defaults(func=cmd_serve)
