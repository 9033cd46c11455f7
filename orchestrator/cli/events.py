"""``edgeship events``: query stored prediction events; ``edgeship events serve``: the collector."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from orchestrator.cli.common import project_dir
from orchestrator.core.text import terminal
from orchestrator.errors import ExitCode, Problem, UsageError

log = logging.getLogger(__name__)


def _broker(value: str, flag: str = "--broker") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError([Problem("command line", flag, f"expected HOST:PORT, found {value!r}")])
    return host, int(port)


def _db(args: argparse.Namespace) -> str:
    from orchestrator.project import events_db_url

    return str(args.db) if args.db else events_db_url(project_dir())


def _tokens(args: argparse.Namespace) -> Path:
    return Path(args.tokens) if args.tokens else project_dir() / ".edgeship" / "event-tokens.json"


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.events.collector import BrokerSettings, Collector, read_password
    from orchestrator.events.rules import load_rules
    from orchestrator.events.store import EventStore

    if not args.broker and not args.http:
        raise UsageError(
            [Problem("command line", "--broker", "expected --broker HOST:PORT and/or --http")]
        )
    rules = load_rules(project_dir())
    collector = Collector(EventStore(_db(args)), rules, cwd=project_dir())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ingest = None
    reporter = None
    if args.report_every > 0:
        reporter = threading.Thread(
            target=_report_loop, args=(args, stop), name="mlflow-report", daemon=True
        )
        reporter.start()
    try:
        if args.http:
            from orchestrator.events.http_ingest import PATH, IngestServer

            host, port = _broker(args.http, "--http")
            ingest = IngestServer(
                collector, _tokens(args), host, port, args.tls_cert or "", args.tls_key or ""
            )
            ingest.start()
            scheme = "https" if args.tls_cert else "http"
            bound = ingest.address
            print(
                f"collecting POST {scheme}://{bound[0]}:{bound[1]}{PATH} "
                f"(device tokens: {_tokens(args)}); rules: {len(rules)}",
                flush=True,
            )
        if args.broker:
            host, port = _broker(args.broker)
            broker = BrokerSettings(
                host=host,
                port=port,
                username=args.username or "",
                password=read_password(args.password_file or ""),
                ca_file=args.ca_file or "",
                client_id=args.client_id,
            )
            log.info("collecting from %s:%d with %d rule(s)", host, port, len(rules))
            print(
                f"collecting edgeship/+/+/events from {host}:{port}; rules: {len(rules)}",
                flush=True,
            )
            collector.serve(broker, stop)
        else:
            stop.wait()
    finally:
        if ingest is not None:
            ingest.stop()
        collector.close()
        if reporter is not None:
            reporter.join(30)
    c = collector.counters
    print(
        f"stored {c.stored}, duplicates {c.duplicates}, refused {c.refused}, rules fired {c.fired}"
    )
    return ExitCode.OK


def cmd_token(args: argparse.Namespace) -> int:
    from orchestrator.events.http_ingest import issue_token

    path = _tokens(args)
    token = issue_token(path, args.fleet, args.device)
    print(token)
    print(
        f"a new events token for {args.fleet}/{args.device} (its SHA-256 is in {path}; any "
        "earlier token of this device no longer works); give it to the app once",
        file=sys.stderr,
    )
    return ExitCode.OK


def _report_loop(args: argparse.Namespace, stop: threading.Event) -> None:
    step = 0
    while not stop.wait(args.report_every):
        step += 1
        try:
            for line in report_once(args, step):
                log.info("%s", line)
        except Exception:  # a report that fails must not stop the collector
            log.exception("live figures not reported to MLflow")


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


def _live(args: argparse.Namespace) -> list[Any]:
    from orchestrator.events.monitor import References, live_stats, since_minutes
    from orchestrator.events.store import EventStore
    from orchestrator.project import bundles_root

    store = EventStore(_db(args))
    try:
        stats = live_stats(
            store,
            since=since_minutes(args.window),
            deployment=args.deployment or "",
            fleet=args.fleet or "",
            version=args.version,
        )
    finally:
        store.close()
    return References(bundles_root(project_dir())).fill(stats)


def cmd_summary(args: argparse.Namespace) -> int:
    from orchestrator.events.monitor import fmt

    stats = _live(args)
    if args.json:
        print(json.dumps([s.to_json() for s in stats], indent=2, sort_keys=True))
        return ExitCode.OK
    if not stats:
        print(f"no events in the last {args.window:g} minute(s)")
        return ExitCode.OK
    head = ("deployment", "version", "device", "events", "errors", "p50 ms", "p95 ms", "ev/min",
            "PSI", "predictions")  # fmt: skip
    table = [head]
    for s in stats:
        # by label, so that rows of one deployment line up (and read as the same columns)
        top = ", ".join(f"{k} {v}" for k, v in sorted(s.distribution.items()))
        table.append((
            s.deployment, "-" if s.version is None else f"v{s.version}",
            "all devices" if s.device == "*" else f"{s.fleet}/{s.device}",
            str(s.events), f"{s.error_share:.1%}", fmt(s.p50_ms, ".2f"), fmt(s.p95_ms, ".2f"),
            fmt(s.per_minute), fmt(s.psi, ".3f"), top[:60] or "-",
        ))  # fmt: skip
    cells = [[terminal(c) for c in row] for row in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"window: the last {args.window:g} minute(s), by the devices' clocks")
    return ExitCode.OK


def report_once(args: argparse.Namespace, step: int) -> list[str]:
    from orchestrator.events.monitor import report_mlflow
    from orchestrator.project import bundles_root
    from registry.tracking import open_tracker

    root = project_dir()
    return report_mlflow(_live(args), bundles_root(root), open_tracker(root), step)


def cmd_report(args: argparse.Namespace) -> int:
    import time

    for line in report_once(args, int(time.time())):
        print(terminal(line))
    return ExitCode.OK


def _window_flags(p: Any) -> None:
    p.add_argument("--db", default=None, help="SQLAlchemy URL (as for `edgeship events`)")
    p.add_argument("--window", type=float, default=60.0, help="minutes back from now (default 60)")
    p.add_argument("--deployment", default=None)
    p.add_argument("--fleet", default=None)
    p.add_argument("--version", type=int, default=None)


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
    s = verbs.add_parser("serve", help="the collector: MQTT -> database, rules -> actions")
    s.add_argument("--broker", default=None, metavar="HOST:PORT", help="the MQTT broker")
    s.add_argument("--username", default=None)
    s.add_argument("--password-file", default=None)
    s.add_argument("--ca-file", default=None, help="CA of the broker's TLS certificate")
    s.add_argument("--client-id", default="edgeship-collector")
    s.add_argument("--db", default=None, help="SQLAlchemy URL (as for `edgeship events`)")
    s.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help="also take events over HTTP(S): POST /v1/events with a device token (apps)",
    )
    s.add_argument(
        "--tokens",
        default=None,
        help="device tokens file (default .edgeship/event-tokens.json; edgeship events token)",
    )
    s.add_argument("--tls-cert", default=None, help="with --http: serve HTTPS with this cert")
    s.add_argument("--tls-key", default=None, help="with --tls-cert: its private key")
    s.add_argument(
        "--report-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="log each version's live figures to its MLflow build run this often (0: never)",
    )
    s.add_argument("--window", type=float, default=60.0, help="minutes the reports look back")
    s.set_defaults(func=cmd_serve, deployment=None, fleet=None, version=None)
    m = verbs.add_parser(
        "summary", help="live figures per version and device: latency, rate, drift (PSI)"
    )
    _window_flags(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_summary)
    r = verbs.add_parser("report", help="log the live figures to each version's MLflow build run")
    _window_flags(r)
    r.add_argument("--mlflow", action="store_true", required=True, help="where to report")
    r.set_defaults(func=cmd_report)
    t = verbs.add_parser("token", help="issue a device's token for events over HTTPS")
    t.add_argument("--fleet", required=True)
    t.add_argument("--device", required=True)
    t.add_argument("--tokens", default=None, help="tokens file (default .edgeship/...)")
    t.set_defaults(func=cmd_token)
