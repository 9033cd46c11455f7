"""The key store: the TUF roles of an edgeship repository and the root of trust devices hold.

Roles, as in TUF (and Uptane)::

    root        offline keys with a threshold (e.g. 2 of 3); only they change the root:
                add, rotate or remove keys of any role, renew its expiry
    targets     one online key: signs bundle manifests, rollback orders, phone feed indexes
                and the repository's targets metadata; cannot change trust
    timestamp   one online key: signs short-lived freshness metadata (the repository's
                timestamp and snapshot, the phone feed's timestamp); cannot change trust

The root of trust is a TUF ``root.json`` written with python-tuf's Metadata API,
so any TUF client (python-tuf's ngclient among them) and the device agent (stock
``openssl``) verify the same document. Every root version ever issued is kept; a
device that holds version N accepts N+1 only when it carries the root threshold of
N and its own (TUF specification, 5.3), so a leaked online key cannot change what
devices trust, whatever version it claims.

Private keys live outside the repository: in ``$EDGESHIP_KEYS_DIR``, else
``~/.config/edgeship/keys/``. The folder is mode 0700 and every file in it 0600;
a key file other users can read is refused (as ``ssh`` refuses one). With
``$EDGESHIP_KEY_PASSPHRASE`` set, private keys are written encrypted (PKCS#8) and
read with it. Root keys may live elsewhere (other machines, removable tokens): any
folder in ``$EDGESHIP_ROOT_KEY_DIRS`` (``:``-separated) is searched for
``<key id>.key``, and ``edgeship keys sign-root --keys-dir DIR`` adds the
signatures of the root keys in DIR to a root change that is still short of its
threshold. Layout::

    <store>/root/<key id>.key          root private keys (move them offline: docs/security.md)
    <store>/online/<key id>.key        targets and timestamp private keys
    <store>/online.json                which online key signs for each role (local choice)
    <store>/metadata/<N>.root.json     every root version ever issued
    <store>/pending/<N>.root.json      a root change waiting for more root signatures
    <store>/people/<key id>.key        people's keys (each person moves theirs to their machine)

People and change control: the root also names the people who take part in a
release (``x-edgeship-people``: key id -> name and roles: builder, approver,
release-manager) and what each fleet requires before a bundle may run on it
(``x-edgeship-fleets``: fleet -> ``requires: [approved]``, ``two_person``). Both are
signed by the root threshold like the rest of the root, so devices take the
approvers' public keys and their fleet's rule from the root of trust they hold;
a holder of an online key can change neither (see docs/change-control.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Role, Root
from tuf.api.serialization.json import JSONSerializer

from orchestrator import project
from orchestrator.core.fsutil import exclusive_lock
from orchestrator.device.agent import rootmeta
from orchestrator.errors import KeyStoreError

log = logging.getLogger(__name__)

ENV_DIR = project.ENV_KEYS_DIR
ENV_PASSPHRASE = project.ENV_KEY_PASSPHRASE
ENV_ROOT_KEY_DIRS = "EDGESHIP_ROOT_KEY_DIRS"
ONLINE_ROLES = ("targets", "timestamp")  # snapshot is signed by the timestamp key
ROLES = ("root", "targets", "snapshot", "timestamp")
PEOPLE_FIELD = rootmeta.PEOPLE_FIELD
FLEETS_FIELD = rootmeta.FLEETS_FIELD
PERSON_ROLES = ("builder", "approver", "release-manager")
ROOT_VALID_DAYS = 365
WARN_DAYS = 30
PRETTY = JSONSerializer(compact=False)


def default_keys_dir() -> Path:
    """``$EDGESHIP_KEYS_DIR``, else ``~/.config/edgeship/keys``."""
    return project.keys_dir()


def env_passphrase() -> bytes | None:
    """``$EDGESHIP_KEY_PASSPHRASE`` as bytes, or None when unset or empty."""
    return project.key_passphrase()


def now_iso() -> str:
    """The current UTC time, ISO 8601 with a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tuf_key(public: Any) -> SSlibKey:
    """The TUF key (and its default key id) of an Ed25519 public key."""
    return SSlibKey.from_crypto(public)


