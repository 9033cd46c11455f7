"""Bundles: manifest contents, Ed25519 signing, version numbering, verification, export."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.model_file import sha256_file
from orchestrator.errors import BundleError
from registry.bundle import (
    MANIFEST,
    SIGNATURE,
    Bundle,
    Ledger,
    bundles_root,
    export_bundle,
    find_bundle,
    issue_rollback,
    make_bundle,
    unpack_export,
    verify_bundle,
)
from registry.keys import KeyStore
from registry.signing import load_public_pem, verify


def make_artifact(folder: Path, status: str = "passed") -> Path:
    """A small artifact folder shaped like `edgeship build` writes it."""
    (folder / "model").mkdir(parents=True)
    (folder / "smoke").mkdir()
    (folder / "model" / "model.onnx").write_bytes(bytes(range(256)) * 16)
    runtime = {
        "deployment": "demo",
        "target": {"name": "server", "family": "server", "runtime": "onnxruntime", "device": "CPU"},
        "runtime_version_built_with": "1.31.1",
        "runtime_requirement": ">=1.20",
        "model": {"file": "model/model.onnx", "format": "onnx", "precision": "int8", "sha256": "x"},
        "inputs": [],
        "outputs": [],
    }
    (folder / "runtime.json").write_text(json.dumps(runtime))
    gates = [{"gate": "agreement >= 0.95", "value": 1.0, "passed": True}]
    validation = {
        "passed": status == "passed",
        "metrics": {"agreement": 1.0},
        "gates": gates,
        "data": {"eval_data_sha256": "d" * 64, "weights_sha256": "w" * 64},
    }
    (folder / "validation.json").write_text(json.dumps(validation))
    build = {
        "status": status,
        "git": {"commit": "abc123", "dirty": False},
        "mlflow": {"run_id": None, "model_version": None, "model_name": "demo"},
        "built_at": "2026-01-01T00:00:00+00:00",
        "source": {"kind": "onnx", "format": "onnx", "sha256": "s" * 64},
        "code": {"packages": {"numpy": "2.0.0"}},
    }
    (folder / "build.json").write_text(json.dumps(build))
    (folder / "metrics.json").write_text("{}")
    np.savez(folder / "smoke" / "input.npz", x=np.zeros(3, np.float32))
    (folder / "smoke" / "smoke.json").write_text(json.dumps({"atol": 0.01}))
    return folder


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    s = KeyStore(tmp_path / "keys", passphrase=b"")
    s.init()
    return s


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifacts" / "demo")


def test_manifest_lists_every_file_with_hash_size_and_provenance(
    artifact: Path, store: KeyStore, tmp_path: Path
) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    bundle = make_bundle(artifact, store, tmp_path / "bundles", valid_days=30, now=now)
    m = bundle.manifest
    assert bundle.path == tmp_path / "bundles" / "demo" / "1"
    assert (m["deployment"], m["version"], m["kind"]) == ("demo", 1, "edgeship.bundle")
    assert (m["created_at"], m["expires_at"]) == ("2026-03-01T12:00:00Z", "2026-03-31T12:00:00Z")
    files = {f["path"]: f for f in m["files"]}
    assert sorted(files) == [
        "build.json",
        "metrics.json",
        "model/model.onnx",
        "runtime.json",
        "smoke/input.npz",
        "smoke/smoke.json",
        "validation.json",
    ]
    model = files["model/model.onnx"]
    assert model == {
        "path": "model/model.onnx",
        "sha256": sha256_file(artifact / "model" / "model.onnx"),
        "size": 4096,
    }
    assert m["target"] == {
        "family": "server",
        "name": "server",
        "runtime": "onnxruntime",
        "device": "CPU",
        "runtime_requirement": ">=1.20",
        "runtime_version_built_with": "1.31.1",
    }
    prov = m["provenance"]
    assert prov["git"] == {"commit": "abc123", "dirty": False}
    assert prov["source"] == {"kind": "onnx", "format": "onnx", "sha256": "s" * 64}
    assert prov["code"]["packages"] == {"numpy": "2.0.0"}
    assert prov["validation"]["gates"][0]["gate"] == "agreement >= 0.95"
    assert prov["validation"]["data"]["eval_data_sha256"] == "d" * 64
    assert prov["signing_key_id"] == m["signing"]["key_id"] == store.trust().active
    for rel in files:
        assert (bundle.path / rel).read_bytes() == (artifact / rel).read_bytes()


def test_signature_is_raw_ed25519_over_manifest_bytes(
    artifact: Path, store: KeyStore, tmp_path: Path
) -> None:
    bundle = make_bundle(artifact, store, tmp_path / "bundles")
    sig = (bundle.path / SIGNATURE).read_bytes()
    assert len(sig) == 64
    pub = load_public_pem(store.pub_path(bundle.key_id).read_bytes())
    assert verify(pub, (bundle.path / MANIFEST).read_bytes(), sig)
    assert not verify(pub, (bundle.path / MANIFEST).read_bytes() + b" ", sig)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_signature_verifies_with_stock_openssl(
    artifact: Path, store: KeyStore, tmp_path: Path
) -> None:
    bundle = make_bundle(artifact, store, tmp_path / "bundles")
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(store.pub_path(bundle.key_id)),
        "-rawin",
        "-in",
        str(bundle.path / MANIFEST),
        "-sigfile",
        str(bundle.path / SIGNATURE),
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout
    (bundle.path / MANIFEST).write_bytes(
        (bundle.path / MANIFEST).read_bytes().replace(b'"demo"', b'"dem0"')
    )
    assert subprocess.run(cmd, capture_output=True).returncode != 0


def test_versions_increase_and_are_never_reused(
    artifact: Path, store: KeyStore, tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    assert [make_bundle(artifact, store, root).version for _ in range(3)] == [1, 2, 3]
    shutil.rmtree(root / "demo" / "3")  # a deleted bundle's number stays used (ledger)
    assert make_bundle(artifact, store, root).version == 4
    ledger = Ledger(root / "demo", "demo").read()
    assert [e["version"] for e in ledger["issued"]] == [1, 2, 3, 4]
    assert find_bundle(root, "demo").version == 4
    assert find_bundle(root, "demo", 2).version == 2
    with pytest.raises(BundleError) as info:
        find_bundle(root, "demo", 3)
    assert str(info.value) == "error: demo has no bundle version 3; issued: 1, 2, 4"


def test_version_continues_from_tracker(artifact: Path, store: KeyStore, tmp_path: Path) -> None:
    class FakeTracker:
        def __init__(self) -> None:
            self.recorded: list[tuple] = []

        def max_bundle_version(self, deployment: str) -> int:
            return 41

        def record_bundle(self, *args: object) -> None:
            self.recorded.append(args)

    tracker = FakeTracker()
    bundle = make_bundle(artifact, store, tmp_path / "bundles", tracker=tracker)
    assert bundle.version == 42
    assert tracker.recorded == []  # the build has no MLflow run: nothing to record on


def test_failed_build_is_not_bundled(tmp_path: Path, store: KeyStore) -> None:
    failed = make_artifact(tmp_path / "failed" / "demo", status="failed")
    with pytest.raises(BundleError) as info:
        make_bundle(failed, store, tmp_path / "bundles")
    assert "only passing builds are bundled" in str(info.value)
    assert find_versions(tmp_path / "bundles") == []


def find_versions(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("demo/*") if p.is_dir())


def test_verify_bundle_finds_each_problem(artifact: Path, store: KeyStore, tmp_path: Path) -> None:
    bundle = make_bundle(artifact, store, tmp_path / "bundles")
    trust = store.trust()
    assert verify_bundle(bundle.path, trust) == []
    (bundle.path / "model" / "extra.bin").write_bytes(b"x")
    with (bundle.path / "runtime.json").open("a") as fh:
        fh.write(" ")
    later = datetime.now(UTC) + timedelta(days=365)
    assert verify_bundle(bundle.path, trust, now=later) == [
        f"expired at {bundle.manifest['expires_at']}",
        "hash mismatch: runtime.json",
        "file not in the manifest: model/extra.bin",
    ]
    (bundle.path / SIGNATURE).unlink()
    assert verify_bundle(bundle.path, trust)[0] == f"missing signature: {bundle.path / SIGNATURE}"


def test_verify_bundle_untrusted_and_revoked_keys(
    artifact: Path, store: KeyStore, tmp_path: Path
) -> None:
    other = KeyStore(tmp_path / "other", passphrase=b"")
    other.init()
    foreign = make_bundle(artifact, other, tmp_path / "other-bundles")
    assert verify_bundle(foreign.path, store.trust()) == [
        f"signed by untrusted key {foreign.key_id}"
    ]
    old = make_bundle(artifact, store, tmp_path / "bundles")
    store.rotate()
    store.revoke(old.key_id)
    assert verify_bundle(old.path, store.trust()) == [f"signed by revoked key {old.key_id}"]


def test_export_round_trip_and_rollback_order(
    artifact: Path, store: KeyStore, tmp_path: Path
) -> None:
    bundle = make_bundle(artifact, store, tmp_path / "bundles")
    order = issue_rollback(bundle, store, from_version=2, fleet="ward")
    data = json.loads(order.read_text())
    assert (data["version"], data["manifest_sha256"]) == (1, bundle.digest)
    tar = export_bundle(bundle, tmp_path / "out" / "demo.tar")
    again = Bundle.open(unpack_export(tar, tmp_path / "unpacked"))
    assert again.digest == bundle.digest and again.path.name == "demo-v1"
    assert (again.path / "rollback.json").read_bytes() == order.read_bytes()
    assert verify_bundle(again.path, store.trust()) == []
    assert export_bundle(bundle, tmp_path / "second.tar").read_bytes() == tar.read_bytes()


def test_bundles_root_beside_artifacts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGESHIP_BUNDLES", raising=False)
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "art"))
    assert bundles_root(Path("/project")) == tmp_path / "bundles"
    monkeypatch.setenv("EDGESHIP_BUNDLES", str(tmp_path / "b"))
    assert bundles_root(Path("/project")) == tmp_path / "b"
