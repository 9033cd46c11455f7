"""validate_on=lab on real sshd lab devices: the device's figures, not the build machine's, gate
and rank candidates; nothing installed on the device changes; trace says where each figure
was measured.

The two simulated lab devices run this machine's ONNX Runtime with a simulator profile
(orchestrator/sim/simulator.py, ``lab-slow-int8`` / ``lab-slow-float``) that makes every
inference of one kind of model 50 ms slower there, as a CPU without fast INT8 kernels or an
INT8-only accelerator would. The outputs are the runtime's own.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from orchestrator.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SLOW_MS = 50.0


@pytest.fixture(scope="module")
def lab_devices(tmp_path_factory: pytest.TempPathFactory):
    """Two lab devices: ``lab-int8`` (INT8 models slow) and ``lab-float`` (float models slow)."""
    from orchestrator.sim.simulator import SLOW_FLOAT_GROUP, SLOW_INT8_GROUP, profile_env
    from tests.sshd import require_sshd, start_devices, stop_devices

    require_sshd()
    base = tmp_path_factory.mktemp("lab-devices")
    env = {
        "lab-int8": profile_env(base / "profiles", SLOW_INT8_GROUP),
        "lab-float": profile_env(base / "profiles", SLOW_FLOAT_GROUP),
    }
    devices = start_devices(2, base, first_octet=20, names=["lab-int8", "lab-float"], env=env)
    try:
        yield devices
    finally:
        stop_devices(devices)


@pytest.fixture
def lab(tmp_path: Path, lab_devices: list, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A key store (the CLI's), a fleet file with both devices marked lab, both enrolled."""
    from orchestrator.build import reference
    from orchestrator.ship.enroll import enroll
    from orchestrator.spec.compose import load_option
    from orchestrator.spec.fleet import load_fleet_file
    from registry.keys import KeyStore
    from tests.sshd import write_fleet

    reference.ensure_weights(load_option("model", "posture_cnn", ROOT), ROOT)
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    store = KeyStore()
    store.init()
    roots = {d.name: tmp_path / "devices" / d.name for d in lab_devices}
    fleet_path = write_fleet(
        tmp_path / "fleet" / "lab.yaml",
        lab_devices,
        roots,
        known_hosts=tmp_path / "fleet" / "known_hosts",
        lab=["lab-int8", "lab-float"],
    )
    fleet = load_fleet_file(fleet_path, ROOT)
    enrolled = enroll(fleet, fleet.devices, store)
    assert [o.result for o in enrolled.outcomes] == ["enrolled", "enrolled"]
    return {"fleet": fleet_path, "roots": roots, "artifacts": tmp_path / "artifacts"}


def _untouched(root: Path) -> None:
    """Nothing installed, switched or left behind on a device by a measurement."""
    assert not (root / "current").exists() and not (root / "previous").exists()
    assert not any((root / "versions").iterdir())
    assert list((root / "staging").iterdir()) == []
    state = json.loads((root / "state.json").read_text()) if (root / "state.json").exists() else {}
    assert not state.get("versions")
    events = [json.loads(line)["event"] for line in (root / "log" / "agent.log").open()]
    assert "measured" in events and "activated" not in events


