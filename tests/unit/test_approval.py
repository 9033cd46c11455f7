"""Approvals: people in the root of trust, signed approvals, fleet requirements, and the
device agent's own check (the agent zipapp run locally with the real openssl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import ApprovalError, KeyStoreError, SpecError
from orchestrator.project import os_user
from orchestrator.spec.fleet import load_fleet_file
from registry.approval import approval_problem, approve, read_approval
from registry.bundle import Bundle, make_bundle
from registry.keys import KeyStore
from registry.signing import canonical_json
from tests.unit.test_bundle import make_artifact
from tests.unit.test_bundle_agent import _runner, agent_program  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
needs_openssl = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("sha256sum")), reason="needs openssl, sha256sum"
)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    s = KeyStore(tmp_path / "keys", passphrase=b"")
    s.init(root_keys=1, threshold=1)
    s.add_person("alice", ["approver"])
    s.add_person("bob", ["builder"])
    return s


@pytest.fixture
def bundle(tmp_path: Path, store: KeyStore) -> Bundle:
    return make_bundle(make_artifact(tmp_path / "a" / "demo"), store, tmp_path / "bundles")


def test_people_are_named_in_the_root_with_roles_and_their_own_keys(store: KeyStore) -> None:
    trust = store.trust()
    assert trust.serial == 3
    names = {e["name"]: (kid, e["roles"]) for kid, e in trust.people.items()}
    assert names["alice"][1] == ["approver"] and names["bob"][1] == ["builder"]
    kid, entry, private = store.person_key("alice")
    assert entry["name"] == "alice" and private.public_key() is not None
    assert kid == names["alice"][0] and kid in trust.root.signed.keys
    assert kid not in trust.keys  # a person's key never signs bundles
    statuses = {k.key_id: k.status for k in store.list_keys()}
    assert statuses[kid] == "person alice (approver)"
    with pytest.raises(KeyStoreError, match="already names a person 'alice'"):
        store.add_person("alice", ["approver"])
    with pytest.raises(KeyStoreError, match="--role: expected one or more of"):
        store.add_person("carol", ["boss"])
    with pytest.raises(KeyStoreError, match="names no person 'carol'"):
        store.person_key("carol")


def test_a_removed_approver_no_longer_approves(store: KeyStore, bundle: Bundle) -> None:
    approve(bundle, store, "alice", "gates pass")
    assert approval_problem(bundle.path, bundle.manifest, store.trust()) is None
    kid = store.person_key("alice")[0]
    change = store.remove_person("alice")
    trust = store.trust()
    assert change.published and change.version == trust.serial and trust.person("alice") is None
    assert kid not in trust.root.signed.keys and kid not in trust.people
    assert "bob" in {e["name"] for e in trust.people.values()}
    why = approval_problem(bundle.path, bundle.manifest, trust)
    assert why is not None and "does not verify with the key of any approver" in why
    with pytest.raises(KeyStoreError, match="names no person 'alice' \\(people: bob\\)"):
        store.remove_person("alice")


def test_publishing_to_a_phone_fleet_that_requires_approval_refuses_an_unapproved_bundle(
    store: KeyStore, bundle: Bundle, tmp_path: Path
) -> None:
    from orchestrator.errors import ApprovalError
    from orchestrator.ship.feed import publish
    from orchestrator.spec.fleet import FeedConfig, FleetConfig

    fleet = FleetConfig(
        name="phones",
        known_hosts=str(tmp_path / "known_hosts"),
        requires=["approved"],
        # no host answers here: a refusal must come before any connection
        feed=FeedConfig(host="127.0.0.1", port=1, path="/srv/feed", base_url="http://x/"),
    )
    with pytest.raises(ApprovalError, match=r"fleet phones requires .* refused before anything"):
        publish(fleet, bundle, "beta", 1.0, store)


def test_approval_is_signed_by_the_approver_and_names_the_bundle(
    store: KeyStore, bundle: Bundle
) -> None:
    trust = store.trust()
    assert "no approval" in str(approval_problem(bundle.path, bundle.manifest, trust))
    doc = approve(bundle, store, "alice", "gates pass; reviewed the data change")
    assert read_approval(bundle.path) == doc
    assert doc["approver"]["name"] == "alice" and doc["manifest_sha256"] == bundle.digest
    assert approval_problem(bundle.path, bundle.manifest, trust) is None
    # an altered comment breaks the signature
    altered = dict(doc, comment="something else")
    (bundle.path / "approval.json").write_bytes(canonical_json(altered))
    why = approval_problem(bundle.path, bundle.manifest, trust)
    assert why is not None and "does not verify with the key of any approver" in why


def test_only_approvers_approve_and_only_with_a_comment(store: KeyStore, bundle: Bundle) -> None:
    with pytest.raises(ApprovalError, match="expected a person with the approver role"):
        approve(bundle, store, "bob", "fine")
    with pytest.raises(ApprovalError, match="--comment"):
        approve(bundle, store, "alice", "  ")
    assert not (bundle.path / "approval.json").exists()


def test_an_approval_of_another_bundle_does_not_approve_this_one(
    tmp_path: Path, store: KeyStore, bundle: Bundle
) -> None:
    approve(bundle, store, "alice", "v1 ok")
    second = make_bundle(make_artifact(tmp_path / "b" / "demo"), store, tmp_path / "bundles")
    for name in ("approval.json", "approval.json.sig"):
        shutil.copy(bundle.path / name, second.path / name)
    why = approval_problem(second.path, second.manifest, store.trust())
    assert why is not None and "the approval names demo version 1" in why


def test_two_person_rule_refuses_the_bundler_as_approver(store: KeyStore, bundle: Bundle) -> None:
    me = os_user()
    assert bundle.manifest["provenance"]["bundled_by"]["user"] == me
    store.add_person(me, ["approver"])
    approve(bundle, store, me, "my own bundle")
    trust = store.trust()
    assert approval_problem(bundle.path, bundle.manifest, trust, two_person=False) is None
    why = approval_problem(bundle.path, bundle.manifest, trust, two_person=True)
    assert why is not None and f"approved by {me}, who also bundled it" in why
    approve(bundle, store, "alice", "second person")
    assert approval_problem(bundle.path, bundle.manifest, store.trust(), two_person=True) is None


def _fleet(tmp_path: Path, **extra: object) -> Path:
    data = yaml.safe_load((ROOT / "conf" / "fleet" / "ward_north.yaml").read_text())
    data.update(extra)
    path = tmp_path / "ward_north.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_fleet_requires_is_checked_strictly(tmp_path: Path) -> None:
    fleet = load_fleet_file(_fleet(tmp_path, requires=["approved"], two_person=True), ROOT)
    assert (fleet.requires, fleet.two_person) == (["approved"], True)
    assert load_fleet_file(_fleet(tmp_path), ROOT).requires == []
    with pytest.raises(SpecError) as err:
        load_fleet_file(_fleet(tmp_path, requires=["aproved"]), ROOT)
    assert "ward_north.yaml: requires[0]: expected one of approved, found 'aproved'" in str(
        err.value
    )
    with pytest.raises(SpecError) as err:
        load_fleet_file(_fleet(tmp_path, requires="approved"), ROOT)
    assert "requires: expected a list of str, found str 'approved'" in str(err.value)
    with pytest.raises(SpecError) as err:
        load_fleet_file(_fleet(tmp_path, two_person="yes please"), ROOT)
    assert "two_person" in str(err.value)


@needs_openssl
def test_device_refuses_an_unapproved_bundle_when_its_root_requires_approval(
    agent_program: Path,  # noqa: F811
    tmp_path: Path,
    store: KeyStore,
    bundle: Bundle,
) -> None:
    store.set_fleet_policy("ward_north", ["approved"], two_person=True)
    trust = tmp_path / "root.json"
    trust.write_bytes(store.trust_files())
    run = _runner(agent_program, tmp_path / "device")
    init = ("init", "--name", "d1", "--family", "server", "--trust", str(trust))
    assert run(*init, "--fleet", "ward_north")[0] == 0

    code, answer = run("verify", "--manifest-only", str(bundle.path))
    assert (code, answer["refusal"]) == (10, "not_approved"), answer
    assert "fleet ward_north requires an approved bundle" in answer["message"]

    me = os_user()
    store.add_person(me, ["approver"])  # root version 5: the device must take it first
    approve(bundle, store, me, "approving my own bundle")
    code, answer = run("verify", "--manifest-only", str(bundle.path))
    assert (code, answer["refusal"]) == (10, "not_approved"), answer  # key unknown to the device
    trust.write_bytes(store.trust_files())
    assert run("update-trust", str(trust))[0] == 0
    code, answer = run("verify", "--manifest-only", str(bundle.path))
    assert (code, answer["refusal"]) == (10, "two_person"), answer

    approve(bundle, store, "alice", "reviewed")
    code, answer = run("verify", str(bundle.path))
    assert code == 0 and answer["manifest_sha256"] == bundle.digest, answer

    # another fleet's device, no requirement in the root for it: no approval needed
    (bundle.path / "approval.json").unlink()
    other = _runner(agent_program, tmp_path / "device2")
    assert other(*init, "--fleet", "ward_south")[0] == 0
    assert other("verify", str(bundle.path))[0] == 0
    log_file = tmp_path / "device" / "log" / "agent.log"
    log = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert any(e.get("event") == "refused" for e in log)


def _versioned(tmp_path: Path, store: KeyStore, name: str, spec: dict, data: dict) -> Bundle:
    artifact = make_artifact(tmp_path / name / "demo")
    (artifact / "spec.yaml").write_text(yaml.safe_dump(spec))
    validation = json.loads((artifact / "validation.json").read_text())
    validation["data"] |= data
    (artifact / "validation.json").write_text(json.dumps(validation))
    return make_bundle(artifact, store, tmp_path / "bundles")


def test_changes_against_the_last_approved_version_are_judged_by_its_plan(
    tmp_path: Path, store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.ship.bundling import approve_bundle
    from orchestrator.ship.changes import compare

    monkeypatch.setenv("EDGESHIP_BUNDLES", str(tmp_path / "bundles"))
    plan = {"covers": ["recipe", "data"], "gates": ["agreement >= 0.95"], "approvers": ["alice"]}
    spec = {
        "deployment": {"name": "demo", "gates": ["agreement >= 0.95"], "change_plan": plan},
        "recipe": {"name": "ort_int8_dynamic"},
        "model": {"name": "m"},
    }
    _versioned(tmp_path, store, "v1", spec, {})
    assert compare(tmp_path, "demo", 1).base is None  # nothing approved before: full review
    approve_bundle(tmp_path, "demo", 1, store, "alice", "first release", record=False)

    recipe = spec | {"recipe": {"name": "ort_fp32"}}
    _versioned(tmp_path, store, "v2", recipe, {"train_data_sha256": "t" * 64})
    report = compare(tmp_path, "demo", 2)
    assert report.base == 1 and report.kinds == ["data", "recipe"] and report.within_plan
    assert any("recipe.name: ort_int8_dynamic -> ort_fp32" in line for line in report.lines())
    with pytest.raises(ApprovalError, match="the change plan names the approvers alice"):
        approve_bundle(tmp_path, "demo", 2, store, "bob", "not mine", record=False)
    _, doc, _ = approve_bundle(tmp_path, "demo", 2, store, "alice", "recipe only", record=False)
    assert doc["changes"] == {
        "against_version": 1,
        "kinds": ["data", "recipe"],
        "within_plan": True,
        "outside_plan_accepted": False,
    }

    weights = recipe | {"model": {"name": "m", "source": {"weights": "other.pt"}}}
    _versioned(tmp_path, store, "v3", weights, {"weights_sha256": "x" * 64})
    report = compare(tmp_path, "demo", 3)
    assert report.base == 2 and "weights" in report.kinds and not report.within_plan
    assert report.problems == ["changes of kind weights; the plan covers recipe, data"]
    with pytest.raises(ApprovalError, match="outside its change plan") as err:
        approve_bundle(tmp_path, "demo", 3, store, "alice", "new weights", record=False)
    assert "weights  model.source.weights: - -> other.pt" in str(err.value)
    _, doc, _ = approve_bundle(
        tmp_path, "demo", 3, store, "alice", "reviewed the weights", outside_plan=True, record=False
    )
    assert doc["changes"]["outside_plan_accepted"] is True
    v3 = Bundle.open(tmp_path / "bundles" / "demo" / "3")
    assert approval_problem(v3.path, v3.manifest, store.trust()) is None


def test_change_plan_names_known_kinds_and_the_deployment_gates() -> None:
    from orchestrator.spec.rules import check_change_plan

    found: list[tuple[str, str]] = []
    spec = {
        "deployment": {
            "gates": ["agreement >= 0.95"],
            "change_plan": {"covers": ["recipe", "weigths"], "gates": ["p95_ms <= 20"]},
        }
    }
    check_change_plan(spec, lambda key, message: found.append((key, message)))
    assert found == [
        (
            "deployment.change_plan.covers[1]",
            "expected one of recipe, data, weights, model, target, gates, code, found 'weigths'",
        ),
        (
            "deployment.change_plan.gates[0]",
            "expected one of the deployment's gates (agreement >= 0.95), found 'p95_ms <= 20'",
        ),
    ]
