"""Rollouts on 22 real sshd devices while devices fail in every way a ward sees.

One pool of devices for the module (started once, enrolled once, running v1):

- dev04 is unreachable from the start (its sshd is stopped);
- dev07 dies mid-upload (its sshd and every session of it are SIGKILLed once a
  partial upload appears in its staging folder);
- dev13 crashes mid-activation before the switch, dev15 after it (the agent's
  EDGESHIP_AGENT_CRASH_AT hook, set in the device's sshd environment);
- dev17's install root is a tiny tmpfs that is full;
- dev19 and dev20 are in the fleet group ``ort-minimal-op18``: a minimal ONNX Runtime
  build (kernels up to opset 18), so a model exported at opset 21 fails its health
  check there and nowhere else;
- the orchestrator itself is SIGKILLed mid-wave and resumed.

After each: every device runs a working model (its health check passes), the failure
budget halts exactly when it is exceeded, and the journal says what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.ship.rollout.engine import RolloutHaltedError, start_rollout
from orchestrator.ship.rollout.journal import Journal
from orchestrator.ship.ssh import RemoteResult, connect
from orchestrator.sim.simulator import MINIMAL_RUNTIME_GROUP, SshDevice, profile_env
from orchestrator.spec.fleet import FleetConfig, load_fleet_file
from orchestrator.spec.strategy import load_rollout_file
from registry.bundle import Bundle, make_bundle
from registry.keys import KeyStore
from tests.sshd import require_sshd, start_devices, stop_devices, write_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EDGESHIP = str(Path(sys.executable).parent / "edgeship")
N = 22
NAMES = [f"dev{i:02d}" for i in range(1, N + 1)]
UNREACHABLE = "dev04"
DIES_MID_UPLOAD = "dev07"
CRASH_BEFORE_SWITCH = "dev13"
CRASH_AFTER_SWITCH = "dev15"
DISK_FULL = "dev17"
MINIMAL_RUNTIME = ("dev19", "dev20")


@dataclass
class Pool:
    """The module's devices, key store, bundle folder and fleet."""

    base: Path
    devices: dict[str, SshDevice]
    fleet_path: Path
    store: KeyStore
    bundles: Path
    rollouts: Path
    artifact: Path
    v1: Bundle

    @property
    def fleet(self) -> FleetConfig:
        return load_fleet_file(self.fleet_path, self.base)

    def root(self, name: str) -> Path:
        return self.devices[name].install_root

    def agent(self, name: str, args: str, env: dict[str, str] | None = None) -> RemoteResult:
        fleet = self.fleet
        with connect(fleet.device(name), Path(fleet.known_hosts)) as session:
            return session.agent(args, env=env)

    def status(self, name: str) -> dict[str, Any]:
        res = self.agent(name, "status")
        assert res.code == 0, res
        return res.json()

    def agent_log(self, name: str) -> list[dict[str, Any]]:
        path = self.root(name) / "log" / "agent.log"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def bundle(self, artifact: Path) -> Bundle:
        return make_bundle(artifact, self.store, self.bundles)

    def strategy(self, path: Path, text: str) -> Path:
        path.write_text(text)
        return path


def _variant(artifact: Path, dest: Path, opset: int | None = None, tag: str = "") -> Path:
    """The artifact with its model file changed: re-stamped at ``opset``, or re-tagged."""
    import onnx

    from orchestrator.core.model_file import sha256_file

    shutil.copytree(artifact, dest)
    model_path = dest / "model" / "model.onnx"
    model = onnx.load(model_path)
    if opset is not None:
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = opset
    if tag:
        model.metadata_props.add(key="edgeship.test.variant", value=tag)
    onnx.save(model, model_path)
    runtime = json.loads((dest / "runtime.json").read_text())
    runtime["model"]["sha256"] = sha256_file(model_path)
    (dest / "runtime.json").write_text(json.dumps(runtime, indent=2))
    return dest


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
    )
    return res.returncode == 0


