"""`edgeship deploy` honours the rollouts' device locks, on real sshd devices.

A device held by a rollout that runs (soaking between its waves), by one that was killed
(interrupted, resumable), or by a lock taken through the lock API is refused with exit 10
naming the holder; nothing is sent, the device keeps its version and passes its health
check. After the rollout is resumed (its torn last journal line cut off and kept) or the
lock released, deploy works again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import ExitCode
from tests.sshd import write_fleet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ward(
    tmp_path: Path, ssh_devices: list, built_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Keys, two bundle versions, three enrolled devices running v1; env for the CLI."""
    env = {
        "EDGESHIP_ROOT": str(ROOT),
        "EDGESHIP_ARTIFACTS": str(built_artifact.parent),
        "EDGESHIP_BUNDLES": str(tmp_path / "bundles"),
        "EDGESHIP_KEYS_DIR": str(tmp_path / "keys"),
        "EDGESHIP_ROLLOUTS": str(tmp_path / "rollouts"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    roots = {d.name: tmp_path / "devices" / d.name for d in ssh_devices}
    fleet = write_fleet(tmp_path / "fleet" / "ward.yaml", ssh_devices, roots)
    assert main(["keys", "init"]) == 0
    assert main(["bundle", "deployment=posture_server"]) == 0
    assert main(["enroll", f"fleet={fleet}"]) == 0
    assert main(["deploy", "deployment=posture_server", f"fleet={fleet}"]) == 0
    assert main(["bundle", "deployment=posture_server"]) == 0  # v2, not deployed yet
    return {"fleet": fleet, "roots": roots, "rollouts": tmp_path / "rollouts", "env": env}


def _agent(ward: dict[str, Any], device: str, args: str) -> dict[str, Any]:
    from orchestrator.ship.ssh import connect
    from orchestrator.spec.fleet import load_fleet_file

    fleet = load_fleet_file(ward["fleet"], ROOT)
    with connect(fleet.device(device), Path(fleet.known_hosts)) as session:
        result = session.agent(args)
    assert result.code == 0, result
    return dict(result.json())


def _runs_healthy(ward: dict[str, Any], device: str, version: int) -> None:
    """The device runs ``version`` and passes `edgeship-agent health` there."""
    assert _agent(ward, device, "status")["current"] == version
    assert _agent(ward, device, "health")["result"] == "pass"


def _staged_nothing(ward: dict[str, Any], device: str) -> None:
    staging = ward["roots"][device] / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def _deploy(ward: dict[str, Any], devices: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code = main(
        ["deploy", "deployment=posture_server", "version=2", f"fleet={ward['fleet']}", devices]
    )
    return code, capsys.readouterr()


def test_deploy_refuses_a_device_locked_through_the_lock_api_until_it_is_released(
    ward: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.ship.rollout.lock import DeviceLocks
    from orchestrator.spec.fleet import load_fleet_file

    fleet = load_fleet_file(ward["fleet"], ROOT)
    rollout_id = "20260301T101500-posture_server-ward-ab12"
    locks = DeviceLocks(ward["rollouts"] / "locks", rollout_id)
    locks.acquire([fleet.device("dev03")])
    capsys.readouterr()

    code, out = _deploy(ward, "device=dev02,dev03", capsys)
    assert code == ExitCode.LOCKED, out
    assert out.err.startswith("error: deploy: 1 device(s) are held by a rollout\n")
    assert f"  rollout {rollout_id} (pid {os.getpid()} on " in out.err
    assert "devices: dev03" in out.err and f"{rollout_id} is running: wait for it" in out.err
    assert "nothing was sent to any device" in out.err
    for device in ("dev02", "dev03"):  # all or none: the free device is not touched either
        _runs_healthy(ward, device, 1)
        _staged_nothing(ward, device)

    locks.release()
    code, out = _deploy(ward, "device=dev03", capsys)
    assert code == 0, out.err
    assert "activated   v2" in out.out
    _runs_healthy(ward, "dev03", 2)
    assert list((ward["rollouts"] / "locks").glob("*.lock")) == []  # deploy let go of its own


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _events(path: Path) -> list[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["event"] for line in lines if line.endswith("}")]


def test_deploy_refuses_devices_of_a_running_then_interrupted_rollout_until_it_is_resumed(
    ward: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = tmp_path / "soak.yaml"
    strategy.write_text(
        "name: soak\nstrategy: waves\nwaves: [{count: 1}, {fraction: 1.0}]\nsoak_seconds: 25\n"
        "max_parallel: 1\nfailure_budget: {max_failures: 0}\n"
    )
    env = dict(os.environ) | ward["env"] | {"PYTHONPATH": str(ROOT)}
    log = (tmp_path / "rollout.log").open("w")
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli.main",
            "rollout",
            "deployment=posture_server",
            "version=2",
            f"fleet={ward['fleet']}",
            f"rollout={strategy}",
            "device=dev01,dev02",
            "--no-record",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        rollouts = ward["rollouts"]
        journal = _wait_for(lambda: next(iter(rollouts.glob("*.jsonl")), None), 60, "a journal")
        _wait_for(lambda: "soak_started" in _events(journal), 120, "the soak after wave 1")
        rollout_id = journal.stem

        # running: dev02 waits for wave 2; a deploy to it is refused, naming the rollout
        capsys.readouterr()
        code, out = _deploy(ward, "device=dev02", capsys)
        assert code == ExitCode.LOCKED, out
        assert f"rollout {rollout_id} (pid {first.pid} on " in out.err
        assert ": running" in out.err and f"edgeship rollout --show {rollout_id}" in out.err
        assert main(["rollout", "--abandon", rollout_id]) == ExitCode.LOCKED
        assert first.poll() is None, "the rollout ended before the refusal was checked"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        log.close()
    capsys.readouterr()

    # interrupted: still refused, with how to resume or abandon it
    code, out = _deploy(ward, "device=dev02", capsys)
    assert code == ExitCode.LOCKED, out
    assert "interrupted, its process no longer runs" in out.err
    assert f"'edgeship rollout --resume {rollout_id}'" in out.err
    assert f"'edgeship rollout --abandon {rollout_id}'" in out.err
    _runs_healthy(ward, "dev02", 1)
    _staged_nothing(ward, "dev02")
    _runs_healthy(ward, "dev01", 2)

    # the kill tore the journal's last line: --show says so, --resume cuts it off and keeps it
    torn = b'{"seq": 99, "event": "soak_ch'
    with journal.open("ab") as fh:
        fh.write(torn)
    lines = journal.read_bytes().count(b"\n")
    assert main(["rollout", "--show", rollout_id]) == 0
    err = capsys.readouterr().err
    assert f"note: {journal}:{lines + 1}: the last line ({len(torn)} bytes, no newline)" in err
    assert main(["rollout", "--resume", rollout_id]) == 0
    out = capsys.readouterr().out
    assert f"note: {journal}:{lines + 1}: cut off a last line torn by a crash" in out
    assert journal.with_name(journal.name + ".torn").read_bytes() == torn + b"\n"
    assert _events(journal)[-1] == "rollout_finished"
    _runs_healthy(ward, "dev02", 2)

    # the rollout is over: its devices are free for deploy again
    assert main(["bundle", "deployment=posture_server"]) == 0  # v3
    capsys.readouterr()
    code = main(
        ["deploy", "deployment=posture_server", f"fleet={ward['fleet']}", "device=dev01,dev02"]
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("activated   v3") == 2
    assert list((ward["rollouts"] / "locks").glob("*.lock")) == []
