"""What changed in a bundle version since the last approved one, and whether a deployment's
declared change plan covers it (``edgeship changes``, checked again by ``edgeship approve``).

A deployment may declare the changes an approval may cover without a new plan::

    deployment:
      change_plan:
        covers: [recipe, data, weights]   # kinds of change this plan allows
        gates: ["agreement >= 0.95"]      # gates that must have passed, as written
        approvers: [alice]                # who may approve (anyone with the role if empty)

The plan that governs a version is the one of the last approved version (the plan a
reviewer already accepted); a version that changes the plan itself is outside it. Each
change is classified by kind: ``recipe``, ``target``, ``gates`` (gates and validation
settings), ``data`` (data loaders and the evaluation and training data hashes),
``weights`` (the reference's weights or file), ``model`` (any other model field) and
``code`` (the git commit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry.bundle import Bundle, Ledger, bundles_root, find_bundle, issued_versions

IGNORED = ("deployment.description", "deployment.change_plan")
DATA_HASHES = {
    "eval_data_sha256": "data",
    "train_data_sha256": "data",
    "eval_samples": "data",
    "train_samples": "data",
    "train_data": "data",
    "weights_sha256": "weights",
    "source_sha256": "weights",
}


@dataclass
class Change:
    kind: str
    key: str
    before: Any
    after: Any


@dataclass
class ChangeReport:
    """The changes of ``version`` against ``base`` (the last approved version, if any)."""

    deployment: str
    version: int
    base: int | None
    changes: list[Change] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # why it is outside the plan

    @property
    def kinds(self) -> list[str]:
        return sorted({c.kind for c in self.changes})

    @property
    def within_plan(self) -> bool:
        return self.base is not None and self.plan is not None and not self.problems

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"kinds": self.kinds, "within_plan": self.within_plan}

    def lines(self) -> list[str]:
        if self.base is None:
            return [
                f"{self.deployment} version {self.version}: no earlier approved version; "
                "everything is new (a full review, no change plan applies)"
            ]
        out = [
            f"{self.deployment} version {self.version} against approved version {self.base}: "
            f"{len(self.changes)} change(s) ({', '.join(self.kinds) or 'none'})"
        ]
        for c in self.changes:
            out.append(f"  {c.kind:<8} {c.key}: {_short(c.before)} -> {_short(c.after)}")
        if self.plan is None:
            out.append("  no change plan: the approved version declares none")
        elif self.problems:
            out.append("  OUTSIDE the change plan:")
            out += [f"    {p}" for p in self.problems]
        else:
            out.append(f"  within the change plan (covers {', '.join(self.plan['covers'])})")
        return out


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): data}


def _spec(bundle: Bundle) -> dict[str, Any]:
    import yaml

    path = bundle.path / "spec.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def kind_of(key: str) -> str:
    """The kind of change a spec key stands for."""
    if key.startswith("recipe."):
        return "recipe"
    if key.startswith("target."):
        return "target"
    if key.startswith("deployment."):
        return "gates"
    if key.startswith("model.data.") or key.startswith("model.preprocessing"):
        return "data"
    if key.startswith(("model.source.weights", "model.source.path", "model.source.uri")):
        return "weights"
    return "model"


def last_approved(root: Path, deployment: str, version: int) -> int | None:
    """The highest version below ``version`` with an approval in the ledger."""
    folder = bundles_root(root) / deployment
    approved = {
        int(a["version"])
        for a in Ledger(folder, deployment).read().get("approvals", [])
        if int(a["version"]) < version
    }
    present = set(issued_versions(bundles_root(root), deployment))
    found = sorted(approved & present)
    return found[-1] if found else None


def compare(root: Path, deployment: str, version: int | None) -> ChangeReport:
    """The changes of a bundle version against the last approved one, judged by its plan."""
    bundle = find_bundle(bundles_root(root), deployment, version)
    base_version = last_approved(root, deployment, bundle.version)
    report = ChangeReport(bundle.deployment, bundle.version, base_version)
    if base_version is None:
        return report
    base = find_bundle(bundles_root(root), deployment, base_version)
    old_spec, new_spec = _spec(base), _spec(bundle)
    old, new = _flatten(old_spec), _flatten(new_spec)
    for key in sorted(set(old) | set(new)):
        if key.startswith(IGNORED) or old.get(key) == new.get(key):
            continue
        report.changes.append(Change(kind_of(key), key, old.get(key), new.get(key)))
    old_p = base.manifest.get("provenance") or {}
    new_p = bundle.manifest.get("provenance") or {}
    old_data = (old_p.get("validation") or {}).get("data") or {}
    new_data = (new_p.get("validation") or {}).get("data") or {}
    for key, kind in DATA_HASHES.items():
        if old_data.get(key) != new_data.get(key):
            report.changes.append(Change(kind, f"data.{key}", old_data.get(key), new_data.get(key)))
    old_commit = (old_p.get("git") or {}).get("commit")
    new_commit = (new_p.get("git") or {}).get("commit")
    if old_commit != new_commit:
        report.changes.append(Change("code", "git.commit", old_commit, new_commit))
    plan = (old_spec.get("deployment") or {}).get("change_plan")
    if not isinstance(plan, dict):
        report.problems.append("the approved version declares no change_plan")
        return report
    report.plan = {
        "covers": list(plan.get("covers") or []),
        "gates": list(plan.get("gates") or []),
        "approvers": list(plan.get("approvers") or []),
    }
    new_plan = (new_spec.get("deployment") or {}).get("change_plan")
    if new_plan != plan:
        report.problems.append("deployment.change_plan itself changed")
    outside = [k for k in report.kinds if k not in report.plan["covers"]]
    if outside:
        report.problems.append(
            f"changes of kind {', '.join(outside)}; the plan covers "
            f"{', '.join(report.plan['covers']) or 'nothing'}"
        )
    passed = {
        str(g.get("gate")).replace(" ", ""): bool(g.get("passed"))
        for g in ((new_p.get("validation") or {}).get("gates") or [])
    }
    for gate in report.plan["gates"]:
        if not passed.get(str(gate).replace(" ", "")):
            report.problems.append(f"gate '{gate}' the plan requires did not pass (or was not run)")
    return report


def approver_problem(report: ChangeReport, person: str) -> str | None:
    """Why ``person`` may not approve under the plan, or None."""
    if report.plan is None or not report.plan["approvers"]:
        return None
    if person in report.plan["approvers"]:
        return None
    return (
        f"the change plan names the approvers {', '.join(report.plan['approvers'])}; found {person}"
    )
