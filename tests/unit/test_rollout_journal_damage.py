"""A damaged rollout journal is a clear error (file:line, expected, found, what to do), never a
traceback or a silent skip; a line torn by a crash is cut off and kept; --abandon recovers.

Through the real CLI (``edgeship rollout --show/--resume/--list/--abandon``), no devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import ExitCode, RolloutLockedError
from orchestrator.ship.rollout.journal import Journal, read_state
from orchestrator.ship.rollout.lock import DeviceLocks, LockHolder, deploy_locks, held_by
from orchestrator.spec.fleet import load_fleet_file

ROOT = Path(__file__).resolve().parents[2]
RID = "20260301T101500-posture_server-ward-ab12"


@pytest.fixture
def rollouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "rollouts"
    folder.mkdir()
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_ROLLOUTS", str(folder))
    return folder


def _started() -> dict[str, Any]:
    return {
        "id": RID,
        "deployment": "posture_server",
        "bundle": {"version": 2, "digest": "ab" * 32, "path": "/nonexistent/bundle"},
        "fleet": {"name": "ward", "file": "/nonexistent/ward.yaml", "alias": None},
        "strategy": {"name": "waves", "source": "conf/rollout/waves.yaml", "config": {}},
        "plan": {
            "waves": [
                {
                    "index": 1,
                    "name": "canary",
                    "devices": ["bed-01"],
                    "soak_seconds": 0,
                    "allowed_failures": 0,
                },
                {
                    "index": 2,
                    "name": "rest",
                    "devices": ["bed-02"],
                    "soak_seconds": 0,
                    "allowed_failures": 0,
                },
            ],
            "excluded": {},
        },
        "pid": 1,
        "host": "build-01",
        "user": "nurse-it",
    }


def _journal(folder: Path) -> Path:
    journal = Journal.create(folder, RID)
    journal.append("rollout_started", **_started())
    journal.append("wave_started", wave=1, name="canary", devices=["bed-01"], allowed_failures=0)
    journal.append("device_started", wave=1, device="bed-01")
    journal.append("device_done", wave=1, device="bed-01", ok=True, result="activated", version=2)
    return journal.path


def _rewrite(path: Path, number: int, raw: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = raw
    path.write_bytes(b"\n".join(lines))


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


DAMAGE = {
    "empty_first_line": (1, b"", "line 1", "found an empty line"),
    "damaged_first_line": (1, b'{"seq": 1, "event": "rollout_sta', "line 1", "not JSON"),
    "garbage_in_the_middle": (3, b"\x00\x00garbage\x1b[2J", "line 3", "not JSON"),
    "not_an_object": (2, b'["wave_started"]', "line 2", "JSON: '[\"wave_started\"]'"),
    "entry_without_its_fields": (4, b'{"seq": 4, "event": "device_done"}', "line 4", "KeyError"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("verb", ["--show", "--resume"])
def test_rollout_cli_names_file_and_line_when_the_journal_is_damaged(
    rollouts: Path, capsys: pytest.CaptureFixture[str], case: str, verb: str
) -> None:
    path = _journal(rollouts)
    number, raw, where, found = DAMAGE[case]
    _rewrite(path, number, raw)
    before = path.read_bytes()
    code, out, err = _cli(["rollout", verb, RID], capsys)
    assert code == ExitCode.ROLLOUT_STATE
    first = err.splitlines()[0]
    assert first.startswith(f"error: {path}:{number}: damaged rollout journal: expected ")
    assert found in first and "Traceback" not in err
    assert f"edgeship rollout --abandon {RID}" in err
    assert "\x1b" not in err and "\x00" not in err  # the damage is shown escaped
    assert path.read_bytes() == before  # nothing written to a damaged journal
    del where, out


def test_rollout_resume_without_id_stops_at_a_newer_damaged_journal(
    rollouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _journal(rollouts)
    _rewrite(path, 2, b"not json")
    code, _, err = _cli(["rollout", "--resume"], capsys)
    assert code == ExitCode.ROLLOUT_STATE
    assert err.startswith(f"error: {path}:2: damaged rollout journal")


def test_rollout_list_marks_a_damaged_journal_and_says_what_to_do(
    rollouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rewrite(_journal(rollouts), 1, b"")
    code, out, _ = _cli(["rollout", "--list"], capsys)
    assert code == 0
    assert f"{RID}  DAMAGED    error: {rollouts / RID}.jsonl:1:" in out
    assert f"give it up: edgeship rollout --abandon {RID}" in out


def test_rollout_show_notes_a_torn_last_line_and_resume_cuts_it_off(
    rollouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _journal(rollouts)
    with path.open("ab") as fh:
        fh.write(b'{"seq": 5, "event": "device_sta')  # the orchestrator died mid-write
    code, out, err = _cli(["rollout", "--show", RID], capsys)
    assert code == 0
    assert f"note: {path}:5: the last line (31 bytes, no newline) is a write cut short" in err
    assert f"rollout {RID}: running; posture_server v2 on 1 of 2 device(s)" in out

    # what --resume does first (before it needs the fleet and the bundle): cut it off, keep it
    journal = Journal(path)
    note = journal.cut_torn_tail()
    assert (
        note
        == f"{path}:5: cut off a last line torn by a crash (31 bytes, kept in {path.name}.torn)"
    )
    assert path.read_bytes().endswith(b"}\n")
    assert path.with_name(path.name + ".torn").read_bytes() == b'{"seq": 5, "event": "device_sta\n'
    journal.append("device_started", wave=2, device="bed-02")
    entries = Journal(path).entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5] and entries[-1]["device"] == "bed-02"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fleet(tmp_path: Path) -> Any:
    data = {
        "name": "ward",
        "defaults": {"family": "server", "identity_file": "/k"},
        "devices": [
            {"name": "bed-01", "address": "10.0.0.1"},
            {"name": "bed-02", "address": "10.0.0.2"},
        ],
    }
    path = tmp_path / "ward.yaml"
    path.write_text(json.dumps(data))
    return load_fleet_file(path, tmp_path, None, ["server"])


def _interrupted_locks(rollouts: Path, fleet: Any) -> None:
    """The locks a killed rollout leaves behind (its pid no longer runs)."""
    locks = DeviceLocks(rollouts / "locks", RID)
    locks.holder = LockHolder(RID, _dead_pid(), locks.holder.host, "2026-03-01T10:15:00Z", "1")
    locks.acquire(fleet.devices)


def test_rollout_abandon_moves_a_damaged_journal_aside_and_releases_its_locks(
    rollouts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = _fleet(tmp_path)
    path = _journal(rollouts)
    _rewrite(path, 3, b"garbage")
    damaged = path.read_bytes()
    _interrupted_locks(rollouts, fleet)
    with (
        pytest.raises(RolloutLockedError, match="damaged journal") as info,
        deploy_locks(rollouts, fleet.devices, "posture_server"),
    ):
        pass
    assert f"give it up with 'edgeship rollout --abandon {RID}'" in str(info.value)

    code, out, _ = _cli(["rollout", "--abandon", RID], capsys)
    assert code == 0
    kept = rollouts / "damaged" / path.name
    assert f"moved it to {kept} (kept for the record)" in out
    assert "released the device locks of bed-01, bed-02" in out
    assert not path.exists() and kept.read_bytes() == damaged
    assert held_by(rollouts / "locks", RID) == {}
    code, out, _ = _cli(["rollout", "--list"], capsys)
    assert "0 rollout(s)" in out
    with deploy_locks(rollouts, fleet.devices, "posture_server") as notes:
        assert notes == []


def test_rollout_abandon_ends_an_interrupted_rollout_and_frees_its_devices_for_deploy(
    rollouts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = _fleet(tmp_path)
    path = _journal(rollouts)
    _interrupted_locks(rollouts, fleet)
    with (
        pytest.raises(RolloutLockedError, match="interrupted, its process no longer runs") as info,
        deploy_locks(rollouts, fleet.devices[1:], "posture_server"),
    ):
        pass
    text = str(info.value)
    assert text.startswith("error: deploy: 1 device(s) are held by a rollout")
    assert f"rollout {RID} (pid " in text and "by nurse-it)" in text
    assert f"edgeship rollout --resume {RID}" in text and "nothing was sent" in text

    code, out, _ = _cli(["rollout", "--abandon", RID], capsys)
    assert code == 0 and "it can no longer be resumed" in out
    assert read_state(path).status == "abandoned"
    code, _, err = _cli(["rollout", "--resume", RID], capsys)
    assert code == ExitCode.ROLLOUT_STATE and f"rollout {RID} was abandoned by " in err
    code, _, err = _cli(["rollout", "--abandon", RID], capsys)
    assert code == ExitCode.ROLLOUT_STATE and "is abandoned, not interrupted" in err
    with deploy_locks(rollouts, fleet.devices, "posture_server"):
        # while a deploy holds them, a rollout cannot start on them
        other = DeviceLocks(rollouts / "locks", "20260301T120000-posture_server-ward-cd34")
        with pytest.raises(RolloutLockedError, match="locked by a running rollout") as info:
            other.acquire(fleet.devices[:1])
        assert "edgeship deploy deploy-" in str(info.value)
        assert f"(pid {os.getpid()} on " in str(info.value)
    assert list((rollouts / "locks").glob("*.lock")) == []


def test_rollout_abandon_is_refused_while_the_rollout_runs(
    rollouts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = _fleet(tmp_path)
    _journal(rollouts)
    live = DeviceLocks(rollouts / "locks", RID)
    live.acquire(fleet.devices)
    code, _, err = _cli(["rollout", "--abandon", RID], capsys)
    assert code == ExitCode.LOCKED
    assert err.startswith(f"error: rollout {RID} still runs; it cannot be abandoned")
    assert f"pid {os.getpid()}" in err
    live.release()
