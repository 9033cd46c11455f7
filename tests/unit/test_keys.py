"""The signing key store: permissions, passphrases, key ids, rotation, revocation, trust chain."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tuf.api.metadata import Metadata, Root

from orchestrator.errors import KeyStoreError
from registry.keys import KeyStore, default_keys_dir
from registry.signing import load_public_pem

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_init_writes_private_files_mode_0600_in_a_0700_folder(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    info = store.init()
    assert info.status == "targets (active)" and info.has_private
    roles = {k.status for k in store.list_keys()}
    assert roles == {"root", "targets (active)", "timestamp (active)"}
    assert _mode(store.path) == 0o700
    files = [p for p in store.path.rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
    assert store.key_path(info.key_id).read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_key_ids_are_tuf_default_key_ids(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    kid = store.init().key_id
    pub = load_public_pem(store.pub_path(kid).read_bytes())
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": raw.hex()}}
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    assert kid == hashlib.sha256(canonical).hexdigest()


def test_keys_dir_comes_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "k"))
    assert default_keys_dir() == tmp_path / "k"
    monkeypatch.delenv("EDGESHIP_KEYS_DIR")
    assert default_keys_dir() == Path.home() / ".config" / "edgeship" / "keys"


def test_passphrase_encrypts_private_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"correct horse")
    kid = store.init().key_id
    assert "ENCRYPTED PRIVATE KEY" in store.key_path(kid).read_text()
    assert store.signing_key()[0] == kid

    with pytest.raises(KeyStoreError) as missing:
        KeyStore(store.path, passphrase=b"").signing_key()
    assert "set EDGESHIP_KEY_PASSPHRASE" in str(missing.value)
    with pytest.raises(KeyStoreError) as wrong:
        KeyStore(store.path, passphrase=b"battery staple").signing_key()
    assert str(wrong.value) == (
        f"error: {store.key_path(kid)}: cannot decrypt the private key "
        "(wrong EDGESHIP_KEY_PASSPHRASE?)"
    )


def test_passphrase_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGESHIP_KEY_PASSPHRASE", "from-env")
    kid = KeyStore(tmp_path / "keys").init().key_id
    assert "ENCRYPTED" in (tmp_path / "keys" / "online" / f"{kid}.key").read_text()
    assert all("ENCRYPTED" in p.read_text() for p in (tmp_path / "keys" / "root").glob("*.key"))


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    kid = store.init().key_id
    path = store.key_path(kid)
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError) as info:
        store.signing_key()
    assert str(info.value) == (
        f"error: {path} is accessible by other users (mode 0644); expected 0600: chmod 600 {path}"
    )


def test_key_store_inside_the_project_is_refused(tmp_path: Path) -> None:
    store = KeyStore(ROOT / ".edgeship" / "keys", passphrase=b"")
    with pytest.raises(KeyStoreError) as info:
        store.ensure_outside(ROOT)
    assert "private keys must never be in the repository" in str(info.value)
    KeyStore(tmp_path / "keys").ensure_outside(ROOT)


def test_init_twice_and_missing_store_are_clear_errors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    with pytest.raises(KeyStoreError) as none:
        store.signing_key()
    assert "create them with: edgeship keys init" in str(none.value)
    store.init()
    with pytest.raises(KeyStoreError) as twice:
        store.init()
    assert "use 'edgeship keys rotate'" in str(twice.value)


def _tuf_chain(store: KeyStore) -> list[Metadata[Root]]:
    """The store's root versions, each checked with python-tuf as a TUF client would."""
    chain = [Metadata[Root].from_bytes(data) for _, data in store.trust_chain(0)]
    first = chain[0]
    first.signed.verify_delegate("root", first.signed_bytes, first.signatures)
    for old, new in itertools.pairwise(chain):
        assert new.signed.version == old.signed.version + 1
        old.signed.verify_delegate("root", new.signed_bytes, new.signatures)
        new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    return chain


