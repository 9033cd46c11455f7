"""deploy --dry-run and rollout --dry-run: the plan and the refusals, with nothing touched
(the fleet's addresses are unroutable: a connection attempt would hang the test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import ExitCode
from orchestrator.ship.dry_run import dry_run_deploy, dry_run_rollout
from orchestrator.ship.rollout.lock import DeviceLocks
from orchestrator.ship.rollout.plan import plan_rollout
from registry.bundle import MANIFEST, make_bundle
from registry.keys import KeyStore
from tests.unit.test_bundle import make_artifact
from tests.unit.test_rollout import _fleet, _strategy


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    s = KeyStore(tmp_path / "keys", passphrase=b"")
    s.init()
    return s


@pytest.fixture
def bundle(tmp_path: Path, store: KeyStore):  # type: ignore[no-untyped-def]
    return make_bundle(make_artifact(tmp_path / "artifacts" / "demo"), store, tmp_path / "bundles")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rollout_dry_run_prints_waves_budgets_and_bytes_and_touches_nothing(
    tmp_path: Path, store: KeyStore, bundle
) -> None:  # type: ignore[no-untyped-def]
    fleet = _fleet(tmp_path, 10, nuc=2)
    strategy = _strategy(
        strategy="waves",
        waves=[{"fraction": 0.2}, {"fraction": 1.0}],
        soak_seconds=30,
        failure_budget={"max_fraction": 0.5},
    )
    plan = plan_rollout(fleet, strategy, "server")
    before = _tree(tmp_path)
    run = dry_run_rollout(fleet, plan, bundle, store, tmp_path / "rollouts" / "locks")
    assert _tree(tmp_path) == before  # no lock, journal or file written
    data = run.to_json()
    assert data["would_start"] and run.exit_code == ExitCode.OK
    assert [len(w["devices"]) for w in data["waves"]] == [2, 8]
    assert data["waves"][0]["devices"][0] == {
        "name": "bed-01",
        "address": "10.0.0.1",
        "port": 22,
        "family": "server",
    }
    assert data["waves"][0]["soak_seconds"] == 30
    assert [w["allowed_failures"] for w in data["waves"]] == [1, 4]
    assert set(data["excluded"]) == {"ct-1", "ct-2"}
    size = sum(f["size"] for f in bundle.files()) + (bundle.path / MANIFEST).stat().st_size
    assert data["bundle"]["bytes_per_device"] > size  # files, manifest and signature
    text = "\n".join(run.lines())
    assert "dry run: rollout demo v1" in text and "wave 2 (" in text and "10.0.0.9:22" in text
    assert "left out: ct-1 (target family intel_nuc; the bundle is for server)" in text
    json.dumps(data)  # JSON as printed by --json


def test_deploy_dry_run_reports_a_held_lock_and_a_tampered_bundle(
    tmp_path: Path, store: KeyStore, bundle
) -> None:  # type: ignore[no-untyped-def]
    fleet = _fleet(tmp_path, 3)
    locks = tmp_path / "rollouts" / "locks"
    holder = DeviceLocks(locks, "rollout-running")
    holder.acquire(fleet.devices[1:2])
    try:
        run = dry_run_deploy(fleet.devices, bundle, store, locks)
        assert run.exit_code == ExitCode.LOCKED and not run.to_json()["would_start"]
        assert any(r.startswith("bed-02: locked by rollout rollout-running") for r in run.refusals)
    finally:
        holder.release()

    model = bundle.path / "model" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")  # a changed file keeps its manifest
    manifest = bundle.path / MANIFEST
    manifest.write_text(manifest.read_text().replace('"demo"', '"demo2"', 1))
    run = dry_run_deploy(fleet.devices, bundle, store, locks)
    assert run.exit_code == ExitCode.BUNDLE
    assert any("bad_signature" in r or "changed since" in r for r in run.refusals)
    assert "would be refused before anything is sent:" in run.lines()
