"""CLI verbs that ship: ``keys``, ``bundle``, ``enroll``, ``deploy``, ``device-status``.

A thin layer: the logic lives in :mod:`registry.keys`, :mod:`registry.bundle` and
:mod:`orchestrator.ship`; this module parses ``key=value`` words, calls it and
prints. It is discovered by :func:`orchestrator.cli.main.verb_modules`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli.common import (
    CLI,
    human_size,
    integer,
    key_store,
    pairs,
    project_dir,
    split_list,
    words,
)
from orchestrator.cli.progress import ShipProgress
from orchestrator.core.text import terminal
from orchestrator.errors import (
    BundleError,
    KeyStoreError,
    Problem,
    RolloutError,
    SpecError,
    UsageError,
)
from orchestrator.project import ENV_ALLOW_DIRTY

# -- keys -------------------------------------------------------------------------------------


def _print_root_change(change: Any, what: str) -> None:
    if change.published:
        print(f"{what}: root version {change.version} published ({change.path})")
        print(f"  signed by {len(change.signed_by)} root key(s); devices receive it with the next")
        print("  'edgeship deploy' or 'edgeship enroll' (no re-enrolment)")
    else:
        print(f"{what}: root version {change.version} waits for root signatures ({change.path})")
        print(
            f"  signed by {len(change.signed_by)} of the {change.needed} root keys it needs; "
            "where another root key lives, run: edgeship keys sign-root --keys-dir DIR"
        )


def _refresh_repository(store: Any) -> None:
    """Re-sign the bundle repository's metadata after a root change (if there are bundles)."""
    from registry.bundle import bundles_root
    from registry.repository import METADATA_DIR, Repository

    try:
        root = bundles_root(project_dir())
    except SpecError:  # no project here: no bundle repository to refresh
        return
    if (root / METADATA_DIR).is_dir():
        version, expires = Repository(root, store).refresh()
        print(f"  bundle repository {root / METADATA_DIR}: timestamp {version}, expires {expires}")


def cmd_keys(args: argparse.Namespace) -> int:
    store = key_store()
    action = args.action
    if action == "init":
        info = store.init(args.root_keys, args.threshold, args.valid_days or 365)
        trust = store.trust()
        print(f"created the keys of a new root of trust in {store.path}")
        print(
            f"  root:      {args.root_keys} offline key(s), threshold {args.threshold} "
            f"({store.path / 'root'})"
        )
        print(f"  targets:   {info.key_id} (signs bundles, rollback orders, feed indexes)")
        print(f"  timestamp: {store.timestamp_key()[0]} (signs freshness metadata)")
        print(f"  root version 1 expires {trust.expires:%Y-%m-%d}: {store.root_path(1)}")
        print(
            "  move the root keys to separate offline places (docs/security.md); "
            "private keys are mode 0600"
        )
        if not store.passphrase:
            print("  not encrypted: set EDGESHIP_KEY_PASSPHRASE before 'keys init' to encrypt keys")
        return 0
    if action == "list":
        trust = store.trust()
        print(
            f"key store {store.path}  (root version {trust.serial}, threshold "
            f"{trust.threshold('root')} of {len(trust.role_keys('root'))}, expires "
            f"{trust.expires:%Y-%m-%d})"
        )
        for k in store.list_keys():
            private = "private key here" if k.has_private else "private key elsewhere"
            print(f"  {k.key_id}  {k.status:<18} {private}")
        return 0
    if action == "rotate":
        role = args.role or "targets"
        if role not in ("targets", "timestamp", "root"):
            raise UsageError(
                [Problem(CLI, "--role", f"expected targets, timestamp or root, found '{role}'")]
            )
        change = store.rotate(role, args.valid_days or 365)
        _print_root_change(change, f"new {role} key {change.new_key}")
    elif action == "revoke":
        if not args.key_id:
            raise KeyStoreError("error: keys revoke needs a KEYID (see 'edgeship keys list')")
        change = store.revoke(args.key_id, args.valid_days or 365)
        _print_root_change(change, f"revoked {args.key_id}")
    elif action == "renew":
        change = store.renew(args.valid_days or 365)
        _print_root_change(change, "renewed the root")
    elif action == "sign-root":
        change = store.sign_root(Path(args.keys_dir) if args.keys_dir else None)
        _print_root_change(change, "signed the waiting root change")
    elif action == "refresh":
        _refresh_repository(store)
        return 0
    elif action == "add-person":
        if not args.key_id:
            raise UsageError([Problem(CLI, "NAME", "keys add-person needs the person's NAME")])
        roles = [r.strip() for r in (args.role or "").split(",") if r.strip()]
        change = store.add_person(args.key_id, roles, args.valid_days or 365)
        _print_root_change(
            change, f"added {args.key_id} ({', '.join(roles)}) with key {change.new_key}"
        )
    elif action == "remove-person":
        if not args.key_id:
            raise UsageError([Problem(CLI, "NAME", "keys remove-person needs the person's NAME")])
        change = store.remove_person(args.key_id, args.valid_days or 365)
        _print_root_change(
            change, f"removed {args.key_id}: approvals signed by {args.key_id} no longer count"
        )
    elif action == "publish-policy":
        from orchestrator.spec.fleet import load_fleet

        if not args.key_id:
            raise UsageError([Problem(CLI, "FLEET", "keys publish-policy needs a FLEET name")])
        fleet = load_fleet(args.key_id, project_dir())
        change = store.set_fleet_policy(
            fleet.name, list(fleet.requires), fleet.two_person, args.valid_days or 365
        )
        wanted = ", ".join(fleet.requires) or "nothing"
        _print_root_change(
            change,
            f"fleet {fleet.name} requires {wanted}"
            + (" (two_person)" if fleet.two_person else "")
            + " on its devices",
        )
    else:
        raise AssertionError(action)
    if change.published:
        _refresh_repository(store)
    return 0


