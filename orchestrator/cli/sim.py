"""CLI verb ``sim``: a simulated fleet of real ``sshd`` devices on loopback (one machine).

``edgeship sim up --devices 6`` starts six devices that keep running after the
command returns and writes their fleet file (``conf/fleet/sim.yaml``); ``sim status``
says which answer; ``sim down`` stops them. The logic lives in :mod:`orchestrator.sim.simulator`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.cli.common import key_store, project_dir
from orchestrator.errors import SimError
from orchestrator.project import sim_state_dir


def _simulator(args: argparse.Namespace) -> Any:
    from orchestrator.sim.simulator import Simulator

    state = Path(args.state) if args.state else None
    return Simulator(project_dir(), args.name, state)


def _swarm(args: argparse.Namespace) -> int:
    """``edgeship sim swarm``: lightweight pull agents polling the project's repository."""
    from collections import Counter

    from orchestrator.sim.swarm import SwarmSim
    from registry.bundle import bundles_root

    root = project_dir()
    state_dir = Path(args.state) if args.state else None
    name = args.name if args.name != "sim" else "swarm"
    sim = SwarmSim(root, name, bundles_root(root), state_dir)
    if args.stop:
        state = sim.down()
        if state is None:
            print(f"swarm {sim.name} is not up")
            return 0
        print(f"swarm {sim.name}: stopped {state['agents']} agents and nginx")
        return 0
    state = sim.state()
    if state is None:
        store = key_store()
        if not store.exists():
            raise SimError("error: this project has no signing keys yet; run: edgeship keys init")
        try:
            state = sim.up(args.agents, store.trust_files(), args.family, args.poll, 2)
        except RuntimeError as exc:
            raise SimError(f"error: {exc}") from exc
        shown = _under(Path(state["fleet_file"]), root)
        print(
            f"swarm {sim.name}: {state['agents']} pull agents (2 worker processes) polling "
            f"{state['pull']['base_url']} (nginx pid {state['nginx_pid']}) every "
            f"{args.poll:g} s; fleet file {shown}"
        )
        print(f"next: edgeship rollout deployment=NAME fleet={shown} rollout=canary")
        print("stop them with: edgeship sim swarm --stop")
        return 0
    running = Counter(str(v) for v in sim.running().values())
    print(f"swarm {sim.name}: {state['agents']} agents; versions running: {dict(running)}")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from orchestrator.sim.broker import REPORT_EVERY

    if args.action == "swarm":
        return _swarm(args)
    from orchestrator.sim.simulator import MINIMAL_RUNTIME_GROUP

    sim = _simulator(args)
    try:
        if args.action == "up":
            fleet_path, devices = sim.up(
                args.devices,
                Path(args.fleet_file).resolve() if args.fleet_file else None,
                first_octet=args.first_octet,
                minimal_runtime=args.minimal_runtime,
                feed=args.feed,
                events=args.events,
            )
            state = sim.read_state() or {}
            profiles = state.get("profiles") or {}
            root = project_dir()
            shown = _under(fleet_path, root)
            print(f"simulation {sim.name}: {len(devices)} device(s) up; fleet file {shown}")
            for d in devices:
                extra = f"  ({profiles[d.name]})" if d.name in profiles else ""
                print(f"  {d.name:<8} {d.address}:{d.port:<6} sshd pid {d.pid}{extra}")
            feed = state.get("feed")
            if feed:
                print(
                    f"  feed     {feed['url']} (web server pid {feed['http_pid']}); phone fleet "
                    f"file {feed['fleet_file']}"
                )
            events = state.get("events")
            if events:
                shown_dir = _under(Path(events["folder"]), root)
                print(
                    f"  broker   {events['broker']} (mosquitto pid {events['broker_pid']}, TLS; "
                    f"CA, password and ACL files in {shown_dir})"
                )
                print(
                    f"  collector pid {events['collector_pid']}: events into "
                    f"{_events_db_shown(root)}, rules of conf/actions, live figures to MLflow "
                    f"every {REPORT_EVERY}s; log {shown_dir}/collector.log"
                )
            fleet_arg = fleet_path.stem if fleet_path.parent == root / "conf" / "fleet" else shown
            if key_store().exists():
                print(f"next: edgeship enroll fleet={fleet_arg}")
            else:
                print(
                    "next: edgeship keys init (this project has no signing keys yet), "
                    f"then edgeship enroll fleet={fleet_arg}"
                )
            if profiles:
                print(
                    f"  devices in group {MINIMAL_RUNTIME_GROUP} run an ONNX Runtime build with "
                    "kernels up to opset 18 only"
                )
            print(f"stop them with: edgeship sim down{_name_flag(args)}")
            return 0
        if args.action == "traffic":
            if args.stop:
                stopped = sim.traffic_stop()
                print(f"simulation {sim.name}: traffic stopped on {len(stopped)} device(s)")
                return 0
            inputs, what = traffic_inputs(project_dir(), args.model)
            pids = sim.traffic_start(inputs, args.interval, args.repeat)
            print(
                f"simulation {sim.name}: {len(pids)} device(s) replay {what} every "
                f"{args.interval:g}s (edgeship-agent run --replay)"
            )
            for name, pid in pids.items():
                print(f"  {name:<8} pid {pid}")
            print(
                "watch: edgeship events summary; stop: edgeship sim traffic --stop"
                + _name_flag(args)
            )
            return 0
        if args.action == "down":
            had_events = bool((sim.read_state() or {}).get("events"))
            devices = sim.down(purge=args.purge)
            print(
                f"simulation {sim.name}: stopped {len(devices)} device(s)"
                + (", the broker and the collector" if had_events else "")
                + ("; state and fleet file removed" if args.purge else "")
            )
            return 0
        rows = sim.status()
        state = sim.read_state() or {}
        print(f"simulation {sim.name}: fleet file {state.get('fleet_file')}")
        for r in rows:
            where = f"{r.address}:{r.port}"
            if r.answers:
                what = f"up (sshd pid {r.pid})"
            elif r.running:
                what = "running, not answering"
            else:
                what = "down"
            extra = f"  {r.profile}" if r.profile else ""
            print(f"  {r.name:<8} {where:<22} {what}{extra}")
        if state.get("feed"):
            print(f"  feed web server {state['feed']['url']} (pid {state['feed']['http_pid']})")
        if state.get("events"):
            from orchestrator.sim.broker import SimBroker

            broker = SimBroker(Path(state["events"]["folder"]), project_dir())
            b, c = broker.broker_pid(), broker.collector_pid()
            print(
                f"  broker   {state['events']['broker']}: "
                + (f"up (mosquitto pid {b})" if b else "down")
                + "; collector: "
                + (f"up (pid {c})" if c else "down")
            )
        up = sum(1 for r in rows if r.answers)
        print(f"{up} of {len(rows)} device(s) up")
        return 0 if up == len(rows) else SimError.exit_code
    except SimError as exc:
        raise SimError(f"error: {exc}") from exc


