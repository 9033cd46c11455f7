"""On real sshd devices: a good bundle activates and passes its health check; a bad model
rolls back by itself; activation is idempotent, deduplicated and survives a crash at every step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.sshd import ShipLab

pytestmark = pytest.mark.integration


def _steps() -> tuple[str, ...]:
    from orchestrator.device.agent.activate import ACTIVATION_STEPS

    return tuple(ACTIVATION_STEPS)


def test_deploy_good_bundle_activates_and_passes_health_check(lab: ShipLab) -> None:
    enrolled = lab.enroll(["dev01", "dev02"])
    assert [o.result for o in enrolled.outcomes] == ["enrolled", "enrolled"]
    assert (Path(lab.fleet.known_hosts)).read_text().count("ssh-ed25519") == 2
    bundle = lab.bundle()

    result = lab.deploy(bundle, ["dev01", "dev02"])

    assert not result.failed, [o.summary() for o in result.outcomes]
    for outcome in result.outcomes:
        assert outcome.result == "activated" and outcome.version == bundle.version
        assert outcome.health and outcome.health["result"] == "pass"
        assert outcome.health["runtime"]["name"] == "onnxruntime"
        assert outcome.health["latency_ms"] > 0
        assert outcome.files_sent == len(bundle.files())
        root = lab.roots[outcome.device]
        assert (root / "current").resolve() == (root / "versions" / str(bundle.version)).resolve()
        status = lab.status(outcome.device)
        assert status["current"] == bundle.version and status["deployment"] == "posture_server"
        assert status["versions"][str(bundle.version)]["manifest_sha256"] == bundle.digest
        events = [e["event"] for e in lab.log(outcome.device)]
        assert "enrolled" in events and "activated" in events and "healthy" in events


def test_deploy_second_version_sends_only_missing_files_and_keeps_previous(lab: ShipLab) -> None:
    lab.enroll(["dev01"])
    first = lab.bundle()
    assert lab.deploy(first, ["dev01"]).outcomes[0].result == "activated"
    second = lab.bundle()

    outcome = lab.deploy(second, ["dev01"]).outcomes[0]

    assert outcome.result == "activated" and outcome.version == second.version
    assert outcome.bytes_sent == 0 and outcome.files_linked == len(second.files())
    status = lab.status("dev01")
    assert (status["current"], status["previous"]) == (second.version, first.version)
    # copied on the device, never hard-linked: no write can reach the installed version
    root = lab.roots["dev01"]
    a = (root / "versions" / str(first.version) / "model" / "model.onnx").stat()
    b = (root / "versions" / str(second.version) / "model" / "model.onnx").stat()
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1
    assert (a.st_mode & 0o777, b.st_mode & 0o777) == (0o444, 0o444)
    assert (root / "versions" / str(second.version) / "model").stat().st_mode & 0o777 == 0o555

    again = lab.deploy(second, ["dev01"]).outcomes[0]
    assert again.result == "unchanged" and again.version == second.version
    # the agent itself treats the same version and manifest as a no-op too
    tarball = lab.base / "again.tar"
    from registry.bundle import export_bundle

    export_bundle(second, tarball)
    with lab.session("dev01") as s:
        s.sftp().put(str(tarball), f"{s.root}/again.tar")
        res = s.agent(f"activate {s.root}/again.tar")
    assert res.code == 0 and res.json()["result"] == "unchanged"


def _broken_artifact(lab: ShipLab) -> Path:
    """The artifact with its expected smoke output perturbed: the model 'gives wrong outputs'."""
    broken = lab.base / "broken-artifact"
    shutil.copytree(lab.artifact, broken)
    expected = broken / "smoke" / "expected.npz"
    with np.load(expected) as npz:
        arrays = {k: npz[k] + 10.0 for k in npz.files}
    np.savez(expected, **arrays)
    return broken


def test_health_check_failure_rolls_back_by_itself(lab: ShipLab) -> None:
    lab.enroll(["dev01"])
    good = lab.bundle()
    assert lab.deploy(good, ["dev01"]).outcomes[0].result == "activated"
    bad = lab.bundle(_broken_artifact(lab))

    outcome = lab.deploy(bad, ["dev01"]).outcomes[0]

    assert outcome.result == "rolled_back", outcome.summary()
    assert outcome.version == good.version
    assert outcome.health and outcome.health["result"] == "fail"
    assert "max |diff|" in outcome.health["reason"]
    status = lab.status("dev01")
    assert status["current"] == good.version and bad.version in status["failed"]
    assert lab.agent("dev01", "health").code == 0
    events = [(e["event"], e.get("version")) for e in lab.log("dev01")]
    assert ("unhealthy", bad.version) in events and ("rolled_back", good.version) in events


def test_rollback_on_command_and_to_a_named_version(lab: ShipLab) -> None:
    lab.enroll(["dev01"])
    versions = [lab.bundle() for _ in range(3)]
    for b in versions:
        assert lab.deploy(b, ["dev01"]).outcomes[0].result == "activated"
    v1, v2, v3 = (b.version for b in versions)

    back = lab.agent("dev01", "rollback")
    assert back.code == 0 and back.json()["version"] == v2
    assert lab.status("dev01")["previous"] == v1
    to = lab.agent("dev01", f"rollback --to {v1}")
    assert to.code == 0 and to.json()["version"] == v1
    assert lab.status("dev01")["current"] == v1
    again = lab.agent("dev01", f"rollback --to {v1}")
    assert again.code == 0 and again.json()["result"] == "unchanged"
    # nothing older than v1 to go back to
    nothing = lab.agent("dev01", "rollback")
    assert nothing.code == 13 and lab.status("dev01")["current"] == v1
    # a newer version may be deployed again after an operator's rollback
    assert lab.deploy(versions[2], ["dev01"]).outcomes[0].version == v3


def _put_tar(lab: ShipLab, session, bundle) -> str:
    """Copy a bundle onto the device as one exported file (outside staging/, so it stays)."""
    from registry.bundle import export_bundle

    tar = export_bundle(bundle, lab.base / "tars" / f"{bundle.version}.tar")
    remote = f"{session.root}/incoming-{bundle.version}.tar"
    session.sftp().put(str(tar), remote)
    return remote


def test_activation_interrupted_at_every_step_leaves_a_working_version(lab: ShipLab) -> None:
    lab.enroll(["dev01"])
    first = lab.bundle()
    assert lab.deploy(first, ["dev01"]).outcomes[0].result == "activated"
    root = lab.roots["dev01"]
    before = first.version
    with lab.session("dev01") as s:
        for step in _steps():
            bundle = lab.bundle()
            incoming = _put_tar(lab, s, bundle)

            crashed = s.agent(f"activate {incoming}", env={"EDGESHIP_AGENT_CRASH_AT": step})

            assert crashed.code == 99, (step, crashed)
            # right after the crash: a complete version is current, and it is healthy
            health = s.agent("health")
            assert health.code == 0, (step, health.stdout)
            current = health.json()["version"]
            assert current in (before, bundle.version), step
            version_dir = root / "versions" / str(current)
            assert (root / "current").resolve() == version_dir.resolve(), step
            assert (version_dir / "manifest.json").is_file(), step
            assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".")], step
            assert not [p for p in root.iterdir() if ".tmp-" in p.name], step
            before = current

        # interrupted right after the switch, then activated again: the pending health
        # check runs and the activation completes (activation is idempotent)
        bundle = lab.bundle()
        incoming = _put_tar(lab, s, bundle)
        crash = s.agent(f"activate {incoming}", env={"EDGESHIP_AGENT_CRASH_AT": "current_switched"})
        assert crash.code == 99
        assert s.agent("status").json()["pending_health"] == bundle.version
        done = s.agent(f"activate {incoming}")
        assert done.code == 0 and done.json()["result"] == "activated", done.stdout
        assert done.json()["health"]["result"] == "pass"
        final = s.agent("status").json()
        assert final["current"] == bundle.version and final["pending_health"] is None
    crashes = [e["step"] for e in lab.log("dev01") if e["event"] == "crash_injected"]
    assert crashes == [*_steps(), "current_switched"]


def test_air_gapped_export_installs_with_the_agent_alone(lab: ShipLab) -> None:
    from registry.bundle import export_bundle

    lab.enroll(["dev02"])
    lab.store.rotate()  # the device never saw the new key: the file carries the root versions too
    bundle = lab.bundle()
    tarball = export_bundle(
        bundle, lab.base / "usb" / "posture_server.tar", lab.store.trust_chain(0)
    )

    with lab.session("dev02") as s:
        # carried over on removable media: a plain copy, no edgeship on this side
        s.sftp().put(str(tarball), f"{s.root}/posture_server.tar")
        before = s.agent(f"verify {s.root}/posture_server.tar")  # verify changes no trust
        assert before.code == 10 and before.json()["refusal"] == "untrusted_key"
        res = s.agent(f"activate {s.root}/posture_server.tar")
        verified = s.agent(f"verify {s.root}/posture_server.tar")
        assert verified.code == 0, verified.stdout
        assert verified.json()["version"] == bundle.version
    answer = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.code == 0 and answer["result"] == "activated"
    assert answer["health"]["result"] == "pass"
    status = lab.status("dev02")
    assert status["current"] == bundle.version and status["trust"]["serial"] == 2
    assert not any((lab.roots["dev02"] / "staging").iterdir())