# -- bundle ------------------------------------------------------------------------------------


_SINGLE_BUNDLE_FLAGS = {
    "--list": "list",
    "--rollback-to": "rollback_to",
    "--version": "version",
    "--export": "export",
}


def cmd_bundle(args: argparse.Namespace) -> int:
    from orchestrator.ship import bundling

    opts = pairs(args.overrides, ("deployment",), ("deployment",))
    name = opts["deployment"]
    here = project_dir()
    names = name.split(",")
    if len(names) > 1:
        # deployment=a,b: the next bundle version of each, signed with the same key
        single = [
            f for f, on in _SINGLE_BUNDLE_FLAGS.items() if getattr(args, on) not in (None, False)
        ]
        if single:
            raise UsageError(
                [
                    Problem(
                        CLI,
                        "deployment",
                        f"expected one NAME with {', '.join(single)}, found {len(names)}: {name}",
                    )
                ]
            )
        store = key_store()
        answers = []
        for each in names:
            made = bundling.bundle_artifact(
                here,
                each,
                store,
                args.valid_days or 90,
                record=not args.no_record,
                allow_dirty=_allow_dirty(args),
            )
            if args.json:
                answers.append(bundle_json(made.bundle, made))
            else:
                _print_bundle(made.bundle, made, store)
        if args.json:
            print(json.dumps({"bundles": answers}, indent=2, sort_keys=True))
        return 0
    if args.list:
        folder, entries = bundling.issued(here, name)
        if args.json:
            print(json.dumps({"deployment": name, "folder": str(folder), "issued": entries}))
            return 0
        print(f"{name}: {len(entries)} bundle(s) in {folder}")
        for e in entries:
            print(
                f"  v{e['version']:<4} {e['created_at']}  expires {e['expires_at']}  "
                f"key {e['key_id']}  "
                f"manifest {e['manifest_sha256'][:16]}"
            )
        return 0
    store = key_store()
    if args.rollback_to is not None:
        if args.from_version is None or not (args.fleet or args.device):
            raise BundleError(
                "error: --rollback-to needs --from-version N (the version devices leave) and "
                "--fleet NAME and/or --device NAME (where the order applies)"
            )
        bundle, path = bundling.rollback_order(
            here,
            name,
            args.rollback_to,
            store,
            args.valid_days or 7,
            args.from_version,
            fleet=args.fleet,
            device=args.device,
        )
        scope = " ".join(
            f"{k} {v}" for k, v in (("fleet", args.fleet), ("device", args.device)) if v
        )
        print(
            f"{name}: signed one-time rollback order from version {args.from_version} to "
            f"version {bundle.version} for {scope}: {path}"
        )
        print(
            f"  deploy it with: edgeship deploy deployment={name} version={bundle.version} "
            "fleet=NAME"
        )
        return 0
    if args.version is not None:
        if not args.export:
            raise BundleError(
                "error: --version selects an issued bundle to --export; add --export FILE"
            )
        bundle = bundling.find_issued(here, name, args.version)
        print(f"{name}: bundle version {bundle.version} ({bundle.path})")
    else:
        made = bundling.bundle_artifact(
            here,
            name,
            store,
            args.valid_days or 90,
            record=not args.no_record,
            allow_dirty=_allow_dirty(args),
        )
        bundle = made.bundle
        if args.json and not args.export:
            print(json.dumps({"bundles": [bundle_json(bundle, made)]}, indent=2, sort_keys=True))
            return 0
        _print_bundle(bundle, made, store)
    if args.export:
        from registry.bundle import export_bundle

        dest = export_bundle(bundle, Path(args.export), store.trust_chain(0))
        print(
            f"  exported:   {dest} ({human_size(dest.stat().st_size)}); on the device: "
            f"edgeship-agent activate {dest.name}"
        )
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from orchestrator.project import os_user
    from orchestrator.ship import bundling

    opts = pairs(args.overrides, ("deployment", "version"), ("deployment",))
    version = _int_word(opts, "version")
    person = args.person or os_user()
    bundle, doc, report = bundling.approve_bundle(
        project_dir(),
        opts["deployment"],
        version,
        key_store(),
        person,
        args.comment,
        record=not args.no_record,
        outside_plan=args.outside_plan,
    )
    for line in report.lines():
        print(terminal(line))
    approver = doc["approver"]
    print(
        f"{bundle.deployment}: version {bundle.version} approved by {approver['name']} "
        f"({', '.join(approver['roles'])}; key {approver['key_id']}) at {doc['approved_at']}"
    )
    print(f"  manifest sha256 {bundle.digest}")
    print(f"  signed approval: {bundle.path / 'approval.json'}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from orchestrator.ship.audit import audit, print_pdf, render_html
    from orchestrator.spec.fleet import load_fleet

    opts = pairs(args.overrides, ("deployment", "version", "fleet"), ("deployment",))
    root = project_dir()
    store = key_store()
    fleet = load_fleet(opts["fleet"], root) if "fleet" in opts else None
    doc = audit(root, opts["deployment"], _int_word(opts, "version"), store, fleet)
    html = Path(args.output or f"audit-{doc.deployment}-v{doc.version}.html")
    html.write_text(render_html(doc))
    print(f"{doc.deployment} version {doc.version}: audit written to {html}")
    for warning in doc.warnings:
        print(terminal(f"  finding: {warning}"))
    if args.pdf:
        pdf = print_pdf(html, Path(args.pdf))
        print(f"  printed to {pdf}")
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    from orchestrator.ship.changes import compare

    opts = pairs(args.overrides, ("deployment", "version"), ("deployment",))
    report = compare(project_dir(), opts["deployment"], _int_word(opts, "version"))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True, default=str))
    else:
        for line in report.lines():
            print(terminal(line))
    return 0


