"""Prediction events: how fast they travel, and whether any are lost on the way.

Real components on this machine: a Mosquitto broker on loopback (a password and an ACL per
device), the device agent's outbox and sender (SQLite, paho-mqtt, QoS 1), the collector
(SQLite, and PostgreSQL when its server and driver are installed) and a webhook receiver.

- outbox -> broker -> collector, 1 device and 20 devices at once (one process each), the
  broker restarted halfway through the 1-device run: events/s and events lost
  (target: >= 500 ev/s per device without loss across the restart);
- the collector alone storing events: SQLite and PostgreSQL (target: >= 2,000 ev/s into
  PostgreSQL);
- a backlog of 100,000 queued events drained after the broker comes back
  (target: >= 1,000 ev/s);
- inference -> webhook: from the event entering the outbox to the rule's webhook receiving it,
  median and p99 (target: p99 <= 1 s; the model's own inference time comes on top).

    python bench/events_throughput.py [--events 5000] [--devices 20] [--backlog 100000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.device.agent.errors import AgentError  # noqa: E402
from orchestrator.device.agent.outbox import Outbox  # noqa: E402
from orchestrator.device.agent.sender import send  # noqa: E402
from orchestrator.events.collector import BATCH, BrokerSettings, Collector  # noqa: E402
from orchestrator.events.rules import load_rules  # noqa: E402
from orchestrator.events.store import EventStore  # noqa: E402
from tests.mqtt import Broker  # noqa: E402

FLEET = "bench"


def event(device: str, i: int, prediction: str = "Walking") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "deployment": "posture",
        "version": 1,
        "prediction": prediction,
        "score": 0.93,
        "latency_ms": 1.2,
        "device": device,
        "fleet": FLEET,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "t0": time.time(),
        "n": i,
    }


def fill(folder: Path, device: str, n: int) -> tuple[Outbox, float]:
    """An outbox with ``n`` events; returns it and the events/s of adding them."""
    box = Outbox(str(folder), n + 10)
    t = time.perf_counter()
    for i in range(n):
        box.add(event(device, i))
    return box, n / (time.perf_counter() - t)


def settings(broker: Broker, device: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": broker.port, "username": device,
            "password_file": str(broker.password_file(device))}  # fmt: skip


def drain(box: Outbox, broker: Broker, device: str, deadline: float = 600.0) -> tuple[int, int]:
    """Send until the outbox is empty, retrying while the broker is away: (sent, failures)."""
    sent = failures = 0
    end = time.monotonic() + deadline
    topic = f"edgeship/{FLEET}/{device}/events"
    while box.stats()["pending"] and time.monotonic() < end:
        try:
            sent += send(box, settings(broker, device), topic, f"edgeship-{device}", 10)["sent"]
        except AgentError:
            failures += 1
            time.sleep(0.2)
    return sent, failures


class Collecting:
    def __init__(self, broker: Broker, url: str, project: Path | None = None) -> None:
        self.collector = Collector(EventStore(url), load_rules(project) if project else [])
        self.stop = threading.Event()
        cfg = BrokerSettings("127.0.0.1", broker.port, "collector", broker.users["collector"],
                             client_id=f"bench-{uuid.uuid4().hex[:6]}")  # fmt: skip
        self.thread = threading.Thread(target=self.collector.serve, args=(cfg, self.stop))
        self.thread.start()
        end = time.monotonic() + 30
        while not self.collector.counters.subscribed and time.monotonic() < end:
            time.sleep(0.05)

    def wait(self, count: int, timeout: float = 600.0) -> float:
        """Seconds until ``count`` events are stored (or the timeout)."""
        t = time.monotonic()
        while self.collector.counters.stored < count and time.monotonic() - t < timeout:
            time.sleep(0.02)
        return time.monotonic() - t

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.collector.close()


def _device_worker(args: tuple[str, int, int, str, str]) -> tuple[float, float, int]:
    device, n, port, password_file, folder = args
    box, _rate = fill(Path(folder), device, n)
    t = time.perf_counter()
    cfg = {"host": "127.0.0.1", "port": port, "username": device, "password_file": password_file}
    sent = send(box, cfg, f"edgeship/{FLEET}/{device}/events", f"edgeship-{device}", 60)["sent"]
    return n / (time.perf_counter() - t), _rate, sent


def bench_devices(tmp: Path, n_devices: int, per_device: int, restart: bool) -> dict[str, Any]:
    names = [f"dev-{i:02d}" for i in range(n_devices)]
    broker = Broker(tmp / f"broker-{n_devices}", [(FLEET, n) for n in names])
    broker.start()
    collecting = Collecting(broker, f"sqlite:///{tmp / f'collector-{n_devices}.db'}")
    out: dict[str, Any] = {}
    try:
        if n_devices == 1:
            box, add_rate = fill(tmp / "outbox-1", names[0], per_device)
            if restart:
                half = per_device // 2

                def restart_when_half_sent() -> None:
                    watch = Outbox(str(tmp / "outbox-1"))
                    while watch.stats()["pending"] > per_device - half:
                        time.sleep(0.001)
                    watch.close()
                    broker.stop()
                    time.sleep(1.0)
                    broker.start()

                mover = threading.Thread(target=restart_when_half_sent)
                mover.start()
            t = time.perf_counter()
            sent, failures = drain(box, broker, names[0])
            seconds = time.perf_counter() - t
            if restart:
                mover.join()
            restarts = broker.log.read_text().count(" starting") - 1
            out.update(add_rate=add_rate, send_rate=sent / seconds, reconnects=failures,
                       restarts=restarts)  # fmt: skip
        else:
            jobs = [
                (n, per_device, broker.port, str(broker.password_file(n)), str(tmp / f"outbox-{n}"))
                for n in names
            ]  # fmt: skip
            t = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(n_devices) as pool:
                results = pool.map(_device_worker, jobs)
            seconds = time.perf_counter() - t
            sent = sum(r[2] for r in results)
            out.update(
                add_rate=statistics.median(r[1] for r in results),
                send_rate=statistics.median(r[0] for r in results),
                aggregate=sent / seconds,
            )
        total = n_devices * per_device
        collecting.wait(total, timeout=120)
        out.update(sent=sent, stored=collecting.collector.counters.stored,
                   lost=total - collecting.collector.counters.stored)  # fmt: skip
    finally:
        collecting.close()
        broker.stop()
    return out


def bench_collector(url: str, n: int, batch: int = BATCH) -> float:
    """The collector's storing step as ``serve`` runs it: what arrived, ``batch`` at a time."""
    collector = Collector(EventStore(url), [])
    topic = f"edgeship/{FLEET}/dev-00/events"
    messages = [(topic, json.dumps(event("dev-00", i)).encode()) for i in range(n)]
    t = time.perf_counter()
    for i in range(0, n, batch):
        collector.handle_batch(messages[i : i + batch])
    rate = n / (time.perf_counter() - t)
    assert collector.counters.stored == n, collector.counters
    collector.close()
    return rate