def key_pem(key: Any) -> str:
    """A TUF ed25519 key as SubjectPublicKeyInfo PEM (what ``openssl -pubin`` reads): the
    same conversion devices make (:func:`orchestrator.device.agent.rootmeta.key_pem`)."""
    return rootmeta.key_pem({"keyval": key.keyval})


@dataclass
class TrustSet:
    """The root of trust at one version: what devices hold, viewed by role."""

    root: Metadata[Root]
    data: bytes  # the root.json bytes as issued
    active: str = ""  # the targets key that signs new bundles (local choice)
    revoked: list[str] = field(default_factory=list)  # online keys removed by an earlier root

    @property
    def serial(self) -> int:
        """The root's version (devices call it the trust serial)."""
        return int(self.root.signed.version)

    @property
    def expires(self) -> datetime:
        return self.root.signed.expires

    def role_keys(self, role: str) -> dict[str, str]:
        """Key id -> public key PEM of the keys of ``role``."""
        signed = self.root.signed
        return {kid: key_pem(signed.keys[kid]) for kid in signed.roles[role].keyids}

    def threshold(self, role: str) -> int:
        return int(self.root.signed.roles[role].threshold)

    @property
    def keys(self) -> dict[str, str]:
        """The keys allowed to sign bundles, rollback orders and feed indexes (targets role)."""
        return self.role_keys("targets")

    def trusts(self, kid: str) -> bool:
        """True when ``kid`` may sign bundles."""
        return kid in self.keys

    @property
    def people(self) -> dict[str, dict[str, Any]]:
        """Key id -> ``{"name", "roles"}`` of the people the root names."""
        return dict(self.root.signed.unrecognized_fields.get(PEOPLE_FIELD) or {})

    def person(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """(key id, entry) of the person called ``name``, or None."""
        for kid, entry in self.people.items():
            if entry.get("name") == name:
                return kid, entry
        return None

    def fleet_policy(self, fleet: str) -> dict[str, Any]:
        """What the root requires of bundles for ``fleet`` (``{}`` when nothing)."""
        return dict((self.root.signed.unrecognized_fields.get(FLEETS_FIELD) or {}).get(fleet) or {})


@dataclass(frozen=True)
class KeyInfo:
    """One key of the store, as ``edgeship keys list`` shows it."""

    key_id: str
    status: str  # root | targets | timestamp, "(active)" when it signs; revoked | unknown
    created_at: str
    has_private: bool
    path: Path


@dataclass(frozen=True)
class RootChange:
    """What a root change did: published (threshold met) or pending more signatures."""

    version: int
    published: bool
    signed_by: list[str]
    needed: int  # root signatures the stricter of old and new root requires
    path: Path
    new_key: str | None = None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically into a new file of mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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


def _valid_signers(root: Root, md: Metadata[Root]) -> set[str]:
    """Key ids of ``root``'s root role whose signatures over ``md`` verify."""
    result = root.get_verification_result("root", md.signed_bytes, md.signatures)
    return set(result.signed)


class KeyStore:
    """The TUF keys and root metadata of one edgeship repository, in one private folder."""

    def __init__(self, path: Path | None = None, passphrase: bytes | None = None) -> None:
        self.path = (path or default_keys_dir()).expanduser()
        self.passphrase = passphrase if passphrase is not None else env_passphrase()

    # -- paths and safety -------------------------------------------------------------------

    @property
    def metadata(self) -> Path:
        return self.path / "metadata"

    @property
    def pending(self) -> Path:
        return self.path / "pending"

    def root_path(self, version: int) -> Path:
        return self.metadata / f"{version}.root.json"

    def key_path(self, kid: str) -> Path:
        """Where the store keeps (or would keep) the private key ``kid``."""
        for kind in ("online", "root", "people"):
            path = self.path / kind / f"{kid}.key"
            if path.is_file():
                return path
        return self.path / "online" / f"{kid}.key"

    def pub_path(self, kid: str) -> Path:
        """``<store>/public/<kid>.pem``: a key of any root version, as ``openssl -pubin`` reads."""
        path = self.path / "public" / f"{kid}.pem"
        if not path.is_file():
            for version in reversed(self.versions()):
                signed = Metadata[Root].from_file(str(self.root_path(version))).signed
                if kid in signed.keys:
                    _write_private(path, key_pem(signed.keys[kid]).encode())
                    break
            else:
                raise KeyStoreError(f"error: key {kid} is in no root version of {self.path}")
        return path

    def exists(self) -> bool:
        """True once ``keys init`` has run here."""
        return self.root_path(1).is_file()

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
            if (self.path / "trust.json").is_file():
                raise KeyStoreError(
                    f"error: {self.path} holds a trust set of the format before TUF roles; "
                    "create a new key store with 'edgeship keys init' (another "
                    f"{ENV_DIR}) and re-enrol devices with 'edgeship enroll --reset-trust'"
                )
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

    def _new_key(self, kind: str) -> SSlibKey:
        private = Ed25519PrivateKey.generate()
        key = tuf_key(private.public_key())
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self.passphrase)
            if self.passphrase
            else serialization.NoEncryption()
        )
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        _write_private(self.path / kind / f"{key.keyid}.key", pem)
        log.info("generated %s key %s in %s", kind, key.keyid, self.path)
        return key

    def _root_key_dirs(self, extra: list[Path] | None = None) -> list[Path]:
        dirs = [self.path / "root", *(extra or [])]
        for entry in os.environ.get(ENV_ROOT_KEY_DIRS, "").split(os.pathsep):
            if entry:
                dirs.append(Path(entry).expanduser())
        return dirs

    def _load_private(self, path: Path) -> Ed25519PrivateKey:
        self._check_mode(path)
        try:
            key = serialization.load_pem_private_key(
                path.read_bytes(), password=self.passphrase or None
            )
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

    def private_key(self, kid: str) -> Ed25519PrivateKey:
        """Load an online private key (decrypting with the passphrase); refuses unsafe modes."""
        path = self.path / "online" / f"{kid}.key"
        if not path.is_file():
            raise KeyStoreError(f"error: no private key {kid} in {self.path / 'online'}")
        return self._load_private(path)

    def _root_signers(self, wanted: set[str], extra: list[Path] | None = None) -> dict:
        """Key id -> signer for every root key of ``wanted`` found in the root key folders."""
        found: dict[str, CryptoSigner] = {}
        for folder in self._root_key_dirs(extra):
            for kid in sorted(wanted - set(found)):
                path = folder / f"{kid}.key"
                if path.is_file():
                    private = self._load_private(path)
                    found[kid] = CryptoSigner(private, tuf_key(private.public_key()))
        return found

    def _online(self) -> dict[str, str]:
        path = self.path / "online.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    def _set_online(self, role: str, kid: str) -> None:
        online = self._online()
        online[role] = kid
        _write_private(self.path / "online.json", (json.dumps(online, indent=2) + "\n").encode())

    def online_key(self, role: str) -> tuple[str, Ed25519PrivateKey]:
        """The online key that signs for ``role`` (targets or timestamp), if the root allows it."""
        trust = self.trust()
        kid = self._online().get(role, "")
        if kid not in trust.root.signed.roles[role].keyids:
            raise KeyStoreError(
                f"error: the {role} key {kid or '(none)'} is not in the {role} role of root "
                f"version {trust.serial}; run 'edgeship keys rotate --role {role}'"
            )
        return kid, self.private_key(kid)

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The targets key (id, private key): signs bundles, rollback orders and indexes."""
        return self.online_key("targets")

    def timestamp_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The timestamp key (id, private key): signs short-lived freshness documents."""
        return self.online_key("timestamp")

    def online_signer(self, role: str) -> CryptoSigner:
        """A python-tuf signer for the online key of ``role``."""
        _, private = self.online_key(role)
        return CryptoSigner(private, tuf_key(private.public_key()))

    # -- the root ---------------------------------------------------------------------------

    def versions(self) -> list[int]:
        return sorted(int(p.name.split(".", 1)[0]) for p in self.metadata.glob("*.root.json"))

    def trust(self) -> TrustSet:
        """The newest root, checked: signed by its own root threshold."""
        self._require()
        version = self.versions()[-1]
        path = self.root_path(version)
        data = path.read_bytes()
        try:
            md: Metadata[Root] = Metadata.from_bytes(data)
            md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise KeyStoreError(f"error: {path}: {exc}") from exc
        except Exception as exc:
            raise KeyStoreError(f"error: {path}: not a TUF root ({exc})") from exc
        return TrustSet(md, data, self._online().get("targets", ""), self._revoked(md))

    def _revoked(self, md: Metadata[Root]) -> list[str]:
        current = {k for r in ROLES for k in md.signed.roles[r].keyids}
        earlier: set[str] = set()
        for version in self.versions()[:-1]:
            old = Metadata[Root].from_file(str(self.root_path(version))).signed
            earlier |= {k for r in ROLES for k in old.roles[r].keyids}
        return sorted(earlier - current)

    def trust_files(self) -> bytes:
        """The newest root.json's bytes, as devices take it at enrolment."""
        return self.trust().data

    def trust_chain(self, since: int) -> list[tuple[int, bytes]]:
        """Every root version after ``since``, in order: (version, root.json bytes)."""
        self._require()
        return [(v, self.root_path(v).read_bytes()) for v in self.versions() if v > since]

    def _publish(
        self, md: Metadata[Root], previous: Root | None, extra: list[Path] | None
    ) -> RootChange:
        """Sign ``md`` with every root key at hand; publish it when both thresholds are met."""
        wanted = set(md.signed.roles["root"].keyids)
        if previous is not None:
            wanted |= set(previous.roles["root"].keyids)
        for signer in self._root_signers(wanted, extra).values():
            md.sign(signer, append=True)
        version = int(md.signed.version)
        valid = _valid_signers(md.signed, md)
        ok = len(valid) >= md.signed.roles["root"].threshold
        needed = md.signed.roles["root"].threshold
        if previous is not None:
            old_valid = _valid_signers(previous, md)
            ok = ok and len(old_valid) >= previous.roles["root"].threshold
            needed = max(needed, previous.roles["root"].threshold)
            valid |= old_valid
        if ok:
            path = self.root_path(version)
            self.metadata.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(path, md.to_bytes(PRETTY))
            with contextlib.suppress(FileNotFoundError):
                (self.pending / path.name).unlink()
            log.info("published root version %d signed by %d root keys", version, len(valid))
        else:
            path = self.pending / f"{version}.root.json"
            _write_private(path, md.to_bytes(PRETTY))
            log.warning("root version %d waits for more root signatures", version)
        return RootChange(version, ok, sorted(valid), needed, path)

    def init(
        self, root_keys: int = 3, threshold: int = 2, valid_days: float = ROOT_VALID_DAYS
    ) -> KeyInfo:
        """Create root keys (``threshold`` of ``root_keys``), the online keys and root version 1."""
        if not 1 <= threshold <= root_keys:
            raise KeyStoreError(
                f"error: --threshold must be between 1 and --root-keys ({root_keys}), "
                f"found {threshold}"
            )
        with self._locked():
            if self.exists() or (self.path / "trust.json").is_file():
                raise KeyStoreError(
                    f"error: {self.path} already holds signing keys; use 'edgeship keys rotate'"
                )
            root = Root(
                version=1,
                expires=datetime.now(UTC).replace(microsecond=0) + timedelta(days=valid_days),
                consistent_snapshot=False,
            )
            root.roles["root"] = Role([], threshold)
            for _ in range(root_keys):
                root.add_key(self._new_key("root"), "root")
            for role in ONLINE_ROLES:
                key = self._new_key("online")
                root.add_key(key, role)
                if role == "timestamp":
                    root.add_key(key, "snapshot")
                self._set_online(role, key.keyid)
            change = self._publish(Metadata(root), None, None)
            if not change.published:
                raise KeyStoreError("error: the new root could not be signed by its own keys")
        return self._info(self._online()["targets"], self.trust())

    def change_root(
        self,
        mutate: Callable[[Root], str | None],
        valid_days: float = ROOT_VALID_DAYS,
        extra_dirs: list[Path] | None = None,
    ) -> RootChange:
        """The next root version: ``mutate`` edits a copy (returns a new key id or None)."""
        with self._locked():
            if any(self.pending.glob("*.root.json")):
                waiting = sorted(p.name for p in self.pending.glob("*.root.json"))
                raise KeyStoreError(
                    f"error: a root change is waiting for root signatures ({', '.join(waiting)} "
                    f"in {self.pending}); complete it with 'edgeship keys sign-root --keys-dir "
                    "DIR' or remove it first"
                )
            current = self.trust().root
            md = Metadata[Root].from_bytes(current.to_bytes())
            md.signatures.clear()
            new_key = mutate(md.signed)
            md.signed.version = current.signed.version + 1
            md.signed.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(
                days=valid_days
            )
            change = self._publish(md, current.signed, extra_dirs)
        return RootChange(
            change.version, change.published, change.signed_by, change.needed, change.path, new_key
        )

    def sign_root(self, keys_dir: Path | None = None) -> RootChange:
        """Add the signatures of root keys in ``keys_dir`` to the waiting root change."""
        with self._locked():
            waiting = sorted(self.pending.glob("*.root.json"))
            if not waiting:
                raise KeyStoreError(f"error: no root change is waiting in {self.pending}")
            md = Metadata[Root].from_file(str(waiting[0]))
            previous = self.trust().root.signed
            if md.signed.version != previous.version + 1:
                raise KeyStoreError(
                    f"error: {waiting[0]} is version {md.signed.version}; the store's root is "
                    f"version {previous.version}; remove the stale file"
                )
            change = self._publish(md, previous, [keys_dir] if keys_dir else None)
            note = waiting[0].with_suffix(".online")
            if change.published and note.is_file():
                entry = json.loads(note.read_text())
                self._set_online(str(entry["role"]), str(entry["key_id"]))
                note.unlink()
            return change

    def rotate(self, role: str = "targets", valid_days: float = ROOT_VALID_DAYS) -> RootChange:
        """A new key for ``role``; for online roles it becomes the one that signs.

        The previous online key stays in its role (what it signed still verifies)
        until ``revoke`` removes it.
        """
        if role not in ("root", *ONLINE_ROLES):
            raise KeyStoreError(
                f"error: --role: expected root, targets or timestamp, found '{role}'"
            )

        def add(root: Root) -> str:
            key = self._new_key("root" if role == "root" else "online")
            root.add_key(key, role)
            if role == "timestamp":
                root.add_key(key, "snapshot")
            return key.keyid

        change = self.change_root(add, valid_days)
        if role in ONLINE_ROLES and change.new_key:
            if change.published:
                self._set_online(role, change.new_key)
            else:  # becomes the signing key once the root change is published
                note = {"role": role, "key_id": change.new_key}
                _write_private(change.path.with_suffix(".online"), json.dumps(note).encode())
        return change

    def revoke(self, kid: str, valid_days: float = ROOT_VALID_DAYS) -> RootChange:
        """Remove ``kid`` from every role of the next root (signed by the root threshold)."""
        trust = self.trust()
        signed = trust.root.signed
        roles = [r for r in ROLES if kid in signed.roles[r].keyids]
        if not roles:
            known = sorted(signed.keys)
            raise KeyStoreError(
                f"error: key {kid} is in no role of root version {trust.serial}; keys: "
                + ", ".join(known)
            )
        for role in ONLINE_ROLES:
            if self._online().get(role) == kid:
                raise KeyStoreError(
                    f"error: {kid} is the active {role} key; run 'edgeship keys rotate --role "
                    f"{role}' first, then revoke it"
                )
        if "root" in roles:
            left = len(signed.roles["root"].keyids) - 1
            if left < signed.roles["root"].threshold:
                raise KeyStoreError(
                    f"error: removing {kid} leaves {left} root keys, fewer than the threshold "
                    f"{signed.roles['root'].threshold}; add a root key first "
                    "('edgeship keys rotate --role root')"
                )

        def remove(root: Root) -> None:
            for role in roles:
                root.revoke_key(kid, role)

        return self.change_root(remove, valid_days)

    def add_person(
        self, name: str, roles: list[str], valid_days: float = ROOT_VALID_DAYS
    ) -> RootChange:
        """A new Ed25519 key for the person ``name`` with ``roles``, named in the next root."""
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise KeyStoreError(
                f"error: person: expected a name of letters, digits, '-', '_' or '.', "
                f"found '{name}'"
            )
        unknown = [r for r in roles if r not in PERSON_ROLES]
        if unknown or not roles:
            raise KeyStoreError(
                f"error: --role: expected one or more of {', '.join(PERSON_ROLES)}, found "
                f"{', '.join(unknown) or 'none'}"
            )
        if self.trust().person(name) is not None:
            raise KeyStoreError(f"error: the root already names a person '{name}'")

        def add(root: Root) -> str:
            key = self._new_key("people")
            root.keys[key.keyid] = key
            people = dict(root.unrecognized_fields.get(PEOPLE_FIELD) or {})
            people[key.keyid] = {"name": name, "roles": sorted(set(roles))}
            root.unrecognized_fields[PEOPLE_FIELD] = people
            return key.keyid

        return self.change_root(add, valid_days)

    def remove_person(self, name: str, valid_days: float = ROOT_VALID_DAYS) -> RootChange:
        """Take the person ``name`` and their key out of the next root. Their approvals stop
        counting everywhere the new root arrives: a device refuses a bundle approved only by
        them, so approve again, by someone the root still names, what must keep running."""
        found = self.trust().person(name)
        if found is None:
            known = ", ".join(sorted(str(e.get("name")) for e in self.trust().people.values()))
            raise KeyStoreError(
                f"error: the root names no person '{name}' (people: {known or 'none'})"
            )
        kid = found[0]

        def remove(root: Root) -> None:
            people = dict(root.unrecognized_fields.get(PEOPLE_FIELD) or {})
            people.pop(kid, None)
            root.unrecognized_fields[PEOPLE_FIELD] = people
            in_roles = any(kid in r.keyids for r in root.roles.values())
            if not in_roles:
                root.keys.pop(kid, None)

        return self.change_root(remove, valid_days)

    def set_fleet_policy(
        self,
        fleet: str,
        requires: list[str],
        two_person: bool,
        valid_days: float = ROOT_VALID_DAYS,
    ) -> RootChange:
        """Name in the next root what ``fleet`` requires of a bundle (devices enforce it)."""

        def change(root: Root) -> None:
            fleets = dict(root.unrecognized_fields.get(FLEETS_FIELD) or {})
            if requires or two_person:
                fleets[fleet] = {"requires": sorted(set(requires)), "two_person": two_person}
            else:
                fleets.pop(fleet, None)
            root.unrecognized_fields[FLEETS_FIELD] = fleets

        return self.change_root(change, valid_days)

    def person_key(self, name: str) -> tuple[str, dict[str, Any], Ed25519PrivateKey]:
        """(key id, entry, private key) of the person ``name``; KeyStoreError when unknown."""
        trust = self.trust()
        found = trust.person(name)
        if found is None:
            known = ", ".join(sorted(str(e.get("name")) for e in trust.people.values()))
            raise KeyStoreError(
                f"error: the root names no person '{name}' (people: {known or 'none'}); add "
                f"one with: edgeship keys add-person {name} --role approver"
            )
        kid, entry = found
        path = self.path / "people" / f"{kid}.key"
        if not path.is_file():
            raise KeyStoreError(f"error: no private key of {name} ({kid}) at {path}")
        return kid, entry, self._load_private(path)

    def renew(self, valid_days: float = ROOT_VALID_DAYS) -> RootChange:
        """The same roles in a new root version with a new expiry."""
        return self.change_root(lambda root: None, valid_days)

    def _info(self, kid: str, trust: TrustSet) -> KeyInfo:
        signed = trust.root.signed
        online = self._online()
        roles = [r for r in ("root", *ONLINE_ROLES) if kid in signed.roles[r].keyids]
        person = trust.people.get(kid)
        if person is not None:
            status = f"person {person.get('name')} ({', '.join(person.get('roles') or [])})"
        elif roles:
            status = ",".join(roles) + (
                " (active)" if any(online.get(r) == kid for r in roles if r != "root") else ""
            )
        elif kid in trust.revoked:
            status = "revoked"
        else:
            status = "unknown"
        path = self.key_path(kid)
        created = ""
        if path.is_file():
            created = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        return KeyInfo(kid, status, created, path.is_file(), path)

    def list_keys(self) -> list[KeyInfo]:
        """Every key of the current root, and every revoked one, with its role."""
        trust = self.trust()
        ids = set(trust.root.signed.keys) | set(trust.revoked)
        return [self._info(k, trust) for k in sorted(ids)]
