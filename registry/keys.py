"""The signing key store and the trust set devices hold.

Private keys live outside the repository: in ``$EDGESHIP_KEYS_DIR``, else
``~/.config/edgeship/keys/``. The folder is mode 0700 and every file in it 0600;
a key file other users can read is refused (as ``ssh`` refuses one). With
``$EDGESHIP_KEY_PASSPHRASE`` set, private keys are written encrypted (PKCS#8,
best available encryption) and read with it.

Layout::

    <store>/<key id>.key            private key, PKCS#8 PEM
    <store>/<key id>.pub            public key, SubjectPublicKeyInfo PEM
    <store>/trust.json(.sig)        the current trust set and its signature
    <store>/history/trust-<serial>.json(.sig)   every trust set ever issued

The trust set lists the trusted key ids with their public keys, the revoked key
ids, the active (signing) key and a serial. Every new trust set is signed by a
key the previous one trusts, so a device that trusts serial N accepts N+1 without
re-enrolment; a device several serials behind is sent the chain in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator import project
from orchestrator.core.fsutil import exclusive_lock
from orchestrator.errors import KeyStoreError
from registry.signing import canonical_json, key_id, load_public_pem, public_pem, sign, verify

log = logging.getLogger(__name__)

ENV_DIR = project.ENV_KEYS_DIR
ENV_PASSPHRASE = project.ENV_KEY_PASSPHRASE
TRUST_FILE = "trust.json"
TRUST_KIND = "edgeship.trust"


def default_keys_dir() -> Path:
    """``$EDGESHIP_KEYS_DIR``, else ``~/.config/edgeship/keys``."""
    return project.keys_dir()


def env_passphrase() -> bytes | None:
    """``$EDGESHIP_KEY_PASSPHRASE`` as bytes, or None when unset or empty."""
    return project.key_passphrase()


def now_iso() -> str:
    """The current UTC time, ISO 8601 with a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TrustSet:
    """The keys a device accepts: trusted ids with public keys, revoked ids, a serial."""

    serial: int
    active: str  # key id that signs new bundles
    signed_by: str  # key id whose signature covers this document
    created_at: str
    keys: dict[str, str] = field(default_factory=dict)  # key id -> public key PEM
    revoked: list[str] = field(default_factory=list)  # key ids never to accept again

    def to_json(self) -> dict[str, Any]:
        """The signed document."""
        return {
            "schema": 1,
            "kind": TRUST_KIND,
            "serial": self.serial,
            "active": self.active,
            "signed_by": self.signed_by,
            "created_at": self.created_at,
            "keys": [{"key_id": k, "public_key_pem": pem} for k, pem in sorted(self.keys.items())],
            "revoked": sorted(self.revoked),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "trust set") -> TrustSet:
        """Parse and check a trust set document (key ids must match their keys)."""
        if not isinstance(data, dict) or data.get("kind") != TRUST_KIND:
            raise KeyStoreError(
                f"error: {source}: not an edgeship trust set (kind != {TRUST_KIND})"
            )
        try:
            keys = {str(e["key_id"]): str(e["public_key_pem"]) for e in data["keys"]}
            out = cls(
                serial=int(data["serial"]),
                active=str(data["active"]),
                signed_by=str(data["signed_by"]),
                created_at=str(data["created_at"]),
                keys=keys,
                revoked=[str(k) for k in data.get("revoked", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"error: {source}: malformed trust set ({exc!r})") from exc
        for kid, pem in out.keys.items():
            try:
                actual = key_id(load_public_pem(pem))
            except ValueError as exc:
                raise KeyStoreError(f"error: {source}: keys.{kid}: {exc}") from exc
            if actual != kid:
                raise KeyStoreError(
                    f"error: {source}: keys.{kid}: the public key's id is {actual}, not {kid}"
                )
        return out

    def trusts(self, kid: str) -> bool:
        """True when ``kid`` is trusted and not revoked."""
        return kid in self.keys and kid not in self.revoked


@dataclass(frozen=True)
class KeyInfo:
    """One key of the store, as ``edgeship keys list`` shows it."""

    key_id: str
    status: str  # active | trusted | revoked | unknown
    created_at: str
    has_private: bool
    path: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically into a new file of mode 0600."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class KeyStore:
    """Ed25519 signing keys and the trust set, in one private folder."""

    def __init__(self, path: Path | None = None, passphrase: bytes | None = None) -> None:
        self.path = (path or default_keys_dir()).expanduser()
        self.passphrase = passphrase if passphrase is not None else env_passphrase()

    # -- paths and safety -------------------------------------------------------------------

    def key_path(self, kid: str) -> Path:
        return self.path / f"{kid}.key"

    def pub_path(self, kid: str) -> Path:
        return self.path / f"{kid}.pub"

    @property
    def trust_path(self) -> Path:
        return self.path / TRUST_FILE

    @property
    def history(self) -> Path:
        return self.path / "history"

    def exists(self) -> bool:
        """True once ``keys init`` has run here."""
        return self.trust_path.is_file()

    def ensure_outside(self, project: Path) -> None:
        """Refuse a key store inside the project (private keys never enter the repository)."""
        store = self.path.resolve()
        root = project.resolve()
        if store == root or root in store.parents:
            raise KeyStoreError(
                f"error: key store {store} is inside the project {root}; private keys must "
                f"never be in the repository (set {ENV_DIR} to a folder outside it)"
            )

    def _check_mode(self, path: Path) -> None:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            wanted = "0700" if path.is_dir() else "0600"
            raise KeyStoreError(
                f"error: {path} is accessible by other users (mode {mode:04o}); expected "
                f"{wanted}: chmod {wanted[1:]} {path}"
            )

    def _require(self) -> None:
        if not self.exists():
            raise KeyStoreError(
                f"error: no signing keys in {self.path}; create them with: edgeship keys init "
                f"(or set {ENV_DIR})"
            )
        self._check_mode(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        with exclusive_lock(self.path / ".lock", 0o600):
            yield

    # -- keys ------------------------------------------------------------------------------

    def _new_key(self) -> str:
        private = Ed25519PrivateKey.generate()
        kid = key_id(private.public_key())
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self.passphrase)
            if self.passphrase
            else serialization.NoEncryption()
        )
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        _write_private(self.key_path(kid), pem)
        _write_private(self.pub_path(kid), public_pem(private.public_key()).encode())
        log.info("generated signing key %s in %s", kid, self.path)
        return kid

    def private_key(self, kid: str) -> Ed25519PrivateKey:
        """Load a private key (decrypting with the passphrase); refuses unsafe modes."""
        path = self.key_path(kid)
        if not path.is_file():
            raise KeyStoreError(f"error: no private key {kid} in {self.path}")
        self._check_mode(path)
        data = path.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=self.passphrase or None)
        except TypeError as exc:
            hint = f"unset {ENV_PASSPHRASE}" if self.passphrase else f"set {ENV_PASSPHRASE}"
            raise KeyStoreError(f"error: {path}: {exc}; {hint}") from exc
        except ValueError as exc:
            raise KeyStoreError(
                f"error: {path}: cannot decrypt the private key (wrong {ENV_PASSPHRASE}?)"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyStoreError(
                f"error: {path}: expected an Ed25519 key, found {type(key).__name__}"
            )
        return key

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The active key (id, private key); refuses a revoked or untrusted one."""
        self._require()
        trust = self.trust()
        if not trust.trusts(trust.active):
            raise KeyStoreError(
                f"error: the active key {trust.active} is not trusted; rotate first"
            )
        return trust.active, self.private_key(trust.active)

    # -- trust sets -----------------------------------------------------------------------

    def trust(self) -> TrustSet:
        """The current trust set, its signature checked against the key it names."""
        self._require()
        data = self.trust_path.read_bytes()
        sig_path = self.trust_path.with_name(TRUST_FILE + ".sig")
        trust = TrustSet.from_json(json.loads(data), str(self.trust_path))
        signer = self.pub_path(trust.signed_by)
        if not sig_path.is_file() or not signer.is_file():
            raise KeyStoreError(f"error: {self.trust_path}: signature or signer key missing")
        if not verify(load_public_pem(signer.read_bytes()), data, sig_path.read_bytes()):
            raise KeyStoreError(f"error: {self.trust_path}: signature does not verify")
        return trust

    def trust_files(self) -> tuple[bytes, bytes]:
        """The current trust set's bytes and signature, as shipped to devices."""
        self._require()
        return self.trust_path.read_bytes(), self.trust_path.with_name(
            TRUST_FILE + ".sig"
        ).read_bytes()

    def trust_chain(self, since_serial: int) -> list[tuple[int, bytes, bytes]]:
        """Every trust set after ``since_serial``, in order: (serial, json bytes, signature)."""
        self._require()
        out = []
        for path in sorted(self.history.glob("trust-*.json")):
            serial = int(path.stem.split("-", 1)[1])
            if serial > since_serial:
                out.append(
                    (serial, path.read_bytes(), path.with_name(path.name + ".sig").read_bytes())
                )
        return out

    def _issue(self, trust: TrustSet, signer: str) -> TrustSet:
        trust.signed_by = signer
        trust.created_at = now_iso()
        data = canonical_json(trust.to_json())
        signature = sign(self.private_key(signer), data)
        self.history.mkdir(exist_ok=True, mode=0o700)
        name = f"trust-{trust.serial:06d}.json"
        _write_private(self.history / name, data)
        _write_private(self.history / (name + ".sig"), signature)
        _write_private(self.trust_path.with_name(TRUST_FILE + ".sig"), signature)
        _write_private(self.trust_path, data)
        log.info("issued trust set %d signed by %s", trust.serial, signer)
        return trust

    def init(self) -> KeyInfo:
        """Create the store with one active key and trust set serial 1 (signed by that key)."""
        with self._locked():
            if self.exists():
                raise KeyStoreError(
                    f"error: {self.path} already holds signing keys; use 'edgeship keys rotate'"
                )
            kid = self._new_key()
            pem = self.pub_path(kid).read_text()
            self._issue(TrustSet(1, kid, kid, "", {kid: pem}, []), kid)
        return self._info(kid, self.trust())

    def rotate(self) -> tuple[KeyInfo, TrustSet]:
        """Generate a new active key; the new trust set is signed by the current active key.

        The previous key stays trusted (bundles it signed still install) until revoked.
        """
        with self._locked():
            old = self.trust()
            signer = old.active
            if not old.trusts(signer):
                signer = next((k for k in sorted(old.keys) if old.trusts(k)), "")
                if not signer:
                    raise KeyStoreError("error: no trusted key left to sign a new trust set")
            kid = self._new_key()
            keys = dict(old.keys)
            keys[kid] = self.pub_path(kid).read_text()
            trust = self._issue(
                TrustSet(old.serial + 1, kid, signer, "", keys, list(old.revoked)), signer
            )
        return self._info(kid, trust), trust

    def revoke(self, kid: str) -> TrustSet:
        """Move ``kid`` from the trusted keys to the revoked list (signed by the active key)."""
        with self._locked():
            old = self.trust()
            if kid in old.revoked:
                raise KeyStoreError(f"error: key {kid} is already revoked")
            if kid not in old.keys:
                raise KeyStoreError(
                    f"error: unknown key id '{kid}'; trusted keys: {', '.join(sorted(old.keys))}"
                )
            if kid == old.active:
                raise KeyStoreError(
                    f"error: {kid} is the active signing key; run 'edgeship keys rotate' first, "
                    "then revoke it"
                )
            keys = {k: v for k, v in old.keys.items() if k != kid}
            revoked = sorted({*old.revoked, kid})
            return self._issue(
                TrustSet(old.serial + 1, old.active, old.active, "", keys, revoked), old.active
            )

    def _info(self, kid: str, trust: TrustSet) -> KeyInfo:
        if kid in trust.revoked:
            status = "revoked"
        elif kid == trust.active:
            status = "active"
        elif kid in trust.keys:
            status = "trusted"
        else:
            status = "unknown"
        pub = self.pub_path(kid)
        created = datetime.fromtimestamp(pub.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return KeyInfo(kid, status, created, self.key_path(kid).is_file(), self.key_path(kid))

    def list_keys(self) -> list[KeyInfo]:
        """Every key in the store with its status in the current trust set."""
        trust = self.trust()
        ids = {p.stem for p in self.path.glob("*.pub")} | set(trust.keys) | set(trust.revoked)
        return [self._info(k, trust) for k in sorted(ids) if self.pub_path(k).is_file()]