def _int_word(opts: dict[str, str], key: str) -> int | None:
    if key not in opts:
        return None
    try:
        return int(opts[key])
    except ValueError:
        raise UsageError(
            [Problem(CLI, key, f"expected a whole number, found '{opts[key]}'")]
        ) from None


def model_version_note(bundle: Any) -> str:
    """`` (MLflow model version N)`` for a bundle built from a registered version."""
    source = (bundle.manifest.get("provenance") or {}).get("mlflow") or {}
    version = source.get("model_version")
    return f" (MLflow model version {version})" if version else ""


def bundle_json(bundle: Any, made: Any) -> dict[str, Any]:
    """What ``bundle --json`` answers for one bundle made."""
    m = bundle.manifest
    source = (m.get("provenance") or {}).get("mlflow") or {}
    return {
        "deployment": bundle.deployment,
        "version": bundle.version,
        "model_version": source.get("model_version"),
        "folder": str(bundle.path),
        "manifest_sha256": bundle.digest,
        "key_id": bundle.key_id,
        "files": len(m["files"]),
        "bytes": sum(int(e["size"]) for e in m["files"]),
        "target": m["target"],
        "expires_at": m["expires_at"],
        "mlflow_run_id": made.run_id if made.recorded else None,
    }


def _print_bundle(bundle: Any, made: Any, store: Any) -> None:
    m = bundle.manifest
    size = sum(int(e["size"]) for e in m["files"])
    print(f"{bundle.deployment}: bundle version {bundle.version}{model_version_note(bundle)}")
    print(f"  folder:     {bundle.path}")
    print(f"  manifest:   sha256 {bundle.digest}")
    print(f"  signed by:  {bundle.key_id} (ed25519)")
    print(f"  files:      {len(m['files'])} ({human_size(size)})")
    print(
        f"  target:     {m['target']['family']} / {m['target']['runtime']} "
        f"{m['target']['runtime_requirement']}"
    )
    print(f"  expires:    {m['expires_at']}")
    if made.recorded:
        print(
            f"  mlflow run: {made.run_id} "
            f"(tags edgeship.bundle.*, artifact bundle/{bundle.version}/)"
        )
    else:
        print(
            "  mlflow:     not recorded (the build has no MLflow run)"
            if not made.run_id
            else "  mlflow:     skipped"
        )
    pub = store.pub_path(bundle.key_id)  # the targets key, from the root of trust
    print(
        f"  check:      openssl pkeyutl -verify -pubin -inkey {pub} -rawin "
        f"-in {bundle.path / 'manifest.json'} -sigfile {bundle.path / 'manifest.json.sig'}"
    )


