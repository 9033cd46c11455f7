"""``edgeship audit deployment=NAME version=N``: one document a reviewer can file.

Everything is taken from records this installation keeps, each checked where it can be:

* the signed bundle (its manifest's signature against the key store's root of trust) and
  the spec it was built from (``spec.yaml``: intended use, model card fields);
* the data (evaluation, training, weights hashes), the recipe and the validation gates,
  from the signed manifest's provenance;
* who built, bundled, approved (the signed approval, checked) and rolled out (journals);
* where it runs now and since when, and the incidents (halts, rollbacks, refusals),
  from the rollout journals.

:func:`render_html` writes it with ``templates/audit.html.j2``; :func:`print_pdf` prints
that HTML to PDF with headless Chromium when it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import MissingDependencyError, RolloutJournalError
from orchestrator.ship.rollout.journal import Journal, journals, rollouts_dir
from registry.bundle import Bundle, Ledger, bundles_root, find_bundle, signature_problem

# headless Chromium that reaches nothing but the page it is given
HEADLESS_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
CHROMIUM_FLAGS = [*HEADLESS_FLAGS, "--no-pdf-header-footer"]


@dataclass
class Audit:
    """What one bundle version is, who let it out, where it runs and what went wrong."""

    deployment: str
    version: int
    digest: str
    manifest: dict[str, Any]
    spec: dict[str, Any]
    signature: dict[str, Any]
    approvals: list[dict[str, Any]]
    approval: dict[str, Any]
    rollouts: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    generated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _spec(bundle: Bundle) -> dict[str, Any]:
    import yaml

    path = bundle.path / "spec.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _people(store: Any) -> dict[str, dict[str, Any]]:
    if store is None or not store.exists():
        return {}
    return dict(store.trust().people)


def _signature(bundle: Bundle, store: Any) -> dict[str, Any]:
    kid = bundle.key_id
    if store is None or not store.exists():
        return {"key_id": kid, "ok": None, "detail": "no key store here to check it"}
    why = signature_problem(bundle.path, store.trust())
    trust = store.trust()
    return {
        "key_id": kid,
        "ok": why is None,
        "detail": why or f"Ed25519 by the targets key {kid} of root version {trust.serial}",
    }


def _approval(bundle: Bundle, store: Any, two_person: bool) -> dict[str, Any]:
    from registry.approval import approval_problem, read_approval

    doc = read_approval(bundle.path)
    if doc is None:
        return {"ok": False, "detail": "not approved", "doc": None}
    if store is None or not store.exists():
        return {"ok": None, "detail": "no key store here to check it", "doc": doc}
    why = approval_problem(bundle.path, bundle.manifest, store.trust(), two_person)
    return {"ok": why is None, "detail": why or "signature verifies", "doc": doc}


def _journal_history(project: Path, bundle: Bundle) -> tuple[list, list, list]:
    """(rollouts of this bundle, devices' last known version, incidents) from the journals."""
    rollouts: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    incidents: list[dict[str, Any]] = []
    for path in journals(rollouts_dir(project)):
        try:
            entries = Journal(path).entries()
        except (OSError, RolloutJournalError):
            continue
        if not entries or entries[0].get("event") != "rollout_started":
            continue
        started = entries[0]
        if started.get("deployment") != bundle.deployment:
            continue
        ours = started["bundle"].get("digest") == bundle.digest
        finished: dict[str, Any] = next(
            (e for e in reversed(entries) if e.get("event") == "rollout_finished"), {}
        )
        status = finished.get("status", "unfinished")
        if ours:
            rollouts.append(
                {
                    "rollout": path.stem,
                    "fleet": started["fleet"]["name"],
                    "strategy": started["strategy"]["name"],
                    "started_at": started.get("ts"),
                    "status": status,
                    "operator": started.get("operator") or {"user": started.get("user")},
                }
            )
            if status == "halted":
                incidents.append(
                    {
                        "at": finished.get("ts"),
                        "kind": "rollout halted",
                        "where": f"fleet {started['fleet']['name']}",
                        "detail": str(finished.get("reason") or path.stem),
                    }
                )
        for e in entries:
            if e.get("event") != "device_done":
                continue
            device = f"{started['fleet']['name']}/{e.get('device')}"
            if e.get("ok") and e.get("version") is not None:
                previous = last.get(device)
                if previous is None or previous["version"] != e.get("version"):
                    last[device] = {"version": e.get("version"), "since": e.get("ts")}
            if ours and e.get("result") in ("rolled_back", "unhealthy", "refused", "error"):
                incidents.append(
                    {
                        "at": e.get("ts"),
                        "kind": str(e.get("result")),
                        "where": device,
                        "detail": str(e.get("message") or e.get("refusal") or ""),
                    }
                )
    devices = [
        {"device": name, "since": info["since"]}
        for name, info in sorted(last.items())
        if info["version"] == bundle.version
    ]
    return rollouts, devices, incidents


def audit(
    project: Path,
    deployment: str,
    version: int | None,
    store: Any | None,
    fleet: Any | None = None,
) -> Audit:
    """Gather the audit of one issued bundle version (the newest when ``version`` is None)."""
    from registry.approval import fleet_requirement

    bundle = find_bundle(bundles_root(project), deployment, version)
    trust = store.trust() if store is not None and store.exists() else None
    two_person = bool(fleet is not None and fleet_requirement(fleet, trust).two_person)
    people = _people(store)
    ledger = Ledger(bundles_root(project) / deployment, deployment).read()
    approvals = [
        a | {"approver": a.get("approver") or {}}
        for a in ledger.get("approvals", [])
        if a.get("version") == bundle.version and a.get("manifest_sha256") == bundle.digest
    ]
    for a in approvals:
        kid = a["approver"].get("key_id")
        a["in_root"] = kid in people
    rollouts, devices, incidents = _journal_history(project, bundle)
    prov = bundle.manifest.get("provenance") or {}
    warnings = []
    if (prov.get("git") or {}).get("dirty"):
        warnings.append("built from a git tree with uncommitted changes")
    if prov.get("allow_dirty"):
        warnings.append("bundled with --allow-dirty")
    approval = _approval(bundle, store, two_person)
    if approval["ok"] is False:
        warnings.append(f"approval: {approval['detail']}")
    signature = _signature(bundle, store)
    if signature["ok"] is False:
        warnings.append(f"signature: {signature['detail']}")
    return Audit(
        deployment=bundle.deployment,
        version=bundle.version,
        digest=bundle.digest,
        manifest=bundle.manifest,
        spec=_spec(bundle),
        signature=signature,
        approvals=approvals,
        approval=approval,
        rollouts=rollouts,
        devices=devices,
        incidents=incidents,
        warnings=warnings,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def render_html(doc: Audit) -> str:
    """The audit as one self-contained HTML page (autoescaped, like the trace report)."""
    from orchestrator.ship.trace import render_report

    return render_report("audit.html.j2", a=doc.to_json())


def chromium() -> str | None:
    """Path of a Chromium that prints PDFs headless, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def print_pdf(html: Path, pdf: Path, timeout: float = 180.0) -> Path:
    """Print the HTML file ``html`` to ``pdf`` with headless Chromium (``--print-to-pdf``)."""
    browser = chromium()
    if browser is None:
        raise MissingDependencyError(
            "chromium (headless, for --pdf)", "apt-get install chromium", "not on PATH"
        )
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--print-to-pdf={pdf}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if not pdf.is_file() or pdf.stat().st_size == 0:
        raise MissingDependencyError(
            "chromium (headless, for --pdf)",
            "apt-get install chromium",
            f"it wrote no PDF: {proc.stderr.strip()[-300:]}",
        )
    return pdf
