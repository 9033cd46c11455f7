"""Rollout strategies, plans, the journal, device locks, and the failure budget (no devices).

The budget tests replace the per-device step with a stand-in that answers by device name;
the same engine runs on real sshd devices in tests/integration/test_rollout_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import SpecError
from orchestrator.ship.results import DeviceOutcome
from orchestrator.ship.rollout import engine
from orchestrator.ship.rollout.journal import Journal, read_state, replay
from orchestrator.ship.rollout.lock import DeviceLocks, LockHolder, RolloutLockedError
from orchestrator.ship.rollout.plan import Selection, plan_rollout
from orchestrator.spec.fleet import load_fleet_file
from orchestrator.spec.strategy import check_rollout_data, load_rollout, load_rollout_file
from registry.bundle import Bundle

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["intel_nuc", "server"]


def _fleet(tmp_path: Path, count: int = 10, nuc: int = 0) -> Any:
    devices = []
    for i in range(count):
        site = "north" if i < count // 2 else "south"
        ward = ("icu", "cardiology", "general")[i % 3]
        dev = {
            "name": f"bed-{i + 1:02d}",
            "address": f"10.0.0.{i + 1}",
            "labels": {"site": site, "ward": ward, "bed": f"{i + 1:02d}"},
            "groups": ["canary"] if i == 2 else [],
        }
        devices.append(dev)
    for j in range(nuc):
        devices.append({"name": f"ct-{j + 1}", "address": f"10.0.1.{j + 1}", "family": "intel_nuc"})
    data = {
        "name": "ward",
        "defaults": {"family": "server", "identity_file": "/k"},
        "groups": {"canary": "first"},
        "devices": devices,
    }
    path = tmp_path / "ward.yaml"
    path.write_text(json.dumps(data))
    return load_fleet_file(path, tmp_path, None, FAMILIES)


def _strategy(**data: Any) -> Any:
    base = {"name": "s", "strategy": "all_at_once"}
    return check_rollout_data(base | data, "s.yaml")


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        check_rollout_data(data, "conf/rollout/bad.yaml", "bad")
    return str(info.value).splitlines()


# -- strategies --------------------------------------------------------------------------------


def test_rollout_shipped_strategies_load() -> None:
    names = {p.stem for p in (ROOT / "conf" / "rollout").glob("*.yaml")}
    assert {"all_at_once", "canary", "waves"} <= names
    for name in names:
        assert load_rollout(name, ROOT).name == name


def test_rollout_config_reports_every_problem_with_file_and_key() -> None:
    lines = _errors(
        {
            "name": "bad",
            "strategy": "wave",
            "max_paralel": 4,
            "failure_budget": {"max_failures": 1, "max_fraction": 0.2},
            "timeouts": {"health": 0},
            "on_failure": "retry",
            "select": {"labels": {"room": "3"}},
        }
    )
    assert lines == [
        "error: invalid rollout (6 problems)",
        "  conf/rollout/bad.yaml: max_paralel: unknown key 'max_paralel'; expected one of: "
        "analysis, canary, description, failure_budget, limit_rate_kbps, max_parallel, name, "
        "on_failure, select, soak_seconds, strategy, timeouts, waves (did you mean "
        "'max_parallel'?)",
        "  conf/rollout/bad.yaml: strategy: unknown value 'wave'; expected one of: all_at_once, "
        "canary, waves (did you mean 'waves'?)",
        "  conf/rollout/bad.yaml: on_failure: unknown value 'retry'; expected one of: hold, "
        "rollback",
        "  conf/rollout/bad.yaml: select.labels.room: unknown label 'room'; expected one of: "
        "bed, site, ward",
        "  conf/rollout/bad.yaml: timeouts.health: expected a positive number of seconds, found 0",
        "  conf/rollout/bad.yaml: failure_budget: expected one of max_failures or "
        "max_fraction, not both",
    ]


def test_rollout_config_waves_must_grow_and_reach_every_device() -> None:
    lines = _errors(
        {
            "name": "bad",
            "strategy": "waves",
            "waves": [{"fraction": 0.5}, {"fraction": 0.2}, {"count": 3, "fraction": 0.9}],
        }
    )
    assert lines == [
        "error: invalid rollout (3 problems)",
        "  conf/rollout/bad.yaml: waves[1].fraction: expected more than the previous wave's "
        "0.5 (waves are cumulative), found 0.2",
        "  conf/rollout/bad.yaml: waves[2]: expected exactly one of count (devices) or "
        "fraction (of the fleet)",
        "  conf/rollout/bad.yaml: waves[2]: the last wave must reach every selected device; "
        "expected fraction: 1.0",
    ]


def test_rollout_config_strategy_sections_must_match_the_strategy() -> None:
    lines = _errors({"name": "bad", "strategy": "all_at_once", "canary": {"count": 1}, "waves": []})
    assert lines == [
        "error: invalid rollout (1 problem)",
        "  conf/rollout/bad.yaml: canary: only strategy canary has a canary section; this "
        "one is 'all_at_once'",
    ]
    assert _errors({"name": "bad", "strategy": "waves"})[1] == (
        "  conf/rollout/bad.yaml: waves: strategy waves needs at least one wave, e.g. "
        "[{fraction: 1.0}]"
    )


def test_rollout_config_analysis_gates_are_checked() -> None:
    lines = _errors(
        {
            "name": "bad",
            "strategy": "all_at_once",
            "analysis": {"min_events": 0, "max_error_share": 2, "max_p95_ratio": 0, "p99": 1},
        }
    )
    assert lines == [
        "error: invalid rollout (5 problems)",
        "  conf/rollout/bad.yaml: analysis.p99: unknown key 'p99'; expected one of: db, "
        "max_error_share, max_p95_ratio, max_psi, min_events",
        "  conf/rollout/bad.yaml: analysis.max_p95_ratio: expected a positive number, found 0",
        "  conf/rollout/bad.yaml: analysis.max_error_share: expected a number in [0, 1], found 2",
        "  conf/rollout/bad.yaml: analysis.min_events: expected 1 or more, found 0",
        "  conf/rollout/bad.yaml: analysis: expected a soak to analyse (soak_seconds, "
        "canary.soak_seconds or a wave's soak_seconds above 0), found none",
    ]
    assert _errors({"name": "bad", "strategy": "canary", "analysis": {}})[1] == (
        "  conf/rollout/bad.yaml: analysis: expected at least one gate: max_p95_ratio, "
        "max_psi, max_error_share"
    )
    ok = _strategy(strategy="canary", analysis={"max_psi": 0.2})
    assert ok.analysis.max_psi == 0.2 and ok.analysis.min_events == 20


def test_rollout_config_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nstrategy: [canary\n")
    with pytest.raises(SpecError) as info:
        load_rollout_file(path, "conf/rollout/broken.yaml")
    assert "conf/rollout/broken.yaml: line 3, column 1: invalid YAML" in str(info.value)


# -- plans -------------------------------------------------------------------------------------


def test_plan_waves_are_cumulative_and_round_up(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 10)
    strategy = _strategy(
        strategy="waves",
        waves=[{"count": 1}, {"fraction": 0.1}, {"fraction": 0.5}, {"fraction": 1.0}],
        soak_seconds=30,
        failure_budget={"max_fraction": 0.25},
    )
    plan = plan_rollout(fleet, strategy, "server")
    assert [w.devices for w in plan.waves] == [
        ["bed-01"],
        ["bed-02", "bed-03", "bed-04", "bed-05"],
        ["bed-06", "bed-07", "bed-08", "bed-09", "bed-10"],
    ]
    assert [w.name for w in plan.waves] == ["up to 1 device(s)", "up to 50%", "up to 100%"]
    assert [w.allowed_failures for w in plan.waves] == [0, 1, 1]
    assert [w.soak_seconds for w in plan.waves] == [30, 30, 0]


def test_plan_canary_by_group_then_the_rest_and_other_families_left_out(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 6, nuc=1)
    strategy = _strategy(
        strategy="canary",
        canary={"count": 1, "select": {"groups": ["canary"]}, "soak_seconds": 10},
    )
    plan = plan_rollout(fleet, strategy, "server")
    assert [w.devices for w in plan.waves] == [
        ["bed-03"],
        ["bed-01", "bed-02", "bed-04", "bed-05", "bed-06"],
    ]
    assert plan.excluded == {"ct-1": "target family intel_nuc; the bundle is for server"}


def test_plan_command_line_labels_narrow_the_strategy_selection(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 10)
    strategy = _strategy(select={"labels": {"site": "north"}})
    plan = plan_rollout(fleet, strategy, "server", Selection(labels={"ward": ["icu", "general"]}))
    assert plan.devices == ["bed-01", "bed-03", "bed-04"]
    with pytest.raises(SpecError) as info:
        plan_rollout(fleet, strategy, "server", Selection(labels={"ward": ["maternity"]}))
    assert "no device of fleet ward matches ward=maternity" in str(info.value)
    with pytest.raises(SpecError) as info:
        plan_rollout(fleet, strategy, "server", Selection(groups=["canry"]))
    assert "group: unknown group 'canry'; expected one of: canary (did you mean 'canary'?)" in (
        str(info.value)
    )


# -- journal -----------------------------------------------------------------------------------


def test_journal_replays_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, "r1")
    journal.append("rollout_started", id="r1", plan={"waves": []}, pid=1, host="h")
    journal.append("wave_started", wave=1)
    journal.append("device_started", wave=1, device="a")
    journal.append("device_step", wave=1, device="a", step="connected", from_version=3)
    journal.append("device_done", wave=1, device="a", ok=True, result="activated")
    journal.append("device_started", wave=1, device="b")
    with journal.path.open("ab") as fh:
        fh.write(b'{"seq": 7, "event": "device_do')  # the orchestrator died mid-write
    state = read_state(journal.path)
    assert state.entries == 6 and state.unfinished
    assert set(state.done) == {"a"} and state.in_flight == {"b"}
    assert state.from_versions == {"a": 3}
    assert [e["seq"] for e in Journal(journal.path).entries()] == [1, 2, 3, 4, 5, 6]


def test_journal_replay_needs_a_start() -> None:
    with pytest.raises(ValueError, match="does not start with rollout_started"):
        replay([{"event": "wave_started"}], "x")


# -- locks -------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_locks_refuse_a_live_holder_and_take_over_a_dead_one(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 3)
    first = DeviceLocks(tmp_path / "locks", "rollout-a")
    assert first.acquire(fleet.devices[:2]) == {}
    second = DeviceLocks(tmp_path / "locks", "rollout-b")
    with pytest.raises(RolloutLockedError) as info:
        second.acquire(fleet.devices[1:])
    text = str(info.value)
    assert "1 device(s) are locked by a running rollout" in text
    assert f"rollout rollout-a (pid {os.getpid()} on " in text and "devices: bed-02" in text
    assert len(list((tmp_path / "locks").glob("*.lock"))) == 2  # nothing of rollout-b written
    first.release()
    assert second.acquire(fleet.devices[1:]) == {}
    second.release()

    # a holder whose pid no longer runs is stale
    assert list((tmp_path / "locks").glob("*.lock")) == []
    dead = DeviceLocks(tmp_path / "locks", "rollout-dead")
    dead.holder = LockHolder("rollout-dead", _dead_pid(), dead.holder.host, "t0", "123")
    dead.acquire(fleet.devices[:1])
    third = DeviceLocks(tmp_path / "locks", "rollout-c")
    stale = third.acquire(fleet.devices[:2])
    assert list(stale) == ["bed-01"] and stale["bed-01"].rollout_id == "rollout-dead"


# -- the failure budget ------------------------------------------------------------------------


class _Devices:
    """Stand-in for the per-device step: results by device name, recorded calls."""

    def __init__(self, results: dict[str, str]) -> None:
        self.results = results
        self.deployed: list[str] = []
        self.rolled_back: list[str] = []

    def deploy(
        self,
        fleet: Any,
        dev: Any,
        bundle: Any,
        store: Any,
        options: Any,
        outcome: DeviceOutcome,
        on_step: Any,
    ) -> None:
        self.deployed.append(dev.name)
        outcome.from_version = 1
        on_step("connected", {"from_version": 1})
        result = self.results.get(dev.name, "activated")
        if result != "unreachable":
            on_step("activate", {})
        outcome.result = result
        outcome.version = 2 if result == "activated" else 1

    def rollback(self, fleet: Any, dev: Any, to: int, health: float, connect: float) -> dict:
        self.rolled_back.append(dev.name)
        return {"result": "rolled_back", "ok": True, "to_version": to, "version": to}


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results: dict[str, str], **strategy: Any
) -> tuple[Any, _Devices]:
    fake = _Devices(results)
    monkeypatch.setattr(engine, "deploy_device", fake.deploy)
    monkeypatch.setattr(engine, "rollback_device", fake.rollback)
    monkeypatch.setenv("EDGESHIP_ROLLOUTS", str(tmp_path / "rollouts"))
    fleet = _fleet(tmp_path, 10)
    bundle = Bundle(
        tmp_path,
        {
            "deployment": "d",
            "version": 2,
            "target": {"family": "server"},
            "signing": {"key_id": "k"},
        },
        "f" * 64,
    )
    try:
        report = engine.start_rollout(
            tmp_path, fleet, "ward.yaml", bundle, _strategy(**strategy), "s.yaml", record=False
        )
    except engine.RolloutHaltedError as exc:
        report = exc.report
    return report, fake


def test_budget_tolerates_exactly_its_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, fake = _run(
        tmp_path,
        monkeypatch,
        {"bed-02": "refused", "bed-05": "unhealthy"},
        strategy="waves",
        waves=[{"count": 1}, {"fraction": 1.0}],
        failure_budget={"max_failures": 2},
        max_parallel=1,
    )
    assert report.status == "completed"
    assert sorted(report.failed) == ["bed-02", "bed-05"] and fake.rolled_back == []
    assert len(fake.deployed) == 10


def test_budget_exceeded_stops_the_wave_halts_and_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, fake = _run(
        tmp_path,
        monkeypatch,
        {"bed-03": "refused", "bed-04": "unreachable", "bed-06": "error"},
        strategy="waves",
        waves=[{"count": 2}, {"fraction": 1.0}],
        failure_budget={"max_failures": 1},
        max_parallel=1,
    )
    s = report.state
    assert report.status == "halted" and s.halted["wave"] == 2
    # one at a time: bed-03 fails (1 <= budget), bed-04 fails (2 > 1): nothing more starts
    assert fake.deployed == ["bed-01", "bed-02", "bed-03", "bed-04"]
    assert sorted(s.skipped) == ["bed-05", "bed-06", "bed-07", "bed-08", "bed-09", "bed-10"]
    # every device asked to activate goes back; bed-04 never got that far
    assert sorted(fake.rolled_back) == ["bed-01", "bed-02", "bed-03"]
    events = [e["event"] for e in Journal(report.journal).entries()]
    assert events[-1] == "rollout_finished" and "rollout_halted" in events
    assert events.index("rollout_halted") < events.index("rollback_started")


def test_budget_hold_keeps_updated_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report, fake = _run(
        tmp_path,
        monkeypatch,
        {"bed-01": "rolled_back"},
        strategy="all_at_once",
        on_failure="hold",
        max_parallel=1,
    )
    assert report.status == "halted" and fake.rolled_back == []
    assert fake.deployed == ["bed-01"]


def test_phone_fleet_feed_section_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "phones.yaml"
    path.write_text(
        "name: phones\n"
        "defaults: {family: android_phone}\n"
        "feed: {host: 10.0.9.1, path: /srv/feed, base_url: 'ftp://feed', prot: 22,\n"
        "       channels: [stable, 'be ta'], index_valid_days: 0}\n"
        "devices: []\n"
    )
    with pytest.raises(SpecError) as info:
        load_fleet_file(path, tmp_path, "conf/fleet/phones.yaml", ["android_phone", "server"])
    assert str(info.value).splitlines() == [
        "error: invalid fleet (5 problems)",
        "  conf/fleet/phones.yaml: feed.prot: unknown key 'prot'; expected one of: base_url, "
        "channels, host, host_key, identity_file, index_valid_days, path, port, "
        "timestamp_valid_hours, user "
        "(did you mean 'port'?)",
        "  conf/fleet/phones.yaml: feed.identity_file: missing; set it here or in "
        "defaults.identity_file",
        "  conf/fleet/phones.yaml: feed.base_url: expected an http:// or https:// URL, found "
        "'ftp://feed'",
        "  conf/fleet/phones.yaml: feed.channels[1]: expected letters, digits and '-', found "
        "'be ta'",
        "  conf/fleet/phones.yaml: feed.index_valid_days: expected a positive number, found 0",
    ]
