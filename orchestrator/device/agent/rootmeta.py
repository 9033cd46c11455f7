"""TUF root metadata as a device checks it: canonical JSON, key ids, signature thresholds.

The root of trust a device holds is a TUF ``root.json`` (the format python-tuf
writes; see docs/security.md). It names the keys of four roles, each with a
threshold: ``root`` (offline keys; only they can change the root), ``targets``
(the online key that signs bundles, rollback orders and phone feed indexes),
``timestamp`` and ``snapshot`` (the online key that signs short-lived freshness
documents). A new root version is accepted only when it is exactly one version
newer and signed by the root threshold of the root already trusted AND by its
own root threshold, as the TUF specification (section 5.3) says.

This module (Python 3.8 standard library, and the agent's raw-JSON rules in
:mod:`.rules`) is shared by the device agent and the phone client. The signature check itself is
passed in as ``verify(pem, data, signature) -> bool``: stock ``openssl`` on
devices, the platform's Ed25519 in apps.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime, timezone
from typing import Callable

from .rules import DuplicateKey, json_depth_problem, strict_json

Verify = Callable[[str, bytes, bytes], bool]  # (public key PEM, data, signature) -> valid

ROLES = ("root", "targets", "snapshot", "timestamp")
MAX_ROOT_BYTES = 1024 * 1024  # a root with a few dozen keys is a few kB
PEOPLE_FIELD = "x-edgeship-people"  # key id -> {"name", "roles"} (signed by the root threshold)
FLEETS_FIELD = "x-edgeship-fleets"  # fleet -> {"requires": [...], "two_person": bool}
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RootError(ValueError):
    """Root metadata refused; ``code`` names the kind of refusal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def strict_loads(
    data: bytes, source: str, limit: int = MAX_ROOT_BYTES, max_depth: int = 16, floats: bool = False
) -> object:
    """JSON from bytes no larger than ``limit`` nor nested deeper than ``max_depth``.

    Size and depth are checked on the raw bytes first (:func:`.rules.json_depth_problem`);
    duplicate keys and NaN are refused (:func:`.rules.strict_json`: a signed document
    means one thing), and so are floating-point numbers unless ``floats`` (canonical
    JSON has none).
    """
    if len(data) > limit:
        raise RootError("too_large", f"{source}: {len(data)} bytes; at most {limit} accepted")
    deep = json_depth_problem(data, max_depth)
    if deep is not None:
        raise RootError("too_deep", f"{source}: {deep}")
    try:
        doc = strict_json(data)
    except DuplicateKey as exc:
        raise RootError("duplicate_key", f"{source}: {exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise RootError("malformed_trust", f"{source}: invalid JSON ({exc})") from exc
    if not floats and _has_float(doc):
        raise RootError(
            "malformed_trust", f"{source}: a floating-point number (canonical JSON has none)"
        )
    return doc


def _has_float(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def canonical(value: object) -> bytes:
    """OLPC canonical JSON (what TUF signs): sorted keys, no spaces, only \\ and " escaped."""
    out: list = []

    def emit(item: object) -> None:
        if isinstance(item, str):
            out.append(_string(item))
        elif item is True:
            out.append("true")
        elif item is False:
            out.append("false")
        elif item is None:
            out.append("null")
        elif isinstance(item, int):
            out.append(str(item))
        elif isinstance(item, (list, tuple)):
            out.append("[")
            for i, element in enumerate(item):
                if i:
                    out.append(",")
                emit(element)
            out.append("]")
        elif isinstance(item, dict):
            out.append("{")
            for i, key in enumerate(sorted(item)):
                if i:
                    out.append(",")
                out.append(_string(key) + ":")
                emit(item[key])
            out.append("}")
        else:
            raise ValueError(f"cannot encode {type(item).__name__} in canonical JSON")

    emit(value)
    return "".join(out).encode("utf-8")


def key_pem(key: dict) -> str:
    """An ed25519 TUF key's public key as SubjectPublicKeyInfo PEM (what openssl reads)."""
    raw = bytes.fromhex(str(key["keyval"]["public"]))
    if len(raw) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    body = base64.b64encode(ED25519_SPKI_PREFIX + raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"


def default_keyid(key: dict) -> str:
    """TUF's key id: the SHA-256 of the canonical JSON of keytype, scheme and keyval."""
    fields = {"keytype": key["keytype"], "scheme": key["scheme"], "keyval": key["keyval"]}
    return hashlib.sha256(canonical(fields)).hexdigest()


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def parse_root(data: bytes, source: str) -> dict:
    """A root document ``{"signed": ..., "signatures": [...]}``, its structure checked."""
    doc = strict_loads(data, source)
    try:
        if not isinstance(doc, dict) or set(doc) != {"signed", "signatures"}:
            raise ValueError("expected an object with exactly 'signed' and 'signatures'")
        signed = doc["signed"]
        if signed.get("_type") != "root":
            raise ValueError(f"_type: expected 'root', found {signed.get('_type')!r}")
        version = signed["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version: expected a positive integer, found {version!r}")
        parse_time(str(signed["expires"]))
        for kid, key in signed["keys"].items():
            if key.get("keytype") != "ed25519" or key.get("scheme") != "ed25519":
                raise ValueError(f"keys.{kid}: only ed25519 keys are accepted")
            key_pem(key)
            if default_keyid(key) != kid:
                raise ValueError(f"keys.{kid}: the key's id is {default_keyid(key)}")
        for role in ROLES:
            entry = signed["roles"][role]
            threshold = entry["threshold"]
            if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
                raise ValueError(f"roles.{role}.threshold: expected 1 or more, found {threshold!r}")
            ids = list(entry["keyids"])
            if len(set(ids)) != len(ids) or any(k not in signed["keys"] for k in ids):
                raise ValueError(f"roles.{role}.keyids: duplicate or unknown key ids")
            if len(ids) < threshold:
                raise ValueError(f"roles.{role}: {len(ids)} keys cannot meet threshold {threshold}")
        for sig in doc["signatures"]:
            if not HEX64.match(str(sig["keyid"])) or not re.match(
                r"^[0-9a-f]{128}$", str(sig["sig"])
            ):
                raise ValueError("signatures: expected a key id and a 64-byte hex signature")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, RootError):
            raise
        raise RootError("malformed_trust", f"{source}: not a TUF root ({exc})") from exc
    return doc


def people(signed: dict) -> dict:
    """Key id -> ``{"name", "roles"}`` of the people a root's ``signed`` part names."""
    found = signed.get(PEOPLE_FIELD)
    if not isinstance(found, dict):
        return {}
    return {
        kid: entry
        for kid, entry in found.items()
        if isinstance(entry, dict) and kid in (signed.get("keys") or {})
    }


def fleet_policy(signed: dict, fleet: object) -> dict:
    """What a root requires of bundles for ``fleet`` (``{}`` when nothing)."""
    fleets = signed.get(FLEETS_FIELD)
    if not isinstance(fleets, dict) or not isinstance(fleet, str):
        return {}
    policy = fleets.get(fleet)
    return policy if isinstance(policy, dict) else {}


def role_keys(signed: dict, role: str) -> dict:
    """Key id -> PEM of the keys of ``role`` in a root's ``signed`` part."""
    return {kid: key_pem(signed["keys"][kid]) for kid in signed["roles"][role]["keyids"]}


def count_signatures(doc: dict, trusted: dict, role: str, verify: Verify) -> tuple:
    """(valid distinct signatures by keys of ``role`` in ``trusted``, that role's threshold)."""
    payload = canonical(doc["signed"])
    keys = role_keys(trusted, role)
    valid = set()
    for sig in doc["signatures"]:
        kid = sig["keyid"]
        fresh = kid in keys and kid not in valid
        if fresh and verify(keys[kid], payload, bytes.fromhex(sig["sig"])):
            valid.add(kid)
    return len(valid), int(trusted["roles"][role]["threshold"])


def check_first_root(doc: dict, source: str, verify: Verify) -> None:
    """A root taken on first use (enrolment): signed by its own root threshold."""
    count, threshold = count_signatures(doc, doc["signed"], "root", verify)
    if count < threshold:
        raise RootError(
            "bad_signature",
            f"{source}: signed by {count} of its root keys; its threshold is {threshold}",
        )


def check_root_update(current: dict, doc: dict, source: str, verify: Verify) -> None:
    """``doc`` may replace the trusted root ``current`` (both ``signed`` parts' owners).

    Exactly one version newer, signed by the threshold of the trusted root's root
    keys and by its own; nothing signed by other keys counts, whatever its version.
    """
    have, new = int(current["signed"]["version"]), int(doc["signed"]["version"])
    if new != have + 1:
        raise RootError(
            "stale_trust" if new <= have else "trust_gap",
            f"{source}: root version {new} does not follow the trusted version {have} "
            f"(expected {have + 1})",
        )
    trusted = f"of the trusted root keys; the trusted root (version {have}) requires"
    for signers, needs in (
        (current["signed"], trusted),
        (doc["signed"], "of its own root keys; it requires"),
    ):
        count, threshold = count_signatures(doc, signers, "root", verify)
        if count < threshold:
            raise RootError(
                "untrusted_root",
                f"{source}: root version {new} is signed by {count} {needs} {threshold}",
            )


def expired(signed: dict, now: datetime | None = None) -> bool:
    """Whether a root (or any TUF ``signed`` part) has expired."""
    return parse_time(str(signed["expires"])) <= (now or datetime.now(timezone.utc))


def approval_problem(
    data: bytes, manifest: dict, digest: str, signed: dict, verify_with, two_person: bool
):
    """Why an approval's bytes ``data`` do not approve this bundle, as (code, message), or None.

    ``signed`` is the root's signed part; ``verify_with(pem)`` says whether the approval's
    signature verifies with the PEM public key. The signer must be a person the root names
    with the approver role; the approval must name this bundle (deployment, version,
    manifest digest); with ``two_person`` the approver must be neither who built the
    artifact nor who bundled it (the signed manifest's provenance).
    """
    approvers = {
        kid: entry
        for kid, entry in people(signed).items()
        if "approver" in (entry.get("roles") or [])
    }
    signer = None
    for kid in sorted(approvers):
        if verify_with(key_pem(signed["keys"][kid])):
            signer = kid
            break
    if signer is None:
        return (
            "not_approved",
            "the approval's signature does not verify with the key of any approver the root "
            "of trust names",
        )
    try:
        doc = strict_loads(data, "approval.json")
    except RootError as exc:
        return ("not_approved", "approval.json: " + exc.message)
    if not isinstance(doc, dict) or doc.get("kind") != "edgeship.approval":
        return ("not_approved", "approval.json is not an edgeship approval")
    if (
        doc.get("deployment") != manifest.get("deployment")
        or doc.get("version") != manifest.get("version")
        or doc.get("manifest_sha256") != digest
    ):
        return (
            "not_approved",
            "the approval names {} version {} (manifest {}); this bundle is {} version {} "
            "(manifest {})".format(
                doc.get("deployment"),
                doc.get("version"),
                str(doc.get("manifest_sha256"))[:12],
                manifest.get("deployment"),
                manifest.get("version"),
                digest[:12],
            ),
        )
    name = approvers[signer].get("name")
    if two_person:
        provenance = manifest.get("provenance") or {}
        bundled = (provenance.get("bundled_by") or {}).get("user")
        built = provenance.get("built_by")
        if name in (bundled, built):
            return (
                "two_person",
                "approved by {}, who also {} it; this fleet requires an approver other than "
                "the builder and the bundler".format(name, "built" if name == built else "bundled"),
            )
    return None
