"""The signing key store: permissions, passphrases, key ids, rotation, revocation, trust chain."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from orchestrator.errors import KeyStoreError
from registry.keys import KeyStore, TrustSet, default_keys_dir
from registry.signing import load_public_pem, verify

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_init_writes_private_files_mode_0600_in_a_0700_folder(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    info = store.init()
    assert info.status == "active" and info.has_private
    assert _mode(store.path) == 0o700
    files = [p for p in store.path.rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
    assert store.key_path(info.key_id).read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_key_id_is_first_16_hex_of_sha256_of_raw_public_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    kid = store.init().key_id
    pub = load_public_pem(store.pub_path(kid).read_bytes())
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert kid == hashlib.sha256(raw).hexdigest()[:16]


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
    assert "ENCRYPTED" in (tmp_path / "keys" / f"{kid}.key").read_text()


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


def test_rotate_signs_the_new_trust_set_with_the_previous_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    old = store.init().key_id
    new, trust = store.rotate()
    assert trust.serial == 2 and trust.active == new.key_id and trust.signed_by == old
    assert set(trust.keys) == {old, new.key_id} and trust.revoked == []
    data, sig = store.trust_files()
    assert verify(load_public_pem(store.pub_path(old).read_bytes()), data, sig)
    assert store.signing_key()[0] == new.key_id
    assert {k.key_id: k.status for k in store.list_keys()} == {old: "trusted", new.key_id: "active"}


def test_revoke_moves_a_key_to_the_revoked_list(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    old = store.init().key_id
    with pytest.raises(KeyStoreError) as active:
        store.revoke(old)
    assert "is the active signing key; run 'edgeship keys rotate' first" in str(active.value)
    new, _ = store.rotate()
    trust = store.revoke(old)
    assert trust.serial == 3 and trust.revoked == [old] and list(trust.keys) == [new.key_id]
    assert trust.signed_by == new.key_id
    assert {k.key_id: k.status for k in store.list_keys()}[old] == "revoked"
    with pytest.raises(KeyStoreError) as again:
        store.revoke(old)
    assert "already revoked" in str(again.value)
    with pytest.raises(KeyStoreError) as unknown:
        store.revoke("0123456789abcdef")
    assert "unknown key id '0123456789abcdef'" in str(unknown.value)


def test_trust_chain_each_set_signed_by_a_key_the_previous_one_trusts(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    store.rotate()
    store.rotate()
    chain = store.trust_chain(0)
    assert [serial for serial, _, _ in chain] == [1, 2, 3]
    previous: TrustSet | None = None
    for _, data, sig in chain:
        trust = TrustSet.from_json(json.loads(data))
        signer_set = previous or trust
        assert trust.signed_by in signer_set.keys
        assert verify(load_public_pem(signer_set.keys[trust.signed_by]), data, sig)
        previous = trust
    assert [s for s, _, _ in store.trust_chain(2)] == [3]


def test_trust_set_with_a_key_that_does_not_match_its_id_is_rejected(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    doc = json.loads(store.trust_path.read_text())
    doc["keys"][0]["key_id"] = "ffffffffffffffff"
    with pytest.raises(KeyStoreError) as info:
        TrustSet.from_json(doc, "trust.json")
    assert "keys.ffffffffffffffff: the public key's id is" in str(info.value)


def test_tampered_trust_set_in_store_is_detected(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()
    doc = json.loads(store.trust_path.read_text())
    doc["serial"] = 9
    store.trust_path.write_text(json.dumps(doc))
    with pytest.raises(KeyStoreError) as info:
        store.trust()
    assert "signature does not verify" in str(info.value)
