"""Trust capture on real sshd devices: a leaked online key cannot change what a device trusts.

The attacker holds the targets key (it signs bundles, so it lives on an online
machine) and, later, that key is revoked. Before the device hears of the
revocation, the attacker tries to make it trust their own key: a root "version
2" and a root "version 1000000" signed by the leaked key, carried in an exported
bundle (removable media) and pushed straight to the agent. Each is refused, the
device keeps its root version and its running, healthy version, and nothing is
written outside its install root. The revocation then reaches the device with
the next deploy, after which bundles signed by the leaked key are refused too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from orchestrator.errors import BundleError
from registry.bundle import export_bundle
from registry.keys import KeyStore, tuf_key
from tests.sshd import ShipLab

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _listing(folder: Path) -> set[str]:
    """Every path under ``folder`` (what the test checks nothing was added to)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _forged_root(store: KeyStore, version: int, signer_store: KeyStore) -> bytes:
    """The store's root, claiming ``version``, naming the attacker's key for every role and
    signed by the leaked targets key plus the attacker's own key."""
    md = Metadata[Root].from_bytes(store.trust_files())
    _, leaked = store.signing_key()
    _, own = signer_store.signing_key()
    signed = md.signed
    signed.version = version
    for private in (leaked, own):
        key = tuf_key(private.public_key())
        for role in ("root", "targets"):
            if key.keyid not in signed.roles[role].keyids:
                signed.add_key(key, role)
    signed.roles["root"].threshold = 1
    md.signatures.clear()
    md.sign(CryptoSigner(leaked), append=True)
    md.sign(CryptoSigner(own), append=True)
    return md.to_bytes()


def test_a_leaked_targets_key_cannot_capture_a_devices_trust(lab: ShipLab, tmp_path: Path) -> None:
    assert not lab.enroll(["dev01"]).failed
    running = lab.bundle()
    assert lab.deploy(running, ["dev01"]).outcomes[0].result == "activated"
    attacker = KeyStore(tmp_path / "attacker", passphrase=b"")
    attacker.init(root_keys=1, threshold=1)
    root = lab.roots["dev01"]
    outside = _listing(root.parent)
    evil = lab.bundle(store=attacker)  # the attacker's own bundle (own key)

    for version in (2, 1_000_000):
        forged = _forged_root(lab.store, version, attacker)
        tarball = export_bundle(evil, tmp_path / f"evil-{version}.tar", [(version, forged)])
        with lab.session("dev01") as s:
            s.sftp().put(str(tarball), f"{s.root}/staging/evil.tar")
            res = s.agent(f"activate {s.root}/staging/evil.tar")
            answer = res.json()
            assert res.code == 10, res.stdout
            expected = "untrusted_root" if version == 2 else "trust_gap"
            assert answer["refusal"] == expected, answer
            # pushed to the agent directly: the same refusal
            s.put_bytes(forged, f"{s.root}/staging/forged.root.json")
            direct = s.agent(f"update-trust {s.root}/staging/forged.root.json")
            assert direct.code == 10 and direct.json()["refusal"] == expected
        status = lab.status("dev01")
        assert status["trust"]["serial"] == 1
        assert status["current"] == running.version
        assert attacker.signing_key()[0] not in status["trust"]["keys"]
    refusal = next(e for e in lab.log("dev01") if e.get("refusal") == "untrusted_root")
    assert (
        "signed by 0 of the trusted root keys; the trusted root (version 1) requires 2"
        in (refusal["message"])
    )

    # nothing outside the install root, no staging left, the running version still healthy
    assert _listing(root.parent) - outside <= {
        str(p.relative_to(root.parent)) for p in root.rglob("*")
    }
    assert not [p for p in os.listdir(root / "staging") if not p.startswith(".")]
    health = lab.agent("dev01", "health")
    assert health.code == 0 and health.json()["result"] == "pass"

    # the attacker's bundle is refused by this host before anything is sent, and by the
    # device when sent anyway (no key store: the device judges alone); once the root
    # threshold revokes the leaked key, so is everything it signs
    leaked = lab.store.signing_key()[0]
    signed_by_leaked = lab.bundle()
    with pytest.raises(BundleError, match="refused before anything is sent"):
        lab.deploy(evil, ["dev01"])
    assert lab.deploy(evil, ["dev01"], store=None).outcomes[0].refusal == "untrusted_key"
    assert lab.store.rotate().published and lab.store.revoke(leaked).published
    with pytest.raises(BundleError, match="targets role of root version 3"):
        lab.deploy(signed_by_leaked, ["dev01"])
    assert not lab.enroll(["dev01"]).failed  # brings the device's root to version 3
    outcome = lab.deploy(signed_by_leaked, ["dev01"], store=None).outcomes[0]
    assert outcome.result == "refused" and outcome.refusal == "untrusted_key", outcome.summary()
    assert lab.status("dev01")["trust"]["serial"] == 3
    fresh = lab.bundle()
    assert lab.deploy(fresh, ["dev01"]).outcomes[0].result == "activated"
