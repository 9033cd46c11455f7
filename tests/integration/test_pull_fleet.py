"""Pull-based fleets on real components: nginx serving the signed repository, real agents
(threads of the swarm simulator, and one as its own process), reports over HTTP.

One fleet goes through a full rollout, a config-only update and a broken bundle whose
canary fails; then single agents meet a repository an attacker changed or froze.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata

from orchestrator.ship.pull import ReportReceiver, pull_dir, pull_rollout
from orchestrator.sim.swarm import (
    Nginx,
    Swarm,
    free_port,
    make_artifact,
    read_access_log,
    write_fleet,
)
from orchestrator.spec.fleet import load_fleet_file
from orchestrator.spec.strategy import load_rollout_file
from registry.bundle import make_bundle
from registry.keys import KeyStore
from tests.device_python import unprivileged_python

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (tools/system-deps.sh installs it)",
)

REPO = Path(__file__).resolve().parents[2]
COUNT = 12
MB = 2.0


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    bundles = tmp_path / "bundles"
    monkeypatch.setenv("EDGESHIP_BUNDLES", str(bundles))
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    first = make_bundle(make_artifact(tmp_path / "a1" / "demo", MB, note="a"), store, bundles)
    nginx = Nginx(tmp_path / "nginx", bundles, free_port()).start()
    report_port = free_port()
    pull = {
        "base_url": f"http://127.0.0.1:{nginx.port}/",
        "reports_url": f"http://127.0.0.1:{report_port}/report",
        "reports_listen": f"127.0.0.1:{report_port}",
        "poll_seconds": 1,
        "wave_timeout_seconds": 90,
    }
    names = [f"dev-{i:04d}" for i in range(COUNT)]
    write_fleet(tmp_path / "swarm.yaml", "swarm", names, "server", pull)
    (tmp_path / "waves.yaml").write_text(
        "name: waves\nstrategy: waves\nwaves:\n  - {count: 2}\n  - {fraction: 1.0}\n"
        "failure_budget: {max_failures: 0}\non_failure: rollback\n"
    )
    receiver = ReportReceiver(pull["reports_listen"], pull_dir(tmp_path, "swarm")).start()
    swarm = Swarm(
        tmp_path / "swarm",
        COUNT,
        "swarm",
        "server",
        pull["base_url"],
        pull["reports_url"],
        bundles / ".tuf" / "root.json",
        poll_seconds=1,
        workers=2,
        threads=4,
    )
    try:
        yield {
            "root": tmp_path,
            "store": store,
            "bundles": bundles,
            "first": first,
            "nginx": nginx,
            "pull": pull,
            "fleet": load_fleet_file(tmp_path / "swarm.yaml", tmp_path),
            "strategy": load_rollout_file(tmp_path / "waves.yaml"),
            "receiver": receiver,
            "swarm": swarm,
        }
    finally:
        swarm.stop()
        receiver.stop()
        nginx.stop()


def _bundle_bytes(log: list[dict[str, Any]], version: int) -> dict[str, int]:
    """Device -> bytes of bundle ``version``'s files it downloaded."""
    out: dict[str, int] = {}
    for r in log:
        if r["uri"].startswith(f"/demo/{version}/") and r["status"] == 200:
            out[r["device"]] = out.get(r["device"], 0) + r["bytes"]
    return out


def test_pull_fleet_rolls_out_updates_config_only_and_halts_a_failing_canary(
    world: dict[str, Any],
) -> None:
    w = world
    swarm, receiver, fleet, strategy, store = (
        w["swarm"], w["receiver"], w["fleet"], w["strategy"], w["store"],
    )  # fmt: skip
    swarm.start().wait_enrolled(120)
    model_bytes = (w["first"].path / "model" / "model.onnx").stat().st_size

    first = pull_rollout(
        w["root"], fleet, w["first"], strategy, "waves", None, store, None, receiver
    )
    assert first.status == "completed", first.to_json()
    assert [len(x.healthy) for x in first.waves] == [2, COUNT - 2]
    assert set(swarm.running().values()) == {1}
    log = read_access_log(w["nginx"].access_log)
    assert all(b >= model_bytes for b in _bundle_bytes(log, 1).values())
    assert len(_bundle_bytes(log, 1)) == COUNT

    # a config-only update: devices fetch the changed file and the envelope, not the model
    artifact = make_artifact(w["root"] / "a2" / "demo", MB, note="b")
    second = make_bundle(artifact, store, w["bundles"])
    report = pull_rollout(w["root"], fleet, second, strategy, "waves", None, store, None, receiver)
    assert report.status == "completed", report.to_json()
    assert set(swarm.running().values()) == {2}
    fetched = _bundle_bytes(read_access_log(w["nginx"].access_log), 2)
    assert len(fetched) == COUNT and max(fetched.values()) < model_bytes / 20, fetched
    sent = pull_dir(w["root"], "swarm") / "reports.jsonl"
    installs = [
        r
        for r in map(json.loads, sent.read_text().splitlines())
        if r.get("rollout") == report.id and "downloaded_bytes" in r
    ]
    assert len(installs) == COUNT
    assert all(r["reused_bytes"] >= model_bytes > 20 * r["downloaded_bytes"] for r in installs)

    # a bundle whose model gives wrong answers: the canaries fail their health check, roll
    # back on their own, the rollout halts and publishes the rollback; wave 2 fetches nothing
    broken = make_artifact(w["root"] / "a3" / "demo", MB, note="c", broken=True)
    third = make_bundle(broken, store, w["bundles"])
    halted = pull_rollout(w["root"], fleet, third, strategy, "waves", None, store, None, receiver)
    assert halted.status == "halted" and halted.previous == 2
    assert len(halted.waves) == 1 and set(halted.waves[0].failed) == set(swarm.names[:2])
    assert set(swarm.running().values()) == {2}  # every device runs a working version
    fetched = _bundle_bytes(read_access_log(w["nginx"].access_log), 3)
    assert set(fetched) <= set(swarm.names[:2]), fetched  # no device of wave 2 downloaded v3
    for name in swarm.names:
        state = json.loads((swarm.root_of(name) / "state.json").read_text())
        assert state["versions"]["2"]["health"]["result"] == "pass"
    canary = json.loads((swarm.root_of(swarm.names[0]) / "state.json").read_text())
    assert canary["versions"]["3"]["health"]["result"] == "fail"
    journal = pull_dir(w["root"], "swarm") / f"{halted.id}.jsonl"
    events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
    assert events[-2:] == ["rollout_halted", "rollout_finished"]


