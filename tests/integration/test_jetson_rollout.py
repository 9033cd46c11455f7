"""A rollout of ``ct_seg_jetson`` to simulated Jetsons: the health check goes through the
TensorRT runner and, without TensorRT, fails with that reason instead of passing.

The devices are real sshd devices on loopback in the simulator's ``jetson-without-gpu``
profile: TensorRT 10.3 is registered (so the agent accepts a jetson_orin bundle) but its
libraries are absent, as on any machine without an NVIDIA GPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import RolloutHaltedError
from orchestrator.ship.enroll import enroll
from orchestrator.ship.rollout.engine import start_rollout
from orchestrator.ship.rollout.journal import Journal
from orchestrator.sim.simulator import TENSORRT_STANDIN_GROUP, profile_env
from orchestrator.spec.fleet import load_fleet_file
from orchestrator.spec.strategy import load_rollout_file
from registry.bundle import make_bundle
from registry.keys import KeyStore
from tests.conftest import build_once
from tests.sshd import require_sshd, start_devices, stop_devices, write_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["icu-jetson-1", "icu-jetson-2"]


@pytest.fixture(scope="module")
def jetsons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    require_sshd()
    base = tmp_path_factory.mktemp("jetsons")
    profile = profile_env(base / "profiles", TENSORRT_STANDIN_GROUP)
    devices = start_devices(
        len(NAMES), base / "devices", first_octet=60, names=NAMES, env=dict.fromkeys(NAMES, profile)
    )
    try:
        yield devices
    finally:
        stop_devices(devices)


def test_jetson_rollout_health_check_reaches_the_tensorrt_runner_and_never_passes_without_it(
    jetsons: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = jetsons
    artifact = build_once(["deployment=ct_seg_jetson"], tmp_path / "build")
    runtime = json.loads((artifact / "runtime.json").read_text())
    assert runtime["target"]["runtime"] == "tensorrt"
    monkeypatch.setenv("EDGESHIP_ROLLOUTS", str(tmp_path / "rollouts"))
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    fleet_path = write_fleet(
        tmp_path / "fleet" / "icu.yaml",
        devices,
        {d.name: tmp_path / "roots" / d.name for d in devices},
        known_hosts=tmp_path / "fleet" / "known_hosts",
        family="jetson_orin",
    )
    fleet = load_fleet_file(fleet_path, tmp_path)
    enroll(fleet, fleet.devices, store)
    bundle = make_bundle(artifact, store, tmp_path / "bundles")
    strategy = tmp_path / "all.yaml"
    strategy.write_text("name: all\nstrategy: all_at_once\nfailure_budget: {max_failures: 0}\n")

    with pytest.raises(RolloutHaltedError) as info:
        start_rollout(
            tmp_path,
            fleet,
            str(fleet_path),
            bundle,
            load_rollout_file(strategy),
            "all.yaml",
            store=store,
            record=False,
        )
    report = info.value.report
    assert sorted(report.failed) == sorted(NAMES) and report.succeeded == []

    entries = Journal(report.journal).entries()
    done = {e["device"]: e for e in entries if e["event"] == "device_done"}
    for name in NAMES:
        health = done[name]["health"]
        assert health["result"] == "fail", health
        assert health["runner"] == "tensorrt"
        assert health["reason"].startswith("TensorRT is not installed on this device")
        assert "the engine was not built" in health["reason"]
        engine = health["runtime"]["engine"]
        assert engine["built"] is False
        assert engine["onnx_sha256"] == runtime["model"]["sha256"]  # the runner read the bundle
        # the device records the same result for the version it refused to keep
        state = json.loads((tmp_path / "roots" / name / "state.json").read_text())
        recorded = state["versions"][str(bundle.version)]["health"]
        assert recorded["result"] == "fail" and recorded["runner"] == "tensorrt"
        assert not os.path.islink(tmp_path / "roots" / name / "current")
