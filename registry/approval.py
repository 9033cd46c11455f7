"""Approvals: a named person's Ed25519 signature that a bundle may go out.

An approval lies beside the bundle's manifest, in the bundle folder::

    bundles/<deployment>/<version>/approval.json       what the approver signed
    bundles/<deployment>/<version>/approval.json.sig   raw 64-byte Ed25519 signature

``approval.json`` names the bundle (deployment, version, manifest sha256), the
approver (name, key id, roles as the root names them), the comment and the time.
It travels with the bundle's signed envelope, so a device checks it with stock
``openssl`` against the approver keys of the root of trust it holds, before any
file of the bundle is sent. What a fleet requires (``requires: [approved]``,
``two_person``) is stated in the fleet file and, for devices, in the root
(:meth:`registry.keys.KeyStore.set_fleet_policy`).

Two-person rule: the approver must be another person than the one who built the
artifact (``provenance.built_by``) and the one who bundled it (``provenance.bundled_by``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.device.agent import rootmeta
from orchestrator.device.agent.files import APPROVAL, APPROVAL_SIG
from orchestrator.errors import ApprovalError
from registry.keys import KeyStore, TrustSet
from registry.signing import canonical_json, load_public_pem, sha256_bytes, sign, verify

APPROVAL_KIND = "edgeship.approval"
REQUIREMENTS = ("approved",)


@dataclass(frozen=True)
class Requirement:
    """What a fleet requires of a bundle before it may run there."""

    approved: bool = False
    two_person: bool = False

    @classmethod
    def of(cls, requires: list[str], two_person: bool) -> Requirement:
        return cls("approved" in requires or two_person, two_person)

    def __or__(self, other: Requirement) -> Requirement:
        return Requirement(self.approved or other.approved, self.two_person or other.two_person)

    def describe(self) -> str:
        if not self.approved:
            return "nothing"
        return "an approval" + (" by a second person (two_person)" if self.two_person else "")


def fleet_requirement(fleet: Any, trust: TrustSet | None) -> Requirement:
    """The stricter of what the fleet file and the root of trust require for ``fleet``."""
    req = Requirement.of(
        list(getattr(fleet, "requires", []) or []), bool(getattr(fleet, "two_person", False))
    )
    if trust is not None:
        policy = trust.fleet_policy(fleet.name)
        req = req | Requirement.of(
            list(policy.get("requires") or []), bool(policy.get("two_person"))
        )
    return req


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def approve(
    bundle: Any,
    store: KeyStore,
    person: str,
    comment: str,
    now: str | None = None,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sign an approval of ``bundle`` (a :class:`registry.bundle.Bundle`) as ``person``.

    Refuses a person without the approver role, a bundle whose signature does not hold,
    and a comment that is empty. Writes ``approval.json`` and its signature; returns it.
    """
    from registry.bundle import signature_problem

    kid, entry, private = store.person_key(person)
    roles = list(entry.get("roles") or [])
    if "approver" not in roles:
        raise ApprovalError(
            f"error: --as: expected a person with the approver role, found {person} "
            f"({', '.join(roles) or 'no roles'})"
        )
    if not comment.strip():
        raise ApprovalError("error: --comment: expected why this bundle may go out, found ''")
    why = signature_problem(bundle.path, store.trust())
    if why is not None:
        raise ApprovalError(f"error: cannot approve {bundle.path}: {why}")
    doc = {
        "schema": 1,
        "kind": APPROVAL_KIND,
        "deployment": bundle.deployment,
        "version": bundle.version,
        "manifest_sha256": bundle.digest,
        "comment": comment,
        "approved_at": now or now_iso(),
        "approver": {"name": person, "key_id": kid, "roles": roles},
    }
    if changes is not None:
        doc["changes"] = changes
    data = canonical_json(doc)
    (bundle.path / APPROVAL).write_bytes(data)
    (bundle.path / APPROVAL_SIG).write_bytes(sign(private, data))
    return doc


def read_approval(path: Path) -> dict[str, Any] | None:
    """The approval in bundle folder ``path`` (unchecked), or None when there is none."""
    file = path / APPROVAL
    if not file.is_file():
        return None
    try:
        doc = json.loads(file.read_bytes())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def approval_problem(
    path: Path, manifest: dict[str, Any], trust: TrustSet, two_person: bool = False
) -> str | None:
    """Why the bundle in folder ``path`` is not approved under ``trust``, or None when it is.

    The same judgement as the device agent's (:meth:`orchestrator.device.agent.verify.Verifier.
    check_approval`): the signature over the approval's exact bytes by a key the root
    names as an approver's, the bundle it names, and the two-person rule when asked.
    """
    file, sig = path / APPROVAL, path / APPROVAL_SIG
    if not file.is_file():
        return f"no approval: {file} is missing (approve it with: edgeship approve)"
    if not sig.is_file():
        return f"the approval has no signature: {sig} is missing"
    data = file.read_bytes()
    problem = rootmeta.approval_problem(
        data,
        manifest,
        sha256_bytes((path / "manifest.json").read_bytes()),
        trust.root.signed.to_dict(),
        lambda pem: verify(load_public_pem(pem), data, sig.read_bytes()),
        two_person,
    )
    return None if problem is None else problem[1]
