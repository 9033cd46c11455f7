"""Attacks on the update path, forged and tried on real sshd devices: every one is refused
before anything is written, nothing lands outside the install root, no staging is left
behind, and the running version keeps running and passing its health check.

Each attack is tried twice: through ``edgeship deploy`` (this host must refuse before it
sends a byte or creates a folder) and straight at the device's agent with the forged
bundle staged over SFTP (the agent must refuse it by itself).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.errors import BundleError
from orchestrator.ship.deploy import deploy
from registry.bundle import MANIFEST, SIGNATURE, Bundle, BundleRuleError, issue_rollback
from registry.keys import KeyStore
from registry.signing import canonical_json, sha256_bytes, sign
from tests.sshd import ShipLab

pytestmark = pytest.mark.integration


def sign_as_bundle_key(store: KeyStore, data: bytes) -> bytes:
    """A signature of ``data`` by a key the devices trust to sign bundles (the one place that
    signs forged manifests and orders in this module)."""
    return sign(store.signing_key()[1], data)


# -- forging --------------------------------------------------------------------------------


def forge(
    lab: ShipLab,
    base: Bundle,
    dest: Path,
    edit: Callable[[dict[str, Any]], None] | None = None,
    raw: bytes | None = None,
    signed: bool = True,
) -> Bundle:
    """A copy of ``base`` with its manifest edited (or replaced by ``raw`` bytes), re-signed
    by a bundle key unless ``signed`` is False. Returned as a Bundle without Bundle.open's
    checks, as an attacker would hand it to ``deploy``."""
    shutil.copytree(base.path, dest)
    manifest = json.loads((base.path / MANIFEST).read_text())
    if edit is not None:
        edit(manifest)
    data = raw if raw is not None else canonical_json(manifest)
    (dest / MANIFEST).write_bytes(data)
    sig = sign_as_bundle_key(lab.store, data) if signed else b"\0" * 64
    (dest / SIGNATURE).write_bytes(sig)
    return Bundle(dest, manifest, sha256_bytes(data))


def entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def add_files(*entries: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["files"] += list(entries)

    return edit


# -- what must not change ---------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def snapshot(lab: ShipLab, device: str) -> dict[str, Any]:
    root = lab.roots[device]
    return {
        "status": lab.status(device),
        "outside": sorted(p.name for p in root.parent.iterdir()),
        "bin": _tree(root / "bin"),
        "versions": _tree(root / "versions"),
        "tmp_x": Path("/tmp/x").exists(),
    }


def assert_untouched(lab: ShipLab, device: str, before: dict[str, Any]) -> None:
    """Nothing outside the root, in bin/ or versions/ changed; no staging; same version, healthy."""
    root = lab.roots[device]
    assert sorted(p.name for p in root.parent.iterdir()) == before["outside"]
    assert _tree(root / "bin") == before["bin"]
    assert _tree(root / "versions") == before["versions"]
    assert Path("/tmp/x").exists() == before["tmp_x"] and not (root.parent / "x").exists()
    assert sorted(p.name for p in (root / "staging").iterdir()) == []
    after = lab.status(device)
    assert (after["current"], after["installed"]) == (
        before["status"]["current"],
        before["status"]["installed"],
    )
    if after["current"] is not None:
        health = lab.agent(device, "health")
        assert health.code == 0, health.stdout
        assert health.json()["version"] == before["status"]["current"]


def host_refuses(lab: ShipLab, bundle: Bundle, code: str, device: str, store: Any = ...) -> str:
    """``edgeship deploy`` refuses on this host with ``code``; returns the error text."""
    with pytest.raises(BundleError) as caught:
        deploy(lab.fleet, lab.select([device]), bundle, lab.store if store is ... else store)
    text = str(caught.value)
    assert "refused before anything is sent" in text and f"({code})" in text, text
    return text


def stage_forged(lab: ShipLab, device: str, bundle: Bundle, name: str = "forged") -> str:
    """Upload a forged bundle folder into the device's staging/ as is (no checks on this side)."""
    with lab.session(device) as s:
        remote = f"{s.root}/staging/{name}"
        s.makedirs(remote)
        for p in sorted(bundle.path.rglob("*")):
            rel = p.relative_to(bundle.path).as_posix()
            if p.is_dir():
                s.makedirs(f"{remote}/{rel}")
            else:
                s.put_bytes(p.read_bytes(), f"{remote}/{rel}")
    return remote


