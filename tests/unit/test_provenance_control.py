"""Provenance a reviewer can rely on: a build from a dirty tree is bundled only when asked
(and says so), the trace's verdict names every warning, and the training data a spec names
is hashed like the evaluation data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import BundleError
from orchestrator.project import os_user
from orchestrator.ship.trace import Check, Trace, render_html
from registry.bundle import Ledger, make_bundle
from registry.keys import KeyStore
from tests.unit.test_bundle import make_artifact

ROOT = Path(__file__).resolve().parents[2]


def _dirty(folder: Path) -> Path:
    artifact = make_artifact(folder)
    build = json.loads((artifact / "build.json").read_text())
    build["git"] = {"commit": "abc123", "dirty": True, "changes": ["model.py"]}
    build["built_by"] = "bob"
    (artifact / "build.json").write_text(json.dumps(build))
    return artifact


def test_a_dirty_build_is_bundled_only_with_allow_dirty_and_says_so(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init(root_keys=1, threshold=1)
    artifact = _dirty(tmp_path / "a" / "demo")
    with pytest.raises(BundleError) as err:
        make_bundle(artifact, store, tmp_path / "bundles")
    text = str(err.value)
    assert "build.json: git.dirty: expected a build from a clean tree" in text
    assert "(model.py)" in text and "--allow-dirty" in text
    assert not (tmp_path / "bundles" / "demo" / "1").exists()

    bundle = make_bundle(artifact, store, tmp_path / "bundles", allow_dirty=True)
    prov = bundle.manifest["provenance"]
    assert prov["allow_dirty"] is True and prov["built_by"] == "bob"
    assert prov["bundled_by"] == {"user": os_user(), "key_id": store.signing_key()[0]}
    issued = Ledger(tmp_path / "bundles" / "demo", "demo").read()["issued"]
    assert issued[0]["allow_dirty"] is True

    clean = make_bundle(make_artifact(tmp_path / "b" / "demo"), store, tmp_path / "bundles")
    assert "allow_dirty" not in clean.manifest["provenance"]


def _trace(provenance: dict, ok: bool = True) -> Trace:
    return Trace(
        device={"name": "d", "fleet": "f", "labels": {}, "groups": []},
        running={"deployment": "demo", "version": 1, "installed": [1]},
        bundle={"manifest_sha256": "ab" * 32},
        provenance=provenance,
        mlflow={},
        rollouts=[],
        checks=[Check("signature", ok, "detail")],
    )


def test_trace_verdict_names_every_warning_and_never_says_all_holds_with_one() -> None:
    clean = render_html(_trace({"git": {"commit": "c", "dirty": False}}))
    assert "Every link that could be checked holds." in clean
    dirty = _trace({"git": {"dirty": True, "changes": ["a.py"]}, "allow_dirty": True})
    assert dirty.ok and len(dirty.warnings) == 2
    page = render_html(dirty)
    assert "Every link that could be checked holds." not in page
    assert "holds, with 2 warning(s):" in page
    assert "built from a git tree with uncommitted changes (a.py)" in page
    assert '<li class="bad">bundled with --allow-dirty' in page
    assert dirty.to_json()["warnings"] == dirty.warnings
    broken = render_html(_trace({}, ok=False))
    assert "does NOT hold" in broken


def test_training_data_the_spec_names_is_hashed_like_the_eval_data() -> None:
    from orchestrator.build import reference
    from orchestrator.spec.compose import load_option

    model = load_option("model", "posture_cnn", ROOT)
    train = reference.load_train(model)
    evaluation = reference.load_eval(model)
    assert train is not None and len(train) == 40
    assert train.sha256 != evaluation.sha256 and len(train.sha256) == 64
    assert reference.load_train(model).sha256 == train.sha256  # the same data, the same hash
    assert reference.load_train(load_option("model", "ct_seg", ROOT)) is None


def test_audit_html_names_people_approval_where_it_runs_and_incidents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from orchestrator.ship.audit import audit, render_html
    from orchestrator.ship.bundling import approve_bundle
    from orchestrator.ship.rollout.journal import Journal

    monkeypatch.setenv("EDGESHIP_BUNDLES", str(tmp_path / "bundles"))
    monkeypatch.setenv("EDGESHIP_ROLLOUTS", str(tmp_path / "rollouts"))
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init(root_keys=1, threshold=1)
    store.add_person("alice", ["approver"])
    artifact = make_artifact(tmp_path / "a" / "demo")
    spec = {"deployment": {"description": "Demo <b>server</b>"}, "model": {"task": "detect"}}
    (artifact / "spec.yaml").write_text(yaml.safe_dump(spec))
    bundle = make_bundle(artifact, store, tmp_path / "bundles")

    unapproved = audit(tmp_path, "demo", 1, store)
    assert unapproved.warnings == ["approval: not approved"]
    assert "no approval recorded" in render_html(unapproved)

    approve_bundle(tmp_path, "demo", 1, store, "alice", "ok to ship", record=False)

    def rollout(rollout_id: str, results: dict[str, tuple[str, bool]], status: str) -> None:
        journal = Journal.create(tmp_path / "rollouts", rollout_id)
        journal.append(
            "rollout_started",
            id=rollout_id,
            deployment="demo",
            bundle={"version": 1, "digest": bundle.digest},
            fleet={"name": "north"},
            strategy={"name": "canary"},
            operator={"user": "carol", "host": "ops-1", "key_id": "k1"},
        )
        for device, (result, ok) in results.items():
            journal.append(
                "device_done", device=device, result=result, ok=ok, version=1, message="why"
            )
        journal.append("rollout_finished", status=status)

    rollout("r1", {"d1": ("activated", True), "d2": ("rolled_back", False)}, "halted")
    doc = audit(tmp_path, "demo", 1, store)
    assert doc.warnings == [] and doc.approval["ok"] is True
    assert [d["device"] for d in doc.devices] == ["north/d1"]
    assert [(i["kind"], i["where"]) for i in doc.incidents] == [
        ("rollout halted", "fleet north"),
        ("rolled_back", "north/d2"),
    ]
    page = render_html(doc)
    assert "<b>alice</b> (approver)" in page and "&ldquo;ok to ship&rdquo;" in page
    assert "carol@ops-1" in page and "north/d1" in page
    assert "Demo &lt;b&gt;server&lt;/b&gt;" in page  # escaped, like every value
    assert "Signed, approved, and built from a clean tree" in page