def traffic_inputs(root: Path, model: str) -> tuple[dict[str, Any], str]:
    """The evaluation recordings of ``conf/model/<model>.yaml`` (its ``data.eval.fn``), named
    as the model's first input: for posture_cnn the BasicMotions TEST recordings."""
    from orchestrator.build.usercode import resolve_callable
    from orchestrator.spec.files import read_yaml

    rel = f"conf/model/{model}.yaml"
    spec = read_yaml(root / rel, rel)
    try:
        ref = spec["data"]["eval"]["fn"]
        name = spec["inputs"][0]["name"]
    except (KeyError, IndexError, TypeError) as exc:
        raise SimError(
            f"error: {rel}: data.eval.fn and inputs[0].name: expected the evaluation data loader "
            f"and the model's input, found none ({exc})"
        ) from exc
    fn = resolve_callable(str(ref), f"{rel}: data.eval.fn", root)
    args = spec["data"]["eval"].get("args") or {}
    loaded = fn(**args)
    x = loaded[0] if isinstance(loaded, tuple) else loaded
    return {str(name): x}, f"{len(x)} recording(s) of {model}'s evaluation data ({ref})"


def _under(path: Path, root: Path) -> Path:
    """``path`` relative to the project when it lies in it, else as it is."""
    return path.relative_to(root) if path.is_relative_to(root) else path


def _events_db_shown(root: Path) -> str:
    from orchestrator.project import events_db_url

    url = events_db_url(root)
    if url.startswith("sqlite:///"):
        return str(_under(Path(url[len("sqlite:///") :]), root))
    return url


def _name_flag(args: argparse.Namespace) -> str:
    return "" if args.name == "sim" else f" --name {args.name}"


def register(sub: Any) -> None:
    """Add ``sim`` to the ``edgeship`` parser."""
    p = sub.add_parser(
        "sim",
        help="simulated devices on this machine (real sshd on loopback): "
        "up | down | status | traffic | swarm (pull agents)",
    )
    p.add_argument("action", choices=("up", "down", "status", "traffic", "swarm"))
    p.add_argument("--agents", type=int, default=100, help="swarm: pull agents (default 100)")
    p.add_argument("--poll", type=float, default=5.0, help="swarm: agents poll every N s")
    p.add_argument("--family", default="server", help="swarm: the agents' target family")
    p.add_argument("--devices", type=int, default=6, help="up: how many devices (default 6)")
    p.add_argument("--name", default="sim", help="simulation (and fleet) name (default sim)")
    p.add_argument(
        "--fleet-file",
        metavar="PATH",
        help="up: write the fleet file here (default conf/fleet/NAME.yaml)",
    )
    p.add_argument(
        "--first-octet",
        type=int,
        default=2,
        help="up: the first device listens on 127.0.0.N (default 2)",
    )
    p.add_argument(
        "--minimal-runtime",
        type=int,
        default=None,
        metavar="N",
        help="up: devices with a minimal ONNX Runtime build (opset <= 18); default one in six",
    )
    p.add_argument(
        "--feed",
        action="store_true",
        help="up: also a feed host for phones (sshd + web server) and its fleet NAME_phones",
    )
    p.add_argument(
        "--events",
        action="store_true",
        help="up: also an MQTT broker (Mosquitto, TLS) and the events collector; the fleet "
        "file gets its events section",
    )
    p.add_argument(
        "--state",
        default=sim_state_dir(),
        help="folder of simulations (default .edgeship/sim in the project)",
    )
    p.add_argument("--purge", action="store_true", help="down: also remove state and fleet file")
    p.add_argument(
        "--model",
        default="posture_cnn",
        help="traffic: replay this model's evaluation data (conf/model/NAME.yaml; default "
        "posture_cnn, the BasicMotions recordings)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="traffic: seconds between samples")
    p.add_argument("--repeat", type=int, default=100, help="traffic: rounds through the recordings")
    p.add_argument("--stop", action="store_true", help="traffic: stop the replays; swarm: stop it")
    p.set_defaults(func=cmd_sim)