def _agent(root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    me = pwd.getpwuid(os.getuid()).pw_name  # the agent user: whoever runs the test
    cmd = [sys.executable, "-m", "orchestrator.device.agent", "--root", str(root), "--user", me]
    proc = subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_pull_agent_refuses_a_changed_frozen_or_replayed_repository(
    world: dict[str, Any], tmp_path: Path
) -> None:
    w = world
    tuf = w["bundles"] / ".tuf"
    device = tmp_path / "one"
    trust = tmp_path / "root.json"
    shutil.copyfile(tuf / "root.json", trust)
    code, out = _agent(device, "init", "--name", "dev-0000", "--family", "server",
                       "--trust", str(trust), "--fleet", "swarm")  # fmt: skip
    assert code == 0, out
    url, reports = w["pull"]["base_url"], w["pull"]["reports_url"]
    # a rollout document published (signed) for the fleet: the agent installs version 1
    doc = {
        "_type": "edgeship.pull-rollout", "id": "r1", "fleet": "swarm", "deployment": "demo",
        "version": 1, "previous": None, "open_waves": 1, "halted": False, "rollback": False,
        "waves": [{"name": "all", "devices": ["dev-0000"]}],
    }  # fmt: skip
    from registry.repository import Repository

    repo = Repository(w["bundles"], w["store"])
    repo.publish_document("fleets/swarm/rollout.json", json.dumps(doc).encode())
    code, out = _agent(device, "pull", "--repository", url, "--reports", reports)
    assert (code, out["result"], out["running"]) == (0, "healthy", 1), out
    assert w["receiver"].snapshot()["dev-0000"]["result"] == "healthy"
    seen = json.loads((tuf / "timestamp.json").read_text())["signed"]["version"]

    # the document changed on the server without signing: its hash differs from its target
    changed = dict(doc, version=99)
    (w["bundles"] / "fleets/swarm/rollout.json").write_text(json.dumps(changed))
    repo.refresh()  # a new timestamp, so that the agent reads the targets again
    code, out = _agent(device, "pull", "--repository", url)
    assert (out["result"], out["reason"], out["running"]) == ("error", "hash_mismatch", 1), out
    repo.publish_document("fleets/swarm/rollout.json", json.dumps(doc).encode())
    code, out = _agent(device, "pull", "--repository", url)
    assert (out["result"], out["running"]) == ("healthy", 1), out

    # an attacker holding the timestamp key but not the targets key: snapshot and timestamp
    # name a targets version whose signature does not verify; nothing is installed
    targets, snapshot = tuf / "targets.json", tuf / "snapshot.json"
    saved = {p: p.read_bytes() for p in (targets, snapshot)}
    forged = Metadata.from_bytes(saved[targets])
    forged.signed.version += 1
    targets.write_bytes(forged.to_bytes())
    snap = Metadata.from_bytes(saved[snapshot])
    snap.signed.version += 1
    snap.signed.meta["targets.json"].version = forged.signed.version
    snap.sign(w["store"].online_signer("timestamp"))
    snapshot.write_bytes(snap.to_bytes())
    ts = Metadata.from_file(str(tuf / "timestamp.json"))
    ts.signed.version += 1
    ts.signed.snapshot_meta.version = snap.signed.version
    ts.sign(w["store"].online_signer("timestamp"))
    (tuf / "timestamp.json").write_bytes(ts.to_bytes())
    code, out = _agent(device, "pull", "--repository", url)
    assert (out["result"], out["reason"], out["running"]) == ("error", "bad_signature", 1), out
    for path, data in saved.items():
        path.write_bytes(data)

    # a frozen repository: the timestamp expired; nothing is installed, the report says so
    ts = Metadata.from_file(str(tuf / "timestamp.json"))
    ts.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    ts.signed.version += 5
    ts.sign(w["store"].online_signer("timestamp"))
    (tuf / "timestamp.json").write_bytes(ts.to_bytes())
    code, out = _agent(device, "pull", "--repository", url)
    assert (out["result"], out["reason"]) == ("error", "stale_repository"), out

    # a replayed older timestamp (validly signed once) after a newer one was seen
    repo.refresh()
    code, out = _agent(device, "pull", "--repository", url)
    assert (out["result"], out["running"]) == ("healthy", 1), out
    newest = json.loads((tuf / "timestamp.json").read_text())["signed"]["version"]
    assert newest > seen
    old = Metadata.from_file(str(tuf / "timestamp.json"))
    old.signed.version = seen
    old.sign(w["store"].online_signer("timestamp"))
    (tuf / "timestamp.json").write_bytes(old.to_bytes())
    code, out = _agent(device, "pull", "--repository", url)
    assert (out["result"], out["reason"]) == ("error", "stale_metadata"), out
    assert out["running"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh creates the agent user: needs root")
def test_the_pull_package_installs_an_unprivileged_agent_that_polls(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from orchestrator.ship.pull import pull_package
    from registry.repository import Repository

    w = world
    package = tmp_path / "package"
    pull_package(w["fleet"], w["store"], package)
    base = Path(tempfile.mkdtemp(prefix="edgeship-pull-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    root = base / "agent"
    python = unprivileged_python(base)
    if python is None:
        pytest.skip("no Python with numpy and onnxruntime that another user can run")
    try:
        env = dict(os.environ, EDGESHIP_ROOT=str(root), EDGESHIP_PYTHON=python,
                   EDGESHIP_NO_SERVICE="1", PYTHONPATH="")  # fmt: skip
        proc = subprocess.run(["sh", str(package / "install.sh"), "dev-0003"], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "poll with:" in proc.stdout
        device = json.loads((root / "device.json").read_text())
        assert (device["name"], device["fleet"], device["agent_user"]) == (
            "dev-0003",
            "swarm",
            "edgeship",
        )
        assert (root / "bin").stat().st_uid == 0
        doc = {
            "_type": "edgeship.pull-rollout", "id": "r1", "fleet": "swarm", "deployment": "demo",
            "version": 1, "previous": None, "open_waves": 1, "halted": False, "rollback": False,
            "waves": [{"name": "all", "devices": ["dev-0003"]}],
        }  # fmt: skip
        Repository(w["bundles"], w["store"]).publish_document(
            "fleets/swarm/rollout.json", json.dumps(doc).encode()
        )
        pull = w["pull"]
        proc = subprocess.run(
            [str(root / "bin" / "edgeship-agent"), "pull", "--repository", pull["base_url"],
             "--reports", pull["reports_url"]],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (report["result"], report["running"]) == ("healthy", 1), report
        health = w["receiver"].snapshot()["dev-0003"]
        assert health["result"] == "healthy"
        state = json.loads((root / "state.json").read_text())
        assert state["versions"]["1"]["health"]["uid"] != 0  # the model ran unprivileged
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sim_swarm_rollout_status_and_stop_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli.main import main
    from orchestrator.sim.swarm import SwarmSim

    monkeypatch.setenv("EDGESHIP_ROOT", str(REPO))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("EDGESHIP_BUNDLES", str(tmp_path / "bundles"))
    monkeypatch.setenv("EDGESHIP_ROLLOUTS", str(tmp_path / "rollouts"))
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    make_bundle(make_artifact(tmp_path / "a" / "demo", 0.5), store, tmp_path / "bundles")
    common = ["--name", "tsw", "--state", str(tmp_path / "sim")]
    sim = SwarmSim(REPO, "tsw", tmp_path / "bundles", tmp_path / "sim")
    try:
        assert main(["sim", "swarm", "--agents", "4", "--poll", "1", *common]) == 0
        out = capsys.readouterr().out
        assert "swarm tsw: 4 pull agents" in out
        fleet = str(tmp_path / "sim" / "tsw" / "tsw.yaml")
        assert f"next: edgeship rollout deployment=NAME fleet={fleet}" in out
        words = ["rollout", "deployment=demo", f"fleet={fleet}", "rollout=all_at_once"]
        assert main([*words, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "nothing is published" in out and "wave all: 4 device(s)" in out
        assert not (tmp_path / "bundles" / "fleets").exists()
        code = main(words)
        out = capsys.readouterr().out
        assert code == 0, out
        assert "wave all: 4 healthy, 0 failed, 0 silent" in out
        assert main(["status", f"fleet={fleet}"]) == 0
        out = capsys.readouterr().out
        assert "4 of 4 device(s) fine; 0 failed; 0 never reported" in out
        assert main(["sim", "swarm", *common]) == 0
        assert "versions running: {'1': 4}" in capsys.readouterr().out
    finally:
        main(["sim", "swarm", "--stop", *common])
    assert sim.state() is None
