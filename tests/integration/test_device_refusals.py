"""On real sshd devices: every bundle a device must refuse is refused, and the running
version keeps running (same version active, health check still passing)."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.errors import BundleError
from orchestrator.ship.deploy import deploy
from registry.bundle import MANIFEST, SIGNATURE, Bundle, issue_rollback
from registry.keys import KeyStore
from registry.signing import canonical_json, sign
from tests.sshd import ShipLab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rlab(
    tmp_path_factory: pytest.TempPathFactory, ssh_devices: list, built_artifact: Path
) -> Iterator[ShipLab]:
    """dev01 (server) runs a good first version; dev02 is enrolled as an intel_nuc."""
    lab = ShipLab(
        tmp_path_factory.mktemp("refusals"), ssh_devices[:2], built_artifact, {"dev02": "intel_nuc"}
    )
    assert not lab.enroll().failed
    first = lab.bundle()
    assert lab.deploy(first, ["dev01"]).outcomes[0].result == "activated"
    yield lab


def _assert_refused_and_still_running(
    lab: ShipLab, before: dict, answer: dict, code: str, device: str
) -> None:
    assert answer["refusal"] == code, answer
    after = lab.status(device)
    assert after["current"] == before["current"]
    assert after["installed"] == before["installed"]
    entry = [e for e in lab.log(device) if e["event"] == "refused"][-1]
    assert entry["refusal"] == code
    if before["current"] is not None:
        health = lab.agent(device, "health")
        assert health.code == 0 and health.json()["version"] == before["current"]


def host_refuses(lab: ShipLab, bundle: Bundle, device: str = "dev01") -> str:
    """Deploy with the key store: this host refuses the bundle before anything is sent."""
    before = sorted(p.name for p in (lab.roots[device] / "staging").iterdir())
    with pytest.raises(BundleError) as caught:
        deploy(lab.fleet, lab.select([device]), bundle, lab.store)
    assert sorted(p.name for p in (lab.roots[device] / "staging").iterdir()) == before
    return str(caught.value)


def deploy_refused(
    lab: ShipLab, bundle: Bundle, code: str, device: str = "dev01", signed_badly: bool = False
) -> str:
    """Deploy: the device refuses with ``code`` and keeps running; returns the message.

    ``signed_badly``: this host refuses it first (signature checked before anything is
    sent); the device's own refusal is then shown with a deploy that has no key store.
    """
    if signed_badly:
        assert "signature" in host_refuses(lab, bundle, device)
    before = lab.status(device)
    result = lab.deploy(bundle, [device], store=None if signed_badly else ...)
    outcome = result.outcomes[0]
    assert result.failed == [outcome]
    assert outcome.result == "refused", outcome.summary()
    _assert_refused_and_still_running(lab, before, outcome.agent or {}, code, device)
    return outcome.message


def staged_then_refused(lab: ShipLab, bundle: Bundle, tamper: Callable, code: str) -> str:
    """Stage on the device, change the staged copy there, then activate: refused with ``code``."""
    before = lab.status("dev01")
    staged = lab.deploy(bundle, ["dev01"], stage_only=True).outcomes[0]
    assert staged.result == "staged"
    with lab.session("dev01") as s:
        tamper(s, staged.staged_at)
        res = s.agent(f"activate {staged.staged_at}")
    assert res.code == 10, res.stdout
    answer = res.json()
    _assert_refused_and_still_running(lab, before, answer, code, "dev01")
    return str(answer["message"])


def _copy_bundle(bundle: Bundle, dest: Path) -> Path:
    shutil.copytree(bundle.path, dest)
    return dest


@pytest.mark.parametrize("how", ["edited_manifest", "corrupted_signature"])
def test_bad_signature_is_refused(rlab: ShipLab, how: str) -> None:
    bundle = rlab.bundle()
    manifest = bundle.path / MANIFEST
    if how == "edited_manifest":
        data = json.loads(manifest.read_text())
        data["expires_at"] = "2099-01-01T00:00:00Z"
        manifest.write_bytes(canonical_json(data))
    else:
        sig = bytearray((bundle.path / SIGNATURE).read_bytes())
        sig[10] ^= 0xFF
        (bundle.path / SIGNATURE).write_bytes(bytes(sig))
    message = deploy_refused(rlab, Bundle.open(bundle.path), "bad_signature", signed_badly=True)
    assert "does not verify" in message


def test_missing_signature_is_refused(rlab: ShipLab) -> None:
    bundle = rlab.bundle()
    (bundle.path / SIGNATURE).unlink()
    message = deploy_refused(rlab, bundle, "missing_signature", signed_badly=True)
    assert "manifest.json.sig is missing" in message


def test_bundle_signed_by_untrusted_key_is_refused(rlab: ShipLab, tmp_path: Path) -> None:
    other = KeyStore(tmp_path / "someone-elses-keys", passphrase=b"")
    other.init()
    bundle = rlab.bundle(store=other)
    assert "does not trust" in deploy_refused(rlab, bundle, "untrusted_key", signed_badly=True)


def test_tampered_file_is_refused(rlab: ShipLab) -> None:
    def tamper(s, folder: str) -> None:
        model = f"{folder}/model/model.onnx"
        data = bytearray(s.sftp().open(model).read())
        data[len(data) // 2] ^= 0x01
        s.sftp().remove(model)  # a new file: the staged one may be a hard link to an installed one
        s.sftp().putfo(io.BytesIO(bytes(data)), model)

    message = staged_then_refused(rlab, rlab.bundle(), tamper, "hash_mismatch")
    assert "model/model.onnx" in message


def test_file_not_in_manifest_is_refused(rlab: ShipLab) -> None:
    def add(s, folder: str) -> None:
        s.sftp().putfo(io.BytesIO(b"\x00" * 64), f"{folder}/model/extra.bin")

    message = staged_then_refused(rlab, rlab.bundle(), add, "unlisted_file")
    assert message == "file not in the manifest: model/extra.bin"


def test_bundle_for_another_target_family_is_refused(rlab: ShipLab) -> None:
    message = deploy_refused(rlab, rlab.bundle(), "wrong_family", device="dev02")
    assert message == "bundle is for target family 'server'; this device is 'intel_nuc'"


def test_lower_version_is_refused_unless_a_signed_rollback_names_it(rlab: ShipLab) -> None:
    older = rlab.bundle()
    newer = rlab.bundle()
    assert rlab.deploy(newer, ["dev01"]).outcomes[0].result == "activated"

    message = deploy_refused(rlab, older, "downgrade")
    assert f"version {older.version} is lower than the active version {newer.version}" in message

    issue_rollback(older, rlab.store, from_version=newer.version, fleet=rlab.fleet.name)
    outcome = rlab.deploy(older, ["dev01"]).outcomes[0]
    assert outcome.result == "activated" and outcome.version == older.version
    assert rlab.status("dev01")["current"] == older.version


def test_same_version_with_another_manifest_is_refused(rlab: ShipLab, tmp_path: Path) -> None:
    current = rlab.status("dev01")["current"]
    installed = Bundle.open(rlab.bundles / "posture_server" / str(current))
    twin = _copy_bundle(installed, tmp_path / "twin")
    data = json.loads((twin / MANIFEST).read_text())
    data["created_at"] = "2020-01-01T00:00:00Z"
    payload = canonical_json(data)
    (twin / MANIFEST).write_bytes(payload)
    (twin / SIGNATURE).write_bytes(sign(rlab.store.signing_key()[1], payload))
    deploy_refused(rlab, Bundle.open(twin), "version_conflict")


def test_expired_manifest_is_refused(rlab: ShipLab) -> None:
    bundle = rlab.bundle(now=datetime.now(UTC) - timedelta(days=10), valid_days=1)
    assert "manifest expired at" in deploy_refused(rlab, bundle, "expired")


def test_runtime_the_device_lacks_is_refused(rlab: ShipLab, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(rlab.artifact, artifact)
    runtime = json.loads((artifact / "runtime.json").read_text())
    runtime["runtime_requirement"] = ">=99"
    (artifact / "runtime.json").write_text(json.dumps(runtime))
    message = deploy_refused(rlab, rlab.bundle(artifact), "runtime_version")
    assert "needs onnxruntime >=99" in message


def test_bundle_signed_by_revoked_key_is_refused(lab: ShipLab) -> None:
    assert not lab.enroll(["dev03"]).failed
    first = lab.bundle()
    assert lab.deploy(first, ["dev03"]).outcomes[0].result == "activated"
    signed_by_old = lab.bundle()
    old_key = signed_by_old.key_id
    lab.store.rotate()
    lab.store.revoke(old_key)

    # this host refuses it; once enrolment brings the device's root of trust up to date, the
    # agent refuses it too
    assert "signature" in host_refuses(lab, signed_by_old, "dev03")
    lab.enroll(["dev03"])
    deploy_refused(lab, signed_by_old, "untrusted_key", device="dev03", signed_badly=True)
    trust = lab.status("dev03")["trust"]
    assert trust["serial"] == 3 and old_key not in trust["keys"]
    fresh = lab.bundle()
    assert fresh.key_id != old_key
    assert lab.deploy(fresh, ["dev03"]).outcomes[0].result == "activated"
