"""A device for the events tests: the agent zipapp run locally with a real, signed, activated
bundle of a tiny ONNX classifier whose spec enables events."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from orchestrator.core.schema import EVENT_FIELDS
from orchestrator.device.agent import AGENT_FILE, agent_source
from registry.bundle import make_bundle
from registry.keys import KeyStore
from tests.unit.test_bundle import make_artifact

LABELS = ["Standing", "Walking", "Running"]
WEIGHTS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)


def classifier(path: Path) -> None:
    """``logits = x @ W``: x [1, 4] -> logits [1, 3] (x's first three values pick the class)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], WEIGHTS.reshape(-1).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def samples(classes: list[int], strength: float = 10.0) -> dict[str, np.ndarray]:
    """One input per class index: that class's logit ``strength``, the others 0."""
    x = np.zeros((len(classes), 4), np.float32)
    for i, c in enumerate(classes):
        x[i, c] = strength
    return {"x": x}


def events_artifact(folder: Path, events: dict | None = None) -> Path:
    artifact = make_artifact(folder)
    classifier(artifact / "model" / "model.onnx")
    runtime = json.loads((artifact / "runtime.json").read_text())
    runtime.update(
        task="classification",
        labels=LABELS,
        inputs=[{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [1, 3], "dtype": "float32"}],
        events=events
        or {
            "fields": list(EVENT_FIELDS),
            "include_inputs": False,
            "outbox_max": 1000,
            "multi_label": False,
            "threshold": 0.5,
        },
    )
    (artifact / "runtime.json").write_text(json.dumps(runtime))
    x = samples([1])["x"]
    np.savez(artifact / "smoke" / "input.npz", x=x)
    np.savez(artifact / "smoke" / "expected.npz", logits=x @ WEIGHTS)
    (artifact / "smoke" / "smoke.json").write_text(json.dumps({"atol": 1e-4}))
    return artifact


class Device:
    """One enrolled device (install root ``root``) running the agent zipapp locally."""

    def __init__(self, base: Path, name: str, fleet: str, events: dict | None = None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.name, self.fleet = name, fleet
        self.root = base / "device"
        self.program = base / AGENT_FILE
        self.program.write_bytes(agent_source())
        store = KeyStore(base / "keys", passphrase=b"")
        store.init()
        bundle = make_bundle(events_artifact(base / "a" / "demo", events), store, base / "bundles")
        trust = base / "1.root.json"
        trust.write_bytes(store.trust_files())
        self.digest = bundle.digest
        self.ok(
            "init", "--name", name, "--family", "server", "--trust", str(trust), "--fleet", fleet
        )
        self.ok("activate", str(bundle.path))

    def run(self, *args: str, timeout: float = 120) -> tuple[int, dict]:
        me = pwd.getpwuid(os.getuid()).pw_name
        proc = subprocess.run(
            [sys.executable, str(self.program), "--root", str(self.root), "--user", me, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"agent {args} gave no JSON; stderr: {proc.stderr[-2000:]}")
        return proc.returncode, json.loads(lines[-1])

    def ok(self, *args: str) -> dict:
        code, answer = self.run(*args)
        assert code == 0, answer
        return answer