# -- fleet verbs ---------------------------------------------------------------------------------


def _fleet_and_devices(opts: dict[str, str]) -> tuple[Any, list[Any]]:
    from orchestrator.spec.fleet import load_fleet

    fleet = load_fleet(opts["fleet"], project_dir())
    return fleet, fleet.select(split_list(opts.get("device")), split_list(opts.get("group")))


def _print_outcomes(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True, default=str))
        return
    width = max((len(terminal(o.device)) for o in result.outcomes), default=6)
    for o in result.outcomes:
        line = f"  {terminal(o.device):<{width}}  {o.address:<21} {o.result:<11}"
        if o.version is not None:
            line += f" v{o.version}"
        if o.refusal:
            line += f" refusal={o.refusal}"
        if o.health:
            h = o.health
            latency = h.get("latency_ms")
            line += f"  health {h.get('result')}" + (
                f" {latency:.2f} ms" if latency is not None else ""
            )
        if result.verb == "deploy" and (o.files_sent or o.files_linked or o.files_present):
            line += (
                f"  sent {human_size(o.bytes_sent)} in {o.files_sent} file(s), "
                f"{o.files_linked} linked"
                + (f", {human_size(o.bytes_resumed)} resumed" if o.bytes_resumed else "")
            )
        line += f"  {o.seconds:.1f}s"
        # one line per device whatever its name or answer holds (newlines, ANSI escapes)
        print(terminal(line))
        if o.message and not o.ok:
            print(f"  {'':<{width}}  {terminal(o.message)}")
        for note in o.notes:
            print(f"  {'':<{width}}  note: {terminal(note)}")
    for note in getattr(result, "notes", []):
        print(f"note: {terminal(note)}")
    print(f"{len(result.succeeded)} succeeded, {len(result.failed)} failed")


def _pull_package(fleet: Any, store: Any, out: Path) -> int:
    """A pull fleet's devices are enrolled on the device: write what they need."""
    from orchestrator.ship.pull import pull_package

    files = pull_package(fleet, store, out)
    print(f"pull fleet {fleet.name}: devices poll, nothing connects to them; in {out}:")
    for path in files:
        print(f"  {path.name}")
    print(f"on each device, as root: sh install.sh DEVICE_NAME  (copy {out} there first)")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from orchestrator.ship.enroll import enroll

    opts = pairs(args.overrides, ("fleet", "device", "group"), ("fleet",))
    fleet, devices = _fleet_and_devices(opts)
    store = key_store()
    if fleet.pull is not None or args.pull_package:
        return _pull_package(fleet, store, Path(args.pull_package or f"{fleet.name}-pull"))
    if fleet.feed is not None:
        from orchestrator.ship.feed import enroll_feed

        host = fleet.feed_host()
        note = enroll_feed(fleet, repin=args.repin)
        print(
            f"feed host {host.address}:{host.port} of fleet {fleet.name}: host key {note}; "
            f"feed folder {fleet.feed.path}"
        )
        if not devices:
            return 0
    print(f"enroll {len(devices)} device(s) of fleet {fleet.name} (host keys: {fleet.known_hosts})")
    try:
        result = enroll(
            fleet,
            devices,
            store,
            repin=args.repin,
            reset_trust=args.reset_trust,
            parallel=args.parallel,
        )
    except RolloutError as exc:
        _print_outcomes(exc.result, args.json)
        raise
    _print_outcomes(result, args.json)
    return 0


