"""``edgeship bundle``'s logic: sign a passing artifact, list issued bundles, open one.

The CLI parses and prints; this module finds the artifact, decides what to
record and calls :mod:`registry.bundle`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import BundleError, Problem, UsageError
from orchestrator.project import artifacts_root, bundles_root


@dataclass
class BundleMade:
    """A new bundle, and where its build's evidence is."""

    bundle: Any  # registry.bundle.Bundle
    run_id: str | None  # the build's MLflow run, when it has one
    recorded: bool  # whether the bundle was recorded on that run


def issued(root: Path, deployment: str) -> tuple[Path, list[dict[str, Any]]]:
    """The bundle folder of a deployment and its ledger of issued bundles."""
    from registry.bundle import Ledger

    folder = bundles_root(root) / deployment
    return folder, Ledger(folder, deployment).read()["issued"]


def rollback_order(
    root: Path,
    deployment: str,
    version: int,
    store: Any,
    days: float,
    from_version: int,
    fleet: str | None = None,
    device: str | None = None,
) -> Any:
    """Sign a one-time rollback order from ``from_version`` back to an issued version, for a
    fleet and/or one device; returns (bundle, order path)."""
    from registry.bundle import find_bundle, issue_rollback

    bundle = find_bundle(bundles_root(root), deployment, version)
    path = issue_rollback(bundle, store, from_version, fleet=fleet, device=device, valid_days=days)
    return bundle, path


def find_issued(root: Path, deployment: str, version: int | None) -> Any:
    """An issued bundle (the newest when ``version`` is None)."""
    from registry.bundle import find_bundle

    return find_bundle(bundles_root(root), deployment, version)


def bundle_artifact(
    root: Path,
    deployment: str,
    store: Any,
    valid_days: int,
    record: bool = True,
    allow_dirty: bool = False,
) -> BundleMade:
    """Sign the passing artifact of ``deployment`` as its next bundle version."""
    from registry.bundle import make_bundle

    artifacts = artifacts_root(root)
    artifact = artifacts / deployment
    if not (artifact / "runtime.json").is_file():
        have = sorted(p.name for p in artifacts.glob("*") if (p / "runtime.json").is_file())
        raise BundleError(
            f"error: no passing artifact at {artifact} "
            f"(artifacts: {', '.join(have) or 'none'}); "
            f"build it with: edgeship build deployment={deployment}"
        )
    build_file = artifact / "build.json"
    build = json.loads(build_file.read_text()) if build_file.is_file() else {}
    run_id = (build.get("mlflow") or {}).get("run_id")
    tracker = None
    if run_id and record:
        from registry.tracking import Tracker

        tracker = Tracker(root)
    bundle = make_bundle(
        artifact,
        store,
        bundles_root(root),
        valid_days=valid_days,
        tracker=tracker,
        allow_dirty=allow_dirty,
    )
    return BundleMade(bundle, run_id, tracker is not None)


@contextmanager
def open_bundle(
    root: Path, path: Path | None, deployment: str | None, version: int | None
) -> Iterator[Any]:
    """The bundle a deploy or publish sends: a folder or an exported file given by path,
    else an issued version of ``deployment`` (the newest when ``version`` is None)."""
    from registry.bundle import Bundle, unpack_export

    if path is not None:
        if path.is_dir():
            yield Bundle.open(path)
            return
        if not path.is_file():
            raise BundleError(f"error: --bundle {path}: no such file or folder")
        tmp = Path(tempfile.mkdtemp(prefix="edgeship-bundle-"))
        try:
            yield Bundle.open(unpack_export(path, tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if deployment is None:
        raise UsageError(
            [
                Problem(
                    "command line",
                    "deployment",
                    "missing; expected deployment=NAME (or --bundle FILE)",
                )
            ]
        )
    yield find_issued(root, deployment, version)


def approve_bundle(
    root: Path,
    deployment: str,
    version: int | None,
    store: Any,
    person: str,
    comment: str,
    record: bool = True,
    outside_plan: bool = False,
) -> tuple[Any, dict[str, Any], Any]:
    """Sign ``person``'s approval of an issued bundle; recorded in the deployment's ledger
    and, when the bundle came from a registered MLflow model version, as its tags.

    The changes since the last approved version are judged by its change plan: changes
    outside it are refused unless ``outside_plan`` (then the approval says so); a person
    the plan does not name as an approver is refused. Returns (bundle, approval, changes).
    """
    from orchestrator.errors import ApprovalError
    from orchestrator.ship.changes import approver_problem, compare
    from registry.approval import approve
    from registry.bundle import Ledger

    bundle = find_issued(root, deployment, version)
    report = compare(root, deployment, bundle.version)
    why = approver_problem(report, person)
    if why is not None:
        raise ApprovalError(f"error: --as: {why}")
    if report.plan is not None and report.problems and not outside_plan:
        raise ApprovalError(
            "\n".join(
                [
                    f"error: {deployment} version {bundle.version} is outside its change plan; "
                    "review the changes and approve with --outside-plan (recorded), or declare "
                    "a new plan",
                    *report.lines(),
                ]
            )
        )
    summary = {
        "against_version": report.base,
        "kinds": report.kinds,
        "within_plan": report.within_plan,
        "outside_plan_accepted": bool(report.plan is not None and report.problems),
    }
    folder = bundles_root(root) / deployment
    with Ledger(folder, deployment).locked() as ledger:
        doc = approve(bundle, store, person, comment, changes=summary)
        ledger.append(
            "approvals",
            {
                "version": bundle.version,
                "manifest_sha256": bundle.digest,
                "approved_at": doc["approved_at"],
                "approver": doc["approver"],
                "comment": comment,
                "changes": summary,
            },
        )
    # the approval files become targets of the repository too: devices that pull fetch them
    from registry.repository import Repository

    Repository(bundles_root(root), store).add_bundle(bundle.path, deployment, bundle.version)
    source = (bundle.manifest.get("provenance") or {}).get("mlflow") or {}
    if record and source.get("model_name") and source.get("model_version"):
        from registry.tracking import Tracker

        prefix = f"edgeship.bundle.{bundle.version}.approval"
        Tracker(root).tag_version(
            str(source["model_name"]),
            str(source["model_version"]),
            {
                f"{prefix}.by": doc["approver"]["name"],
                f"{prefix}.key_id": doc["approver"]["key_id"],
                f"{prefix}.at": doc["approved_at"],
                f"{prefix}.comment": comment,
            },
        )
    return bundle, doc, report