def bench_backlog(tmp: Path, n: int) -> dict[str, Any]:
    broker = Broker(tmp / "broker-backlog", [(FLEET, "dev-00")])
    box, add_rate = fill(tmp / "outbox-backlog", "dev-00", n)  # queued while the broker is away
    broker.start()
    collecting = Collecting(broker, f"sqlite:///{tmp / 'collector-backlog.db'}")
    try:
        t = time.perf_counter()
        sent, _ = drain(box, broker, "dev-00")
        rate = sent / (time.perf_counter() - t)
        caught_up = collecting.wait(n, timeout=300)
        stored = collecting.collector.counters.stored
    finally:
        collecting.close()
        broker.stop()
    return {"add_rate": add_rate, "drain_rate": rate, "stored": stored,
            "collector_lag_s": caught_up, "lost": n - stored}  # fmt: skip


class _Hook(BaseHTTPRequestHandler):
    latencies: list[float] = []

    def do_POST(self) -> None:
        now = time.time()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        for e in body["events"]:
            type(self).latencies.append(now - float(e["t0"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def bench_webhook(tmp: Path, n: int) -> dict[str, float]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    project = tmp / "project"
    (project / "conf" / "actions").mkdir(parents=True)
    (project / "conf" / "actions" / "running.yaml").write_text(
        'name: running\nwhen: prediction == "Running"\nconsecutive: 1\n'
        f"webhook:\n  url: http://127.0.0.1:{server.server_address[1]}/hook\n"
    )
    broker = Broker(tmp / "broker-hook", [(FLEET, "dev-00")])
    broker.start()
    collecting = Collecting(broker, f"sqlite:///{tmp / 'collector-hook.db'}", project)
    box = Outbox(str(tmp / "outbox-hook"), 1000)
    try:
        for i in range(n):  # what the agent's run loop does: infer -> outbox, then send
            # Running (fires), then Walking (ends the episode: the next Running fires again)
            box.add(event("dev-00", i, "Running" if i % 2 == 0 else "Walking"))
            drain(box, broker, "dev-00")
        collecting.wait(n, timeout=60)
        collecting.collector.dispatcher.close()
    finally:
        collecting.close()
        broker.stop()
        server.shutdown()
    lat = sorted(_Hook.latencies)
    return {"fired": len(lat), "median_s": statistics.median(lat),
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}  # fmt: skip


def postgres_url() -> tuple[Any, str] | None:
    try:
        import psycopg  # noqa: F401

        from tests.postgres import BINDIR, Postgres
    except ImportError:
        return None
    if BINDIR is None:
        return None
    server = Postgres()
    server.start()
    return server, server.url


def ratio(value: float, target: float, higher: bool = True) -> str:
    r = value / target if higher else target / value
    return f"{r:5.2f}x target {'OK' if r >= 1 else 'BELOW'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5000, help="events per device")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--collector-events", type=int, default=10_000)
    ap.add_argument("--webhook-events", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeship-events-bench-") as folder:
        tmp = Path(folder)
        one = bench_devices(tmp, 1, args.events, restart=True)
        print(f"1 device, {args.events} events, broker restarted halfway:")
        print(f"  outbox add        {one['add_rate']:9.0f} ev/s")
        print(f"  outbox -> broker  {one['send_rate']:9.0f} ev/s  {ratio(one['send_rate'], 500)}")
        print(f"  broker restarts {one['restarts']}, sends refused {one['reconnects']}")
        print(f"  stored {one['stored']} of {args.events}, lost {one['lost']}")
        many = bench_devices(tmp, args.devices, args.events // 5, restart=False)
        print(f"{args.devices} devices at once, {args.events // 5} events each:")
        print(f"  outbox -> broker  {many['send_rate']:9.0f} ev/s per device (median)  "
              f"{ratio(many['send_rate'], 500)}; {many['aggregate']:.0f} ev/s in all")  # fmt: skip
        print(f"  stored {many['stored']} of {args.devices * (args.events // 5)}, "
              f"lost {many['lost']}")  # fmt: skip
        sqlite_rate = bench_collector(f"sqlite:///{tmp / 'c.db'}", args.collector_events)
        single = bench_collector(f"sqlite:///{tmp / 'c1.db'}", args.collector_events // 10, 1)
        print(f"collector, {args.collector_events} events, stored {BATCH} per transaction:")
        print(f"  SQLite            {sqlite_rate:9.0f} ev/s  (one per transaction: {single:.0f})")
        pg = postgres_url()
        if pg is None:
            print("  PostgreSQL        not measured (needs initdb/postgres and psycopg)")
        else:
            server, url = pg
            try:
                pg_rate = bench_collector(url, args.collector_events)
            finally:
                server.stop()
            print(f"  PostgreSQL        {pg_rate:9.0f} ev/s  {ratio(pg_rate, 2000)}")
        backlog = bench_backlog(tmp, args.backlog)
        print(f"backlog of {args.backlog} queued events after the broker comes back:")
        print(f"  queued at         {backlog['add_rate']:9.0f} ev/s")
        print(f"  drained at        {backlog['drain_rate']:9.0f} ev/s  "
              f"{ratio(backlog['drain_rate'], 1000)}")  # fmt: skip
        print(f"  stored {backlog['stored']}, lost {backlog['lost']}, the collector done "
              f"{backlog['collector_lag_s']:.1f} s after the drain")  # fmt: skip
        hook = bench_webhook(tmp, args.webhook_events)
        print(f"outbox -> webhook, {hook['fired']} rule firings:")
        print(f"  median {hook['median_s'] * 1000:7.1f} ms   p99 {hook['p99_s'] * 1000:7.1f} ms  "
              f"{ratio(hook['p99_s'], 1.0, higher=False)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