def test_init_makes_a_tuf_root_with_a_threshold_of_offline_keys(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    info = store.init(root_keys=3, threshold=2)
    (root,) = _tuf_chain(store)
    roles = root.signed.roles
    assert roles["root"].threshold == 2 and len(roles["root"].keyids) == 3
    assert roles["targets"].keyids == [info.key_id]
    assert roles["timestamp"].keyids == roles["snapshot"].keyids == [store.timestamp_key()[0]]
    assert not set(roles["root"].keyids) & {info.key_id, store.timestamp_key()[0]}
    assert len(root.signatures) == 3
    with pytest.raises(KeyStoreError) as bad:
        KeyStore(tmp_path / "other").init(root_keys=2, threshold=3)
    assert "--threshold must be between 1 and --root-keys (2), found 3" in str(bad.value)


def test_rotate_adds_a_targets_key_in_a_root_signed_by_the_threshold(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    old = store.init().key_id
    change = store.rotate()
    assert change.published and change.version == 2 and len(change.signed_by) == 3
    trust = store.trust()
    assert trust.serial == 2 and trust.active == change.new_key
    assert set(trust.keys) == {old, change.new_key} and trust.revoked == []
    assert store.signing_key()[0] == change.new_key
    statuses = {k.key_id: k.status for k in store.list_keys()}
    assert statuses[old] == "targets" and statuses[change.new_key] == "targets (active)"
    assert len(_tuf_chain(store)) == 2


def test_revoke_removes_a_key_from_its_roles(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    old = store.init().key_id
    with pytest.raises(KeyStoreError) as active:
        store.revoke(old)
    assert "is the active targets key; run 'edgeship keys rotate --role targets' first" in str(
        active.value
    )
    new = store.rotate().new_key
    store.revoke(old)
    trust = store.trust()
    assert trust.serial == 3 and trust.revoked == [old] and list(trust.keys) == [new]
    assert {k.key_id: k.status for k in store.list_keys()}[old] == "revoked"
    with pytest.raises(KeyStoreError) as again:
        store.revoke(old)
    assert f"key {old} is in no role of root version 3" in str(again.value)
    root_keys = list(trust.role_keys("root"))
    store.revoke(root_keys[0])  # 2 of 3 left: still meets the threshold 2
    with pytest.raises(KeyStoreError) as below:
        store.revoke(root_keys[1])
    assert "leaves 1 root keys, fewer than the threshold 2" in str(below.value)
    assert len(_tuf_chain(store)) == 4


def test_root_change_short_of_the_threshold_waits_for_offline_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init(root_keys=3, threshold=2)
    token_a, token_b = tmp_path / "token-a", tmp_path / "token-b"
    for token in (token_a, token_b):
        token.mkdir(mode=0o700)
    keys = sorted((store.path / "root").glob("*.key"))
    keys[0].rename(token_a / keys[0].name)
    keys[1].rename(token_b / keys[1].name)
    change = store.rotate("timestamp")
    assert not change.published and change.signed_by == [keys[2].stem] and change.needed == 2
    assert store.trust().serial == 1  # nothing published yet: devices see no change
    with pytest.raises(KeyStoreError) as busy:
        store.rotate()
    assert "a root change is waiting for root signatures" in str(busy.value)
    done = store.sign_root(token_a)
    assert done.published and done.version == 2 and len(done.signed_by) == 2
    assert store.timestamp_key()[0] == change.new_key
    assert len(_tuf_chain(store)) == 2
    monkeypatch.setenv("EDGESHIP_ROOT_KEY_DIRS", f"{token_a}{os.pathsep}{token_b}")
    (store.path / "root" / keys[2].name).unlink()
    renewed = store.renew()
    assert renewed.published and len(renewed.signed_by) == 2


def test_tampered_root_in_store_is_detected(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    path = store.root_path(1)
    doc = json.loads(path.read_text())
    doc["signed"]["roles"]["targets"]["threshold"] = 0
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError) as info:
        store.trust()
    assert str(info.value).startswith(f"error: {path}:")


def test_a_store_of_the_format_before_tuf_roles_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "trust.json").write_text("{}")
    with pytest.raises(KeyStoreError) as info:
        KeyStore(tmp_path / "keys").trust()
    assert "re-enrol devices with 'edgeship enroll --reset-trust'" in str(info.value)