def agent_refuses(lab: ShipLab, device: str, args: str, code: str) -> dict[str, Any]:
    """The agent itself refuses (exit 10, ``code``), logs it, and says why."""
    res = lab.agent(device, args)
    assert res.code == 10, (res.code, res.stdout, res.stderr)
    answer = res.json()
    assert answer["refusal"] == code, answer
    logged = [e for e in lab.log(device) if e["event"] == "refused"][-1]
    assert logged["refusal"] == code and logged["message"] == answer["message"]
    return answer


@pytest.fixture(scope="module")
def slab(
    tmp_path_factory: pytest.TempPathFactory, ssh_devices: list, built_artifact: Path
) -> Iterator[ShipLab]:
    """dev01 runs a good first version."""
    lab = ShipLab(tmp_path_factory.mktemp("security"), ssh_devices[:1], built_artifact)
    assert not lab.enroll().failed
    first = lab.bundle()
    assert lab.deploy(first, ["dev01"]).outcomes[0].result == "activated"
    lab.first = first  # type: ignore[attr-defined]
    yield lab


# -- 1. paths that reach outside the bundle ------------------------------------------------------

FAKE_AGENT = b"#!/bin/sh\necho owned\n"
UNSAFE = {
    "agent": "../../bin/edgeship_agent.pyz",
    "outside_root": "../../../x",
    "absolute": "/tmp/x",
    "dot": "model/./model.onnx",
    "double_slash": "model//model.onnx",
    "backslash": "model\\..\\..\\x",
    "nul": "model/x\x00.onnx",
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_manifest_path_outside_the_bundle_is_refused_before_anything_is_written(
    slab: ShipLab, case: str, tmp_path: Path
) -> None:
    before = snapshot(slab, "dev01")
    forged = forge(slab, slab.first, tmp_path / "b", add_files(entry(UNSAFE[case], FAKE_AGENT)))

    text = host_refuses(slab, forged, "unsafe_path", "dev01")
    assert repr(UNSAFE[case])[1:-1] in text
    with pytest.raises(BundleRuleError) as opened:
        Bundle.open(forged.path)
    assert opened.value.code == "unsafe_path"
    remote = stage_forged(slab, "dev01", forged)
    answer = agent_refuses(slab, "dev01", f"verify --manifest-only {remote}", "unsafe_path")
    assert "files[" in answer["message"] and ".path" in answer["message"]
    remote = stage_forged(slab, "dev01", forged)
    agent_refuses(slab, "dev01", f"activate {remote}", "unsafe_path")
    assert_untouched(slab, "dev01", before)


def test_unsigned_manifest_with_unsafe_names_creates_nothing_on_the_device(
    slab: ShipLab, tmp_path: Path
) -> None:
    before = snapshot(slab, "dev01")

    def edit(m: dict[str, Any]) -> None:
        m["deployment"] = "../../../evil"
        m["files"].append(entry("../../../x/y", b"z"))

    forged = forge(slab, slab.first, tmp_path / "b", edit, signed=False)
    # no key store at hand: the paths and names alone stop it before a connection
    text = host_refuses(slab, forged, "unsafe_path", "dev01", store=None)
    assert "deployment: expected a name" in text
    # with the key store, the signature is refused as well
    assert "bad signature" in host_refuses(slab, forged, "bad_signature", "dev01")
    assert_untouched(slab, "dev01", before)


def test_tar_export_with_link_members_is_refused_on_the_device(
    slab: ShipLab, tmp_path: Path
) -> None:
    before = snapshot(slab, "dev01")
    tar = tmp_path / "links.tar"
    with tarfile.open(tar, "w") as t:
        for name, kind, target in (
            ("b/model", tarfile.SYMTYPE, "../../../bin"),
            ("b/x", tarfile.LNKTYPE, "/etc/passwd"),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            t.addfile(info)
    with slab.session("dev01") as s:
        s.sftp().put(str(tar), f"{s.root}/staging/links.tar")
        remote = f"{s.root}/staging/links.tar"
    answer = agent_refuses(slab, "dev01", f"activate {remote}", "unsafe_member")
    assert "is a symbolic link to '../../../bin'" in answer["message"]
    with slab.session("dev01") as s:
        s.run(f"rm -f {remote}")
    assert_untouched(slab, "dev01", before)


# -- 2. one path twice: writing through a link into the installed version -----------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("model/model.onnx", "model/model.onnx"),
        ("model/model.onnx", "model/Model.onnx"),
        ("model", "model/model.onnx"),
    ],
)
def test_manifest_listing_one_place_twice_is_refused(
    slab: ShipLab, first: str, second: str, tmp_path: Path
) -> None:
    before = snapshot(slab, "dev01")
    model = slab.first.path / "model" / "model.onnx"

    def edit(m: dict[str, Any]) -> None:
        m["files"] = [e for e in m["files"] if e["path"] != "model/model.onnx"]
        m["files"] += [entry(first, model.read_bytes()), entry(second, b"\0" * 64)]

    forged = forge(slab, slab.first, tmp_path / "b", edit)
    host_refuses(slab, forged, "duplicate_path", "dev01")
    remote = stage_forged(slab, "dev01", forged)
    answer = agent_refuses(slab, "dev01", f"activate {remote}", "duplicate_path")
    assert repr(second) in answer["message"]
    assert_untouched(slab, "dev01", before)


