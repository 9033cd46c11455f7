"""Prediction events from the phone app (the TypeScript client) to the real collector over
HTTP: the app's outbox survives the app being killed and the collector being away, a
resent batch is stored once, an event claiming another phone and a wrong token are
refused, and the app's prediction of the real `.ort` model matches the device agent's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, build_once, free_port, stop_group
from tests.npm import CLIENT, npm_ci, npm_or_skip

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EDGESHIP = str(Path(sys.executable).parent / "edgeship")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled client (dist/), its dependencies installed as CI does."""
    npm = npm_or_skip()
    if not (CLIENT / "node_modules" / "onnxruntime-node").is_dir():
        npm_ci(npm)
    res = subprocess.run(
        [npm, "run", "build"], cwd=CLIENT, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return CLIENT / "dist" / "examples" / "events-app.js"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A posture_phone artifact (.ort) whose runtime.json declares events."""
    return build_once(
        ["deployment=posture_phone", "deployment.events.enabled=true"],
        tmp_path_factory.mktemp("app-events-build"),
    )


class Collector:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.db = f"sqlite:///{folder / 'events.db'}"
        self.tokens = folder / "tokens.json"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, EDGESHIP_ROOT=str(ROOT))
        self.proc: subprocess.Popen[str] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EDGESHIP, "events", *args], env=self.env, capture_output=True, text=True, timeout=60
        )

    def token(self, fleet: str, device: str) -> str:
        res = self.cli("token", "--fleet", fleet, "--device", device, "--tokens", str(self.tokens))
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def start(self) -> None:
        args = ["serve", "--http", f"127.0.0.1:{self.port}", "--tokens", str(self.tokens)]
        self.proc = subprocess.Popen(
            [EDGESHIP, "events", *args, "--db", self.db],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert f"collecting POST {self.url}/v1/events" in line, line

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None

    def stored(self) -> list[dict]:
        res = self.cli("--db", self.db, "--json", "--limit", "1000")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "collector")
    c.folder.mkdir()
    try:
        yield c
    finally:
        c.stop()


def _node(app: Path, *args: str) -> tuple[int, dict]:
    res = subprocess.run(
        ["node", str(app), *args], capture_output=True, text=True, timeout=300, cwd=CLIENT
    )
    assert res.returncode in (0, 3), res.stdout + res.stderr
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


def test_app_events_reach_the_collector_once_through_kills_and_outages(
    app: Path, bundle: Path, collector: Collector, tmp_path: Path
) -> None:
    from orchestrator.device.agent.events import summarise

    state = tmp_path / "phone"
    state.mkdir()
    token = collector.token("phones", "phone-1")
    record = [str(bundle), str(state), "5", "phones", "phone-1", "1", "ab" * 32]

    # the app records while the collector is away; the attempt to send keeps everything
    assert _node(app, "record", *record)[1]["pending"] == 5
    code, answer = _node(app, "send", str(state), collector.url, token)
    assert code == 3 and answer["pending"] == 5 and "events collector" in answer["error"]

    # the app was killed and starts again: the outbox is still there, and grows
    assert _node(app, "record", *record[:2], "3", *record[3:])[1]["pending"] == 8
    collector.start()
    outbox = state / "events" / "outbox.json"
    sent_before_ack = outbox.read_bytes()
    code, answer = _node(app, "send", str(state), collector.url, token)
    assert code == 0 and answer == {"sent": 8, "duplicates": 0, "refused": [], "pending": 0}

    # the answer was lost on the way (the app sends the same batch again): stored once
    outbox.write_bytes(sent_before_ack)
    code, answer = _node(app, "send", str(state), collector.url, token)
    assert answer["sent"] == 0 and answer["duplicates"] == 8
    stored = collector.stored()
    assert len(stored) == 8 and len({e["id"] for e in stored}) == 8
    assert {(e["fleet"], e["device"], e["version"]) for e in stored} == {("phones", "phone-1", 1)}

    # what the app predicted is what the device agent's summary of the same outputs says
    runtime = json.loads((bundle / "runtime.json").read_text())
    expected = dict(np.load(bundle / "smoke" / "expected.npz"))
    want = summarise(runtime, [expected[t["name"]] for t in runtime["outputs"]])
    for event in stored:
        assert event["prediction"] == want["prediction"]
        assert event["score"] == pytest.approx(want["score"], abs=1e-5)
        assert event["latency_ms"] > 0 and event["deployment"] == "posture_phone"

    # an event that claims another phone is refused (and not sent again); a bad token too
    doc = json.loads(outbox.read_text())
    doc["events"] = [{"id": "forged-1", "device": "phone-2", "fleet": "phones"}]
    outbox.write_text(json.dumps(doc))
    code, answer = _node(app, "send", str(state), collector.url, token)
    assert answer["refused"] and "claims device 'phone-2'" in answer["refused"][0]
    assert answer["pending"] == 0 and len(collector.stored()) == 8
    assert _node(app, "record", *record[:2], "1", *record[3:])[1]["pending"] == 1
    code, answer = _node(app, "send", str(state), collector.url, "not-a-token")
    assert code == 3 and "HTTP 401" in answer["error"] and answer["pending"] == 1
    time.sleep(0)  # the collector keeps serving: the right token still works
    assert _node(app, "send", str(state), collector.url, token)[1]["sent"] == 1