def _fill(path: Path, leave_kb: int) -> None:
    """Write a filler file so that only about ``leave_kb`` kB stay free on ``path``'s fs."""
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize
    size = max(free - leave_kb * 1024, 0)
    with (path / "filler.bin").open("wb") as fh:
        fh.write(b"\0" * size)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, built_artifact: Path) -> Iterator[Pool]:
    require_sshd()
    base = tmp_path_factory.mktemp("fleet22")
    profile = profile_env(base / "profiles", MINIMAL_RUNTIME_GROUP)
    devices = start_devices(
        N, base / "devices", first_octet=40, names=NAMES, env={n: profile for n in MINIMAL_RUNTIME}
    )
    by_name = {d.name: d for d in devices}
    disk_root = by_name[DISK_FULL].install_root
    mounted = _mount_tmpfs(disk_root, "2m")
    saved = os.environ.get("EDGESHIP_ROLLOUTS")
    rollouts = base / "rollouts"
    os.environ["EDGESHIP_ROLLOUTS"] = str(rollouts)
    try:
        if not mounted:
            pytest.skip("mounting a tmpfs (the full disk of dev17) needs root")
        store = KeyStore(base / "keys", passphrase=b"")
        store.init()
        labels = {
            n: {"site": "north" if i < N // 2 else "south", "ward": ("icu", "cardiology")[i % 2]}
            for i, n in enumerate(NAMES)
        }
        fleet_path = write_fleet(
            base / "fleet" / "ward22.yaml",
            devices,
            known_hosts=base / "fleet" / "known_hosts",
            labels=labels,
            groups={MINIMAL_RUNTIME_GROUP: "minimal ONNX Runtime build (opset <= 18)"},
            device_groups={n: [MINIMAL_RUNTIME_GROUP] for n in MINIMAL_RUNTIME},
        )
        fleet = load_fleet_file(fleet_path, base)
        from orchestrator.ship.enroll import enroll

        enroll(fleet, fleet.devices, store, parallel=8)
        bundles = base / "bundles"
        v1 = make_bundle(built_artifact, store, bundles)
        strategy = base / "all.yaml"
        strategy.write_text("name: all\nstrategy: all_at_once\nmax_parallel: 8\n")
        report = start_rollout(
            base,
            fleet,
            str(fleet_path),
            v1,
            load_rollout_file(strategy),
            "all.yaml",
            store=store,
            record=False,
        )
        assert report.status == "completed" and len(report.succeeded) == N
        _fill(disk_root, leave_kb=24)
        yield Pool(base, by_name, fleet_path, store, bundles, rollouts, built_artifact, v1)
    finally:
        stop_devices(devices)
        if mounted:
            subprocess.run(["umount", "-l", str(disk_root)], capture_output=True)
        if saved is None:
            os.environ.pop("EDGESHIP_ROLLOUTS", None)
        else:
            os.environ["EDGESHIP_ROLLOUTS"] = saved


class UploadKiller(threading.Thread):
    """Kills a device (its sshd and all its sessions) once a partial upload appears on it."""

    def __init__(self, device: SshDevice) -> None:
        super().__init__(daemon=True)
        self.device = device
        self.killed_at: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        staging = self.device.install_root / "staging"
        while not self.done.is_set():
            parts = list(staging.rglob("*.part")) if staging.is_dir() else []
            if parts:
                self.device.kill()
                self.killed_at = str(parts[0].relative_to(staging))
                return
            time.sleep(0.005)


def _entries(path: Path) -> list[dict[str, Any]]:
    return Journal(path).entries()


def _health_everywhere(pool: Pool, version: int) -> None:
    """Every device runs ``version`` and its health check passes now."""
    for name in NAMES:
        res = pool.agent(name, "health --timeout 120")
        answer = res.json()
        assert res.code == 0 and answer["result"] == "pass", (name, answer)
        assert pool.status(name)["current"] == version, name


def test_rollout_halts_on_budget_and_rolls_back_while_devices_fail(
    pool: Pool, tmp_path: Path
) -> None:
    v2 = pool.bundle(_variant(pool.artifact, tmp_path / "opset21", opset=21))
    strategy = pool.strategy(
        tmp_path / "faults.yaml",
        "name: faults\nstrategy: waves\n"
        "waves: [{count: 2}, {fraction: 0.5}, {fraction: 1.0}]\n"
        "max_parallel: 11\nfailure_budget: {max_failures: 2}\non_failure: rollback\n"
        "limit_rate_kbps: 100\ntimeouts: {connect: 10, health: 120, device: 300}\n",
    )
    devices = pool.devices
    devices[UNREACHABLE].stop()
    devices[CRASH_BEFORE_SWITCH].restart(env={"EDGESHIP_AGENT_CRASH_AT": "copying"})
    devices[CRASH_AFTER_SWITCH].restart(env={"EDGESHIP_AGENT_CRASH_AT": "state_written"})
    killer = UploadKiller(devices[DIES_MID_UPLOAD])
    killer.start()
    try:
        with pytest.raises(RolloutHaltedError) as info:
            start_rollout(
                pool.base,
                pool.fleet,
                str(pool.fleet_path),
                v2,
                load_rollout_file(strategy),
                "faults.yaml",
                store=pool.store,
                record=False,
            )
    finally:
        killer.done.set()
        killer.join()
        for name in (UNREACHABLE, DIES_MID_UPLOAD, CRASH_BEFORE_SWITCH, CRASH_AFTER_SWITCH):
            devices[name].restart(env={})
    report = info.value.report
    assert killer.killed_at is not None and killer.killed_at.endswith(".part")
    entries = _entries(report.journal)
    assert entries[-1]["event"] == "rollout_finished" and entries[-1]["status"] == "halted"

    # the plan: 2 devices, then up to 50% (11), then the rest
    started = entries[0]
    assert [len(w["devices"]) for w in started["plan"]["waves"]] == [2, 9, 11]

    # the budget (2 per wave): wave 2 has exactly 2 failures and goes on; wave 3 has 5 and halts
    waves = {e["wave"]: e for e in entries if e["event"] == "wave_done"}
    assert waves[1]["failed"] == [] and not waves[1]["halted"]
    assert sorted(waves[2]["failed"]) == [UNREACHABLE, DIES_MID_UPLOAD]
    assert not waves[2]["halted"] and waves[2]["allowed_failures"] == 2
    assert sorted(waves[3]["failed"]) == sorted(
        [CRASH_BEFORE_SWITCH, CRASH_AFTER_SWITCH, DISK_FULL, *MINIMAL_RUNTIME]
    )
    assert waves[3]["halted"] and waves[3]["skipped"] == []
    halts = [e for e in entries if e["event"] == "rollout_halted"]
    assert len(halts) == 1 and halts[0]["wave"] == 3

    # each device's outcome, as the journal tells it
    done = {e["device"]: e for e in entries if e["event"] == "device_done"}
    assert set(done) == set(NAMES)
    assert (done[UNREACHABLE]["result"], done[UNREACHABLE]["stage"]) == ("unreachable", "connect")
    lost = done[DIES_MID_UPLOAD]
    assert (lost["result"], lost["stage"]) == ("unreachable", "upload")
    assert "connection lost during upload" in lost["message"]
    for name in (CRASH_BEFORE_SWITCH, CRASH_AFTER_SWITCH):
        assert done[name]["result"] == "error" and "agent exited with 99" in done[name]["message"]
    full = done[DISK_FULL]
    assert (full["result"], full["stage"]) == ("error", "upload")
    assert "no space left on the device" in full["message"]
    for name in MINIMAL_RUNTIME:
        assert done[name]["result"] == "rolled_back" and done[name]["version"] == 1
        assert "opset 21" in done[name]["health"]["reason"]
    faulty = {UNREACHABLE, DIES_MID_UPLOAD, CRASH_BEFORE_SWITCH, CRASH_AFTER_SWITCH, DISK_FULL}
    healthy = [n for n in NAMES if n not in faulty | set(MINIMAL_RUNTIME)]
    for name in healthy:
        assert done[name]["result"] == "activated" and done[name]["version"] == v2.version
        assert done[name]["health"]["result"] == "pass"
    steps = {(e["device"], e["step"]) for e in entries if e["event"] == "device_step"}
    assert (DIES_MID_UPLOAD, "upload") in steps and (DIES_MID_UPLOAD, "activate") not in steps
    assert (DISK_FULL, "activate") not in steps

    # every device asked to activate went back to v1, and passed its health check there
    rollback = {e["device"]: e for e in entries if e["event"] == "device_rollback"}
    assert set(rollback) == set(NAMES) - {UNREACHABLE, DIES_MID_UPLOAD, DISK_FULL}
    assert all(e["ok"] and e["version"] == 1 for e in rollback.values()), rollback
    assert all(e["health"]["result"] == "pass" for e in rollback.values())
    for name in (CRASH_BEFORE_SWITCH, *MINIMAL_RUNTIME):
        assert rollback[name]["result"] == "unchanged"  # they never left v1 (or went back)
    for name in [*healthy, CRASH_AFTER_SWITCH]:
        assert rollback[name]["result"] == "rolled_back" and rollback[name]["from_version"] == 2
    summary = next(e for e in entries if e["event"] == "rollback_done")
    assert summary["failed"] == []

    # nothing is left without a working model
    _health_everywhere(pool, pool.v1.version)
    for name in MINIMAL_RUNTIME:
        assert v2.version in pool.status(name)["failed"]
    disk_staging = pool.root(DISK_FULL) / "staging"
    assert [p.name for p in disk_staging.iterdir() if p.is_dir()] == []  # space given back
    events = [e["event"] for e in pool.agent_log(CRASH_AFTER_SWITCH)]
    assert "crash_injected" in events and events[-1] == "health"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGESHIP, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_orchestrator_killed_mid_wave_is_resumed_and_holds_its_devices_meanwhile(
    pool: Pool, tmp_path: Path
) -> None:
    v3 = pool.bundle(_variant(pool.artifact, tmp_path / "v3", tag="v3"))
    chosen = NAMES[:12]
    strategy = pool.strategy(
        tmp_path / "slow.yaml",
        "name: slow\nstrategy: waves\nwaves: [{count: 2}, {fraction: 1.0}]\n"
        "max_parallel: 2\nfailure_budget: {max_failures: 0}\nlimit_rate_kbps: 40\n",
    )
    rollouts = tmp_path / "rollouts"
    env = dict(os.environ)
    env.pop("EDGESHIP_KEY_PASSPHRASE", None)
    env.update(
        EDGESHIP_ROOT=str(ROOT),
        EDGESHIP_BUNDLES=str(pool.bundles),
        EDGESHIP_KEYS_DIR=str(pool.store.path),
        EDGESHIP_ROLLOUTS=str(rollouts),
    )
    args = [
        "rollout",
        "deployment=posture_server",
        f"fleet={pool.fleet_path}",
        f"rollout={strategy}",
        f"version={v3.version}",
        "device=" + ",".join(chosen),
        "--no-record",
    ]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [EDGESHIP, *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        journal = _wait_for(lambda: next(iter(rollouts.glob("*.jsonl")), None), 60, "a journal")
        _wait_for(lambda: _entries(journal), 30, "rollout_started")
        rollout_id = journal.stem

        # a second rollout touching one of its devices is refused while it runs
        second = _run(
            [
                "rollout",
                "deployment=posture_server",
                f"fleet={pool.fleet_path}",
                f"rollout={strategy}",
                "device=dev05,dev14",
                "--no-record",
            ],
            env,
        )
        assert second.returncode == 10, second.stderr
        assert "1 device(s) are locked by a running rollout" in second.stderr
        assert (
            f"rollout {rollout_id} (pid {first.pid} on {socket.gethostname()}, started "
            in second.stderr
        )
        assert "devices: dev05" in second.stderr
        assert len(list(rollouts.glob("*.jsonl"))) == 1  # the refused one left nothing

        def wave2_done() -> int:
            return sum(
                1 for e in _entries(journal) if e["event"] == "device_done" and e["wave"] == 2
            )

        _wait_for(lambda: wave2_done() >= 3, 180, "three devices of wave 2")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        log.close()

    before = _entries(journal)
    assert before[-1]["event"] != "rollout_finished"
    done_before = {e["device"] for e in before if e["event"] == "device_done" and e["ok"]}
    assert {"dev01", "dev02"} <= done_before and len(done_before) < len(chosen)
    locks = list((rollouts / "locks").glob("*.lock"))
    assert len(locks) == len(chosen)
    assert all(json.loads(p.read_text())["holder"]["pid"] == first.pid for p in locks)

    resumed = _run(["rollout", "--resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed by pid" in resumed.stdout and "rollout completed" in resumed.stdout
    entries = _entries(journal)
    mark = next(i for i, e in enumerate(entries) if e["event"] == "resumed")
    assert entries[mark]["previous_pid"] == first.pid
    redone = {e["device"] for e in entries[mark:] if e["event"] == "device_started"}
    assert redone == set(chosen) - done_before  # finished devices are not touched again
    assert entries[-1]["event"] == "rollout_finished" and entries[-1]["status"] == "completed"
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert list((rollouts / "locks").glob("*.lock")) == []

    for name in chosen:
        status = pool.status(name)
        assert status["current"] == v3.version, name
        assert status["versions"][str(v3.version)]["health"]["result"] == "pass", name
        activations = [
            e
            for e in pool.agent_log(name)
            if e["event"] == "activated" and e["version"] == v3.version
        ]
        assert len(activations) == 1, (name, activations)

    # resuming a finished rollout does nothing; running it again changes nothing
    again = _run(["rollout", "--resume", rollout_id], env)
    assert again.returncode == 0 and "already finished (completed)" in again.stdout
    assert len(_entries(journal)) == len(entries)
    rerun = _run(args, env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("unchanged") == len(chosen)
    for name in chosen:
        activations = [
            e
            for e in pool.agent_log(name)
            if e["event"] == "activated" and e["version"] == v3.version
        ]
        assert len(activations) == 1


def test_device_past_its_time_limit_fails_and_keeps_its_version(pool: Pool, tmp_path: Path) -> None:
    v4 = pool.bundle(_variant(pool.artifact, tmp_path / "v4", tag="v4"))
    strategy = pool.strategy(
        tmp_path / "tight.yaml",
        "name: tight\nstrategy: all_at_once\nlimit_rate_kbps: 10\n"
        "timeouts: {connect: 10, health: 60, device: 2}\n",
    )
    before = pool.status("dev21")["current"]
    with pytest.raises(RolloutHaltedError) as info:
        start_rollout(
            pool.base,
            pool.fleet,
            str(pool.fleet_path),
            v4,
            load_rollout_file(strategy),
            "tight.yaml",
            selection=_only("dev21"),
            store=pool.store,
            record=False,
        )
    entries = _entries(info.value.report.journal)
    done = next(e for e in entries if e["event"] == "device_done")
    assert (done["result"], done["stage"]) == ("timeout", "upload")
    assert "no result within 2s (during upload); the connection was closed" in done["message"]
    assert not any(e["event"] == "device_rollback" for e in entries)  # it never activated
    assert pool.status("dev21")["current"] == before
    assert pool.agent("dev21", "health").code == 0


def _only(name: str) -> Any:
    from orchestrator.ship.rollout.plan import Selection

    return Selection(devices=[name])