def _broken_artifact(lab: ShipLab) -> Path:
    broken = lab.base / "broken-artifact"
    if not broken.exists():
        shutil.copytree(lab.artifact, broken)
        expected = broken / "smoke" / "expected.npz"
        with np.load(expected) as npz:
            arrays = {k: npz[k] + 10.0 for k in npz.files}
        np.savez(expected, **arrays)
    return broken


def _damage(path: Path) -> None:
    """What the old attack did to the installed version (the file is read-only now)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_installed_versions_are_not_linked_and_a_damaged_one_is_never_switched_to(
    lab: ShipLab,
) -> None:
    lab.enroll(["dev02"])
    v1, v2 = lab.bundle(), lab.bundle()
    for b in (v1, v2):
        assert lab.deploy(b, ["dev02"]).outcomes[0].result == "activated"
    root = lab.roots["dev02"]
    one, two = (root / "versions" / str(v) / "model" / "model.onnx" for v in (1, 2))
    assert one.stat().st_ino != two.stat().st_ino and one.stat().st_nlink == 1
    assert one.stat().st_mode & 0o777 == 0o444
    assert one.parent.stat().st_mode & 0o777 == 0o555

    # a damaged rollback target is verified again and refused, on command ...
    _damage(one)
    answer = agent_refuses(lab, "dev02", "rollback", "hash_mismatch")
    assert answer["message"].startswith("version 1 no longer verifies; not switched to it")
    assert lab.status("dev02")["current"] == 2 and lab.agent("dev02", "health").code == 0

    # ... and after a failed health check: nothing damaged becomes current
    _damage(two)
    bad = lab.bundle(_broken_artifact(lab))
    outcome = lab.deploy(bad, ["dev02"]).outcomes[0]
    assert outcome.result == "unhealthy", outcome.summary()
    assert "previous version 2 no longer verifies (hash_mismatch" in outcome.message
    assert "not switched to it" in outcome.message
    assert (outcome.agent or {})["rollback_refused"]["version"] == 2
    status = lab.status("dev02")
    assert status["current"] is None and bad.version in status["failed"]
    events = [(e["event"], e.get("version")) for e in lab.log("dev02")]
    assert ("rollback_refused", 2) in events and ("rolled_back", 2) not in events


# -- 3. rollback orders: once, from the running version, for this device or fleet ----------------


def test_rollback_order_is_used_once_from_the_running_version_for_its_device_or_fleet(
    lab: ShipLab,
) -> None:
    lab.enroll(["dev03"])
    assert lab.status("dev03")["device"]["fleet"] == lab.fleet.name
    v1, v2 = lab.bundle(), lab.bundle()
    for b in (v1, v2):
        assert lab.deploy(b, ["dev03"]).outcomes[0].result == "activated"

    issue_rollback(v1, lab.store, from_version=2, fleet=lab.fleet.name)
    back = lab.deploy(v1, ["dev03"]).outcomes[0]
    assert back.result == "activated" and back.version == 1, back.summary()
    used = json.loads((lab.roots["dev03"] / "state.json").read_text())["rollback_orders_used"]
    assert [(u["version"], u["from_version"]) for u in used] == [(1, 2)]
    assert lab.deploy(v2, ["dev03"]).outcomes[0].version == 2  # forward again

    def refused(code: str) -> str:
        before = snapshot(lab, "dev03")
        outcome = lab.deploy(v1, ["dev03"]).outcomes[0]
        assert (outcome.result, outcome.refusal) == ("refused", code), outcome.summary()
        assert_untouched(lab, "dev03", before)
        return outcome.message

    # the same order again, although the device runs its from_version again
    assert "was already executed on this device" in refused("rollback_replayed")
    issue_rollback(v1, lab.store, from_version=2, device="dev01")
    assert "for device 'dev01'; this device is device 'dev03'" in refused("rollback_scope")
    issue_rollback(v1, lab.store, from_version=2, fleet="another_fleet")
    assert "for fleet 'another_fleet'" in refused("rollback_scope")
    v3 = lab.bundle()
    assert lab.deploy(v3, ["dev03"]).outcomes[0].version == 3  # the fix
    issue_rollback(v1, lab.store, from_version=2, fleet=lab.fleet.name, device="dev03")
    assert "leaves version 2; this device runs version 3" in refused("rollback_from")


# -- 4. resources spent before any check ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "too_deep", "nested deeper than 32 levels"),
        (b'{"kind": "edgeship.bundle"}' + b" " * (5 * 1024 * 1024), "too_large", "bytes"),
    ],
    ids=["nested", "oversized"],
)
def test_nested_or_oversized_unsigned_manifest_is_refused_before_parsing(
    slab: ShipLab, tmp_path: Path, raw: bytes, code: str, message: str
) -> None:
    before = snapshot(slab, "dev01")
    forged = forge(slab, slab.first, tmp_path / "b", raw=raw, signed=False)
    host_refuses(slab, forged, code, "dev01")
    with pytest.raises(BundleRuleError) as opened:
        Bundle.open(forged.path)
    assert opened.value.code == code
    remote = stage_forged(slab, "dev01", forged)
    answer = agent_refuses(slab, "dev01", f"activate {remote}", code)
    assert message in answer["message"] and "manifest.json" in answer["message"]
    assert_untouched(slab, "dev01", before)


def test_compressed_export_that_expands_too_far_is_stopped_while_extracting(
    slab: ShipLab, tmp_path: Path
) -> None:
    from orchestrator.ship.bundling import open_bundle

    before = snapshot(slab, "dev01")
    zeros = b"\0" * (100 * 1024 * 1024)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for rel in ("manifest.json", "manifest.json.sig"):
            data = (slab.first.path / rel).read_bytes()
            info = tarfile.TarInfo(f"posture_server-v1/{rel}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("posture_server-v1/model/zeros.bin")
        info.size = len(zeros)
        t.addfile(info, io.BytesIO(zeros))
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(raw.getvalue(), compresslevel=6))
    assert bomb.stat().st_size < 2 * 1024 * 1024

    with (
        pytest.raises(BundleError, match="compression bomb"),
        open_bundle(tmp_path, bomb, None, None),
    ):
        pass
    with slab.session("dev01") as s:
        s.sftp().put(str(bomb), f"{s.root}/staging/bomb.tar.gz")
        remote = f"{s.root}/staging/bomb.tar.gz"
    answer = agent_refuses(slab, "dev01", f"activate {remote}", "too_large")
    assert "refused as a compression bomb" in answer["message"]
    with slab.session("dev01") as s:
        s.run(f"rm -f {remote}")
    assert_untouched(slab, "dev01", before)


# -- 5. policy: creation time, duplicate keys ----------------------------------------------------


def test_manifest_created_in_the_future_is_refused(slab: ShipLab, tmp_path: Path) -> None:
    before = snapshot(slab, "dev01")

    def edit(m: dict[str, Any]) -> None:
        m["version"] = 50
        m["created_at"] = "2099-01-01T00:00:00Z"
        m["expires_at"] = "2099-04-01T00:00:00Z"

    forged = forge(slab, slab.first, tmp_path / "b", edit)
    outcome = slab.deploy(forged, ["dev01"]).outcomes[0]
    assert (outcome.result, outcome.refusal) == ("refused", "future_manifest")
    assert "created_at 2099-01-01T00:00:00Z is in the future" in outcome.message
    assert "3600 s" in outcome.message
    assert_untouched(slab, "dev01", before)


def test_signed_manifest_with_duplicate_keys_is_refused(slab: ShipLab, tmp_path: Path) -> None:
    before = snapshot(slab, "dev01")
    text = (slab.first.path / MANIFEST).read_text()
    # one parser may take the first "version", another the last: refused either way
    raw = text.replace('"version": 1', '"version": 1,\n  "version": 99', 1).encode()
    assert raw != text.encode()
    forged = forge(slab, slab.first, tmp_path / "b", raw=raw)
    host_refuses(slab, forged, "duplicate_key", "dev01")
    remote = stage_forged(slab, "dev01", forged)
    answer = agent_refuses(slab, "dev01", f"activate {remote}", "duplicate_key")
    assert "key 'version' appears twice in one object" in answer["message"]
    assert_untouched(slab, "dev01", before)
