"""`edgeship sim traffic`: simulated devices replay the BasicMotions recordings (the posture
model's evaluation data) through their active bundle as a live stream of prediction events,
sent to a real Mosquitto broker with the credentials enrolment issued, into the collector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from orchestrator.cli.main import main
from orchestrator.core.schema import EVENT_FIELDS
from orchestrator.events.store import EventQuery
from orchestrator.ship.deploy import DeployOptions, deploy
from orchestrator.ship.enroll import enroll
from orchestrator.sim.simulator import Simulator, pid_alive
from orchestrator.spec.fleet import load_fleet_file
from registry.bundle import make_bundle
from registry.keys import KeyStore
from tests.integration.test_events import Running, wait_for
from tests.mqtt import Broker, needs_mosquitto
from tests.sshd import require_sshd
from tests.unit.test_bundle import make_artifact

pytestmark = [pytest.mark.integration, needs_mosquitto]

ROOT = Path(__file__).resolve().parents[2]
POSTURE = ["Standing", "Running", "Walking", "Badminton"]


def imu_artifact(folder: Path) -> Path:
    """A small classifier with the posture model's interface: imu [1, 6, 100] -> logits [1, 4]
    (the channels' mean energy, weighted), events enabled."""
    artifact = make_artifact(folder)
    w = np.array([[-1, 1, 0, 0], [0, 0, 1, -1], [1, 0, -1, 0], [0, 1, 0, -1],
                  [1, -1, 1, 0], [0, 0, -1, 1]], np.float32)  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["imu", "imu"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["energy"], axes=[2], keepdims=0),
            helper.make_node("MatMul", ["energy", "W"], ["logits"]),
        ],
        "imu",
        [helper.make_tensor_value_info("imu", TensorProto.FLOAT, [1, 6, 100])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("W", TensorProto.FLOAT, [6, 4], w.reshape(-1).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(artifact / "model" / "model.onnx"))
    runtime = json.loads((artifact / "runtime.json").read_text())
    runtime.update(
        task="classification",
        labels=POSTURE,
        inputs=[{"name": "imu", "shape": [1, 6, 100], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [1, 4], "dtype": "float32"}],
        events={"fields": list(EVENT_FIELDS), "include_inputs": False, "outbox_max": 1000,
                "multi_label": False, "threshold": 0.5},
    )  # fmt: skip
    (artifact / "runtime.json").write_text(json.dumps(runtime))
    x = np.ones((1, 6, 100), np.float32)
    np.savez(artifact / "smoke" / "input.npz", imu=x)
    np.savez(artifact / "smoke" / "expected.npz", logits=(x * x).mean(axis=2) @ w)
    (artifact / "smoke" / "smoke.json").write_text(json.dumps({"atol": 1e-4}))
    return artifact


def test_sim_traffic_streams_basicmotions_through_the_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_sshd()
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    state = tmp_path / "sim"
    fleet_file = tmp_path / "fleet" / "tr.yaml"
    common = ["--name", "tr", "--state", str(state)]
    sim = Simulator(ROOT, "tr", state)
    controller = tmp_path / "controller"
    broker = Broker(controller, [], passwords=controller / "passwords", acl=controller / "acl")
    collector = None
    try:
        sim.up(2, fleet_file, first_octet=130, minimal_runtime=0)
        data = yaml.safe_load(fleet_file.read_text())
        data["events"] = {
            "broker": broker.address,
            "password_file": str(controller / "passwords"),
            "acl_file": str(controller / "acl"),
        }
        fleet_file.write_text(yaml.safe_dump(data))
        fleet = load_fleet_file(fleet_file, tmp_path)
        store = KeyStore(tmp_path / "keys", passphrase=b"")
        store.init()
        enroll(fleet, fleet.devices, store)
        bundle = make_bundle(imu_artifact(tmp_path / "a" / "posture"), store, tmp_path / "b")
        deploy(fleet, fleet.devices, bundle, store, DeployOptions())
        broker.start()
        collector = Running(broker, f"sqlite:///{tmp_path / 'events.db'}")

        assert main(["sim", "traffic", *common, "--interval", "0.05", "--repeat", "2"]) == 0
        names = fleet.names()
        wait_for(
            lambda: all(
                len(collector.store.query(EventQuery(device=n, limit=20))) >= 10 for n in names
            ),
            what="10 events from each device",
        )
        pids = (sim.read_state() or {})["traffic"]["pids"]
        assert set(pids) == set(names)
        rows = collector.store.query(EventQuery(limit=1000))
        assert {r["prediction"] for r in rows} <= set(POSTURE)
        assert {r["deployment"] for r in rows} == {"demo"}
        # each device starts at another recording (events' times have one-second resolution,
        # so their order within a second says nothing: the replayed streams are compared)
        streams = [np.load(state / "tr" / n / "traffic.npz") for n in names]
        key = streams[0].files[0]
        assert len(streams[0][key]) == len(streams[1][key])
        assert not np.array_equal(streams[0][key][:10], streams[1][key][:10])
        assert np.array_equal(np.roll(streams[0][key][:40], -7, axis=0), streams[1][key][:40])
        assert main(["sim", "traffic", *common, "--stop"]) == 0
        wait_for(lambda: not any(pid_alive(p) for p in pids.values()), what="replays stopped")
    finally:
        if collector is not None:
            collector.close()
        broker.stop()
        if sim.read_state() is not None:
            sim.down(purge=True)


def test_sim_traffic_samples_are_the_basicmotions_test_recordings() -> None:
    from examples.posture_cnn.data import eval_set
    from orchestrator.cli.sim import traffic_inputs

    inputs, what = traffic_inputs(ROOT, "posture_cnn")
    x, _ = eval_set()
    assert list(inputs) == ["imu"] and np.array_equal(inputs["imu"], x)
    assert inputs["imu"].shape == (40, 6, 100)
    assert "40 recording(s) of posture_cnn's evaluation data" in what