def test_device_figures_fail_a_gate_the_build_machine_passes(
    lab: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    # ort_fp32 is a float model: 50 ms slower per inference on lab-float
    code = main(
        [
            "build",
            "deployment=posture_server",
            "recipe=ort_fp32",
            "validate_on=lab",
            f"validate_on.fleet={lab['fleet']}",
            "validate_on.device=lab-float",
            "deployment.validation.latency_runs=10",
            "--no-record",
        ]
    )
    err = capsys.readouterr().err
    assert code == 4, err
    assert "validate on lab device lab-float" in err
    failed = lab["artifacts"] / ".failed" / "posture_server"
    validation = json.loads((failed / "validation.json").read_text())
    metrics = validation["metrics"]
    assert validation["device_validated"] is True and not validation["passed"]
    on = validation["validated_on"]
    assert (on["device"], on["runtime"], on["family"]) == ("lab-float", "onnxruntime", "server")
    assert on["runtime_version"] and on["python"]
    gate = next(g for g in validation["gates"] if g["gate"].startswith("p95_ms"))
    # the gate judged the device's figure (the injected 50 ms), not the build machine's
    assert gate["value"] == metrics["p95_ms"] >= SLOW_MS and gate["passed"] is False
    assert metrics["build_machine.p95_ms"] < 20  # the same gate passes on the build machine
    machine = validation["details"]["build_machine"]
    assert machine["passed"] is True
    assert next(g for g in machine["gates"] if g["gate"].startswith("p95_ms"))["passed"]
    # parity computed from the device's own outputs on the build machine's evaluation data
    assert metrics["agreement"] == 1.0 and metrics["max_abs_error"] < 1e-4
    assert metrics["device_validated"] == 1.0
    build = json.loads((failed / "build.json").read_text())
    assert build["validated_on"]["device"] == "lab-float" and build["device_validated"] is True
    _untouched(lab["roots"]["lab-float"])


def _select(lab: dict, device: str) -> tuple[str, dict[str, dict[str, str]]]:
    code = main(
        [
            "build",
            "deployment=posture_server",
            "recipe=auto",
            "recipe.candidates=[ort_fp32,ort_int8_dynamic]",
            'deployment.gates=["agreement >= 0.9", "size_mb <= 1"]',
            "validate_on=lab",
            f"validate_on.fleet={lab['fleet']}",
            f"validate_on.device={device}",
            "deployment.validation.latency_runs=10",
            "--no-record",
        ]
    )
    assert code == 0
    art = lab["artifacts"] / "posture_server"
    info = json.loads((art / "build.json").read_text())
    rows = {r["recipe"]: r for r in csv.DictReader((art / "selection" / "comparison.csv").open())}
    assert info["selection"]["measured_on"]["device"] == device
    assert info["validated_on"]["device"] == device
    return info["selection"]["winner"], rows


def test_auto_picks_the_candidate_fastest_on_the_lab_device(
    lab: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    picks = {}
    for device, slowed in (("lab-int8", "ort_int8_dynamic"), ("lab-float", "ort_fp32")):
        winner, rows = _select(lab, device)
        out = capsys.readouterr().out
        assert f"ranked by p50_ms measured on the lab device {device}" in out
        other = next(r for r in rows if r != slowed)
        # the candidate the device slows down loses on the device's p50 whatever the build
        # machine measured for it
        assert float(rows[slowed]["p50_ms"]) >= SLOW_MS > float(rows[other]["p50_ms"])
        assert winner == other and rows[winner]["status"] == "WINNER"
        assert {r["measured_on"] for r in rows.values()} == {device}
        assert all(r["build_machine.p50_ms"] for r in rows.values())
        picks[device] = winner
        _untouched(lab["roots"][device])
    # the same candidates, the same build machine: the lab device decided the pick
    assert picks == {"lab-int8": "ort_fp32", "lab-float": "ort_int8_dynamic"}

    # the winner ships; trace says where each gated figure was measured
    from orchestrator.ship.deploy import deploy
    from orchestrator.spec.fleet import load_fleet_file
    from registry.bundle import make_bundle
    from registry.keys import KeyStore

    store = KeyStore()
    bundles = lab["artifacts"].parent / "bundles"  # where trace looks: beside the artifacts
    bundle = make_bundle(lab["artifacts"] / "posture_server", store, bundles)
    provenance = bundle.manifest["provenance"]["validation"]
    assert provenance["device_validated"] is True
    assert provenance["validated_on"]["device"] == "lab-float"
    fleet = load_fleet_file(lab["fleet"], ROOT)
    assert not deploy(fleet, [fleet.device("lab-int8")], bundle, store).failed
    code = main(["trace", "lab-int8", f"fleet={lab['fleet']}", "--no-mlflow"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "measured on lab device lab-float of fleet lab" in out
    gated = [line for line in out.splitlines() if "(lab device lab-float)" in line]
    beside = [line for line in out.splitlines() if "(build machine, not gated)" in line]
    assert any("agreement >= 0.9" in line for line in gated)
    assert any("agreement >= 0.9" in line for line in beside)


def test_validate_on_lab_without_a_lab_device_is_a_spec_error_before_any_work(
    lab: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "build",
            "deployment=posture_nuc",
            "validate_on=lab",
            f"validate_on.fleet={lab['fleet']}",
            "--no-record",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "deployment.validate_on.fleet" in err and "no lab device of family intel_nuc" in err
    assert not lab["artifacts"].exists() or not any(lab["artifacts"].iterdir())