def bundle_from(args: argparse.Namespace, opts: dict[str, str]) -> Any:
    """The bundle named by ``--bundle PATH`` or ``deployment=NAME [version=N]`` (a context)."""
    from orchestrator.ship.bundling import open_bundle

    return open_bundle(
        project_dir(),
        Path(args.bundle) if args.bundle else None,
        opts.get("deployment"),
        integer(opts, "version"),
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    from orchestrator.ship.deploy import DeployOptions, deploy
    from orchestrator.ship.rollout.journal import rollouts_dir
    from orchestrator.ship.rollout.lock import deploy_locks

    opts = pairs(args.overrides, ("deployment", "fleet", "device", "group", "version"), ("fleet",))
    integer(opts, "version")
    fleet, devices = _fleet_and_devices(opts)
    store = key_store()
    options = DeployOptions(
        limit_rate=int(args.limit_rate * 1000) if args.limit_rate else None,
        stage_only=args.stage_only,
        parallel=args.parallel,
        health_timeout=args.health_timeout,
    )
    with bundle_from(args, opts) as bundle:
        if args.dry_run:
            from orchestrator.ship.dry_run import dry_run_deploy

            plan = dry_run_deploy(
                devices,
                bundle,
                store if store.exists() else None,
                rollouts_dir(project_dir()) / "locks",
                fleet,
            )
            return print_dry_run(plan, args.json)
        print(
            f"deploy {bundle.deployment} v{bundle.version}{model_version_note(bundle)} "
            f"({bundle.digest[:12]}) "
            f"to {len(devices)} "
            f"device(s) of fleet {fleet.name}"
        )
        # the rollouts' device locks, held while deploying: a rollout's devices are refused
        with deploy_locks(rollouts_dir(project_dir()), devices, bundle.deployment) as notes:
            for note in notes:
                print(terminal(f"note: {note}"))
            try:
                bars = ShipProgress(enabled=False if args.json else None)
                options.on_bytes = bars.upload
                try:
                    result = deploy(
                        fleet, devices, bundle, store if store.exists() else None, options
                    )
                finally:
                    bars.close()
            except RolloutError as exc:
                _print_outcomes(exc.result, args.json)
                raise
    _print_outcomes(result, args.json)
    return 0


def print_dry_run(plan: Any, as_json: bool) -> int:
    """Print a dry run's plan; returns the exit code the real run would start with."""
    if as_json:
        print(json.dumps(plan.to_json(), indent=2, sort_keys=True))
    else:
        for line in plan.lines():
            print(terminal(line))
    return int(plan.exit_code)


def cmd_device_status(args: argparse.Namespace) -> int:
    from orchestrator.ship.status import agent_report

    opts = pairs(args.overrides, ("fleet", "device", "group"), ("fleet",))
    fleet, devices = _fleet_and_devices(opts)
    result = agent_report(fleet, devices, args.parallel)
    _print_outcomes(result, args.json)
    return 0 if not result.failed else RolloutError.exit_code


def _allow_dirty(args: argparse.Namespace) -> bool:
    """``--allow-dirty``, or ``EDGESHIP_ALLOW_DIRTY=1`` (a working copy's test runs): either
    way the bundle's manifest and the ledger record that the build's tree was dirty."""
    return bool(args.allow_dirty) or os.environ.get(ENV_ALLOW_DIRTY) == "1"


def register(sub: Any) -> None:
    """Add the shipping verbs to the ``edgeship`` parser."""
    p = sub.add_parser(
        "keys",
        help="the root of trust and signing keys: init | list | rotate | revoke KEYID | "
        "sign-root | renew | refresh | add-person NAME --role R | remove-person NAME | "
        "publish-policy FLEET",
    )
    p.add_argument(
        "action",
        choices=(
            "init",
            "list",
            "rotate",
            "revoke",
            "sign-root",
            "renew",
            "refresh",
            "add-person",
            "remove-person",
            "publish-policy",
        ),
    )
    p.add_argument(
        "key_id",
        nargs="?",
        help="key id to revoke; add-person, remove-person: NAME; publish-policy: FLEET",
    )
    p.add_argument("--root-keys", type=int, default=3, help="init: how many root keys (default 3)")
    p.add_argument(
        "--threshold", type=int, default=2, help="init: root signatures required (default 2)"
    )
    p.add_argument(
        "--role",
        default=None,
        help="rotate: targets, timestamp or root (default targets); add-person: builder, "
        "approver, release-manager (comma-separated)",
    )
    p.add_argument("--keys-dir", help="sign-root: a folder holding root private keys")
    p.add_argument(
        "--valid-days", type=float, default=None, help="root validity in days (default 365)"
    )
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("bundle", help="sign a passing artifact as the next bundle version")
    words(p, "deployment=NAME (or NAME,NAME,...)")
    p.add_argument(
        "--valid-days", type=float, default=None, help="validity (default 90; rollback orders 7)"
    )
    p.add_argument(
        "--export",
        metavar="FILE.tar",
        help="also write the bundle as one file (air-gapped devices)",
    )
    p.add_argument(
        "--version", type=int, default=None, help="with --export: export this issued version"
    )
    p.add_argument(
        "--rollback-to",
        type=int,
        default=None,
        metavar="VERSION",
        help="sign a one-time rollback order allowing devices to go back to VERSION "
        "(with --from-version and --fleet and/or --device)",
    )
    p.add_argument(
        "--from-version",
        type=int,
        default=None,
        metavar="N",
        help="with --rollback-to: the version devices run now and leave",
    )
    p.add_argument(
        "--fleet", default=None, metavar="NAME", help="with --rollback-to: the fleet it applies to"
    )
    p.add_argument(
        "--device",
        default=None,
        metavar="NAME",
        help="with --rollback-to: the one device it applies to",
    )
    p.add_argument("--list", action="store_true", help="list issued bundle versions")
    p.add_argument("--no-record", action="store_true", help="do not record the bundle in MLflow")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="bundle a build made from a git tree with uncommitted changes (recorded; "
        "EDGESHIP_ALLOW_DIRTY=1 does the same)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the bundle(s) made, or --list, as JSON"
    )
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("approve", help="sign a named approver's approval of an issued bundle")
    words(p, "deployment=NAME [version=N]")
    p.add_argument("--comment", required=True, help="why this bundle may go out")
    p.add_argument(
        "--as",
        dest="person",
        default=None,
        metavar="PERSON",
        help="the approver (a person 'keys add-person' named; default: your login name)",
    )
    p.add_argument("--no-record", action="store_true", help="do not tag the MLflow model version")
    p.add_argument(
        "--outside-plan",
        action="store_true",
        help="approve changes the deployment's change plan does not cover (recorded)",
    )
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser(
        "changes",
        help="what changed since the last approved version, and whether the plan covers it",
    )
    words(p, "deployment=NAME [version=N]")
    p.add_argument("--json", action="store_true", help="print the changes as JSON")
    p.set_defaults(func=cmd_changes)

    p = sub.add_parser(
        "audit", help="one HTML (and PDF) change record of a bundle version, for reviewers"
    )
    words(p, "deployment=NAME [version=N] [fleet=NAME]")
    p.add_argument("-o", "--output", help="the HTML file (default audit-NAME-vN.html)")
    p.add_argument("--pdf", metavar="FILE.pdf", help="also print it to PDF (headless Chromium)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("enroll", help="pin host keys, install the agent and trust set on devices")
    words(p, "fleet=NAME [device=a,b] [group=g]")
    p.add_argument(
        "--repin", action="store_true", help="accept the devices' current host keys again"
    )
    p.add_argument(
        "--reset-trust", action="store_true", help="replace the device's trust set outright"
    )
    p.add_argument("--parallel", type=int, default=4, help="devices at a time")
    p.add_argument("--json", action="store_true", help="print the per-device outcomes as JSON")
    p.add_argument(
        "--pull-package",
        metavar="DIR",
        help="pull fleets: write the agent, root of trust and install.sh into DIR",
    )
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("deploy", help="push a bundle to devices: verify, activate, health check")
    words(p, "deployment=NAME fleet=NAME [device=a,b] [group=g] [version=N]")
    p.add_argument(
        "--bundle", metavar="PATH", help="a bundle folder or exported .tar instead of deployment="
    )
    p.add_argument(
        "--limit-rate", type=float, default=None, metavar="KB/S", help="upload rate per device"
    )
    p.add_argument(
        "--stage-only", action="store_true", help="upload and check only; do not activate"
    )
    p.add_argument("--parallel", type=int, default=4, help="devices at a time")
    p.add_argument(
        "--health-timeout", type=float, default=300.0, help="seconds for the health check"
    )
    p.add_argument("--json", action="store_true", help="print the per-device outcomes as JSON")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (devices, bytes per device, refusals); send, lock and write nothing",
    )
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("device-status", help="what each device of a fleet runs (agent status)")
    words(p, "fleet=NAME [device=a,b] [group=g]")
    p.add_argument("--parallel", type=int, default=4, help="devices at a time")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    p.set_defaults(func=cmd_device_status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run: edgeship keys|bundle|enroll|deploy|device-status")
