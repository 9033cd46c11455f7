"""Live canary analysis: a real rollout to sshd devices that keep inferring and sending
prediction events (``edgeship-agent run --replay`` in the background, a real Mosquitto broker,
the collector); a canary whose live latency is worse than the devices still on the previous
version is rolled back by the analysis, and the journal says why."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from orchestrator.errors import RolloutHaltedError
from orchestrator.events.monitor import EventsAnalyst
from orchestrator.events.store import EventQuery
from orchestrator.ship.rollout.engine import start_rollout
from orchestrator.spec.strategy import check_rollout_data
from tests.conftest import stop_group
from tests.events_device import WEIGHTS, events_artifact, samples
from tests.integration.test_events import Running, wait_for
from tests.mqtt import Broker, needs_mosquitto
from tests.sshd import ShipLab

pytestmark = [pytest.mark.integration, needs_mosquitto]


def slow_classifier(path: Path, rows: int = 64, width: int = 256, steps: int = 24) -> None:
    """The same answers as the tiny classifier, plus work that costs time: ``steps`` matrix
    products of a [rows, width] activation whose sum is added times zero to the logits."""
    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((width, width)) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["base"]),
        helper.make_node("MatMul", ["x", "W1"], ["y"]),
        helper.make_node("Expand", ["y", "shape"], ["z0"]),
    ]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"z{i}", "W2"], [f"z{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"z{steps}"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["base", "nothing"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, [4, 3], WEIGHTS.reshape(-1).tolist()),
        helper.make_tensor("W1", TensorProto.FLOAT, [4, width], [0.01] * (4 * width)),
        helper.make_tensor("shape", TensorProto.INT64, [2], [rows, width]),
        helper.make_tensor("W2", TensorProto.FLOAT, [width, width], w2.reshape(-1).tolist()),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _agent(root: Path, *args: str) -> dict:
    proc = subprocess.run(
        [str(root / "bin" / "edgeship-agent"), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_events_canary_with_worse_live_latency_is_rolled_back_by_the_analysis(
    tmp_path: Path, ssh_devices: list
) -> None:
    lab = ShipLab(tmp_path / "lab", ssh_devices, events_artifact(tmp_path / "a1" / "demo"))
    controller = tmp_path / "controller"
    broker = Broker(controller, [], passwords=controller / "passwords", acl=controller / "acl")
    data = yaml.safe_load(lab.fleet_path.read_text())
    data["events"] = {
        "broker": broker.address,
        "password_file": str(controller / "passwords"),
        "acl_file": str(controller / "acl"),
    }
    lab.fleet_path.write_text(yaml.safe_dump(data))
    assert all(o.result == "enrolled" for o in lab.enroll().outcomes)
    fast = lab.bundle()
    assert all(o.ok for o in lab.deploy(fast).outcomes)
    slow_artifact = events_artifact(tmp_path / "a2" / "demo")
    slow_classifier(slow_artifact / "model" / "model.onnx")
    slow = lab.bundle(slow_artifact)
    assert slow.version == fast.version + 1

    broker.start()
    db = f"sqlite:///{tmp_path / 'events.db'}"
    collector = Running(broker, db)
    replay = tmp_path / "replay.npz"
    np.savez(replay, **samples([0, 1, 2] * 2000))
    names = [d.name for d in ssh_devices]
    loops = {}
    for name in names:
        agent = str(lab.roots[name] / "bin" / "edgeship-agent")
        loops[name] = subprocess.Popen(
            [agent, "run", "--replay", str(replay), "--interval", "0.05", "--drain", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: all(collector.store.query(EventQuery(device=n, limit=5)) for n in names),
            what="events from every device",
        )
        strategy = check_rollout_data(
            {
                "name": "canary",
                "strategy": "canary",
                "canary": {"count": 1, "soak_seconds": 8},
                "analysis": {"min_events": 5, "max_p95_ratio": 1.5},
                "on_failure": "rollback",
            },
            "canary.yaml",
        )
        with pytest.raises(RolloutHaltedError) as info:
            start_rollout(
                tmp_path / "project", lab.fleet, str(lab.fleet_path), slow, strategy,
                "canary.yaml", store=lab.store, record=False,
                analyst=EventsAnalyst(db, lab.bundles),
            )  # fmt: skip
        state = info.value.report.state
        (analysis,) = state.analysis.values()
        assert analysis["result"] == "fail", analysis
        (canary,) = analysis["devices"]
        assert sorted(analysis["baseline_devices"]) == sorted(set(names) - {canary})
        assert analysis["wave_figures"]["events"] >= 5
        assert analysis["wave_figures"]["p95_ms"] > 1.5 * analysis["baseline_figures"]["p95_ms"]
        assert "p95 latency" in analysis["reasons"][0]
        assert state.halted is not None
        assert state.halted["reason"].startswith("live analysis failed: p95 latency")
        assert state.rolled_back[canary]["ok"] and state.rolled_back[canary]["to_version"] == 1
        assert lab.status(canary)["current"] == fast.version
        # the canary's own events name the slow version while it ran it
        rows = collector.store.query(EventQuery(device=canary, version=slow.version, limit=1000))
        assert len(rows) >= 5
    finally:
        for proc in loops.values():
            stop_group(proc)
        collector.close()
        broker.stop()
