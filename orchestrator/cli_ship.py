"""CLI verbs that ship: ``keys``, ``bundle``, ``enroll``, ``deploy``, ``device-status``.

A thin layer: the logic lives in :mod:`registry.keys`, :mod:`registry.bundle` and
:mod:`orchestrator.rollout`; this module parses ``key=value`` words, calls it and
prints. It is discovered by :func:`orchestrator.cli._verb_modules`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.config.typecheck import unknown_name_message
from orchestrator.errors import Problem, SpecError
from orchestrator.rollout.errors import BundleError, KeyStoreError, RolloutError

CLI = "command line"


def _pairs(
    tokens: list[str], allowed: tuple[str, ...], required: tuple[str, ...] = ()
) -> dict[str, str]:
    """``["deployment=x", "device=a,b"]`` -> dict, every problem reported at once."""
    out: dict[str, str] = {}
    problems = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            problems.append(
                Problem(CLI, token, f"expected KEY=VALUE with KEY one of: {', '.join(allowed)}")
            )
        elif key not in allowed:
            problems.append(Problem(CLI, key, unknown_name_message("key", key, allowed)))
        elif not value:
            problems.append(Problem(CLI, key, "expected a value after '='"))
        else:
            out[key] = value
    for key in required:
        if key not in out and not any(p.key == key for p in problems):
            problems.append(Problem(CLI, key, f"missing; expected {key}=NAME"))
    if problems:
        raise SpecError(problems, title="invalid arguments")
    return out


def _list(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def _root() -> Path:
    from orchestrator.config.loader import project_root

    return project_root()


def _store() -> Any:
    from registry.keys import KeyStore

    store = KeyStore()
    try:
        root = _root()
    except SpecError:
        return store
    store.ensure_outside(root)
    return store


def _size(n: int) -> str:
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


# -- keys -------------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    store = _store()
    if args.action == "init":
        info = store.init()
        print(f"created signing key {info.key_id} (active) in {store.path}")
        print(f"  trust set serial 1: {store.trust_path}")
        print("  private keys stay in this folder (mode 0600); back it up somewhere safe")
        if not store.passphrase:
            print("  not encrypted: set EDGESHIP_KEY_PASSPHRASE before 'keys init' to encrypt keys")
        return 0
    if args.action == "list":
        trust = store.trust()
        print(
            f"key store {store.path}  (trust set serial {trust.serial}, "
            f"signed by {trust.signed_by})"
        )
        for k in store.list_keys():
            private = "private+public" if k.has_private else "public only"
            print(f"  {k.key_id}  {k.status:<8} {private:<15} created {k.created_at}")
        return 0
    if args.action == "rotate":
        info, trust = store.rotate()
        print(
            f"new active key {info.key_id}; trust set serial {trust.serial} "
            f"signed by {trust.signed_by}"
        )
        print(
            "  still trusted: "
            + (", ".join(k for k in sorted(trust.keys) if k != info.key_id) or "-")
        )
        print(
            "  devices receive the new trust set with the next 'edgeship deploy' (no re-enrolment)"
        )
        return 0
    if args.action == "revoke":
        if not args.key_id:
            raise KeyStoreError("error: keys revoke needs a KEYID (see 'edgeship keys list')")
        trust = store.revoke(args.key_id)
        print(f"revoked {args.key_id}; trust set serial {trust.serial} signed by {trust.signed_by}")
        print(
            "  devices refuse bundles signed by it once they receive this trust set (next deploy)"
        )
        return 0
    raise AssertionError(args.action)


# -- bundle ------------------------------------------------------------------------------------


def cmd_bundle(args: argparse.Namespace) -> int:
    from orchestrator.build import artifacts_root
    from registry.bundle import (
        bundles_root,
        export_bundle,
        find_bundle,
        issue_rollback,
        make_bundle,
    )

    opts = _pairs(args.overrides, ("deployment",), ("deployment",))
    name = opts["deployment"]
    root = _root()
    out_root = bundles_root(root)
    if args.list:
        from registry.bundle import Ledger

        ledger = Ledger(out_root / name, name).read()
        print(f"{name}: {len(ledger['issued'])} bundle(s) in {out_root / name}")
        for e in ledger["issued"]:
            print(
                f"  v{e['version']:<4} {e['created_at']}  expires {e['expires_at']}  "
                f"key {e['key_id']}  "
                f"manifest {e['manifest_sha256'][:16]}"
            )
        return 0
    store = _store()
    if args.rollback_to is not None:
        bundle = find_bundle(out_root, name, args.rollback_to)
        path = issue_rollback(bundle, store, valid_days=args.valid_days or 7)
        print(f"{name}: signed rollback order for version {bundle.version}: {path}")
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
        bundle = find_bundle(out_root, name, args.version)
        print(f"{name}: bundle version {bundle.version} ({bundle.path})")
    else:
        artifact = artifacts_root(root) / name
        if not (artifact / "runtime.json").is_file():
            have = sorted(
                p.name for p in artifacts_root(root).glob("*") if (p / "runtime.json").is_file()
            )
            raise BundleError(
                f"error: no passing artifact at {artifact} "
                f"(artifacts: {', '.join(have) or 'none'}); "
                f"build it with: edgeship build deployment={name}"
            )
        tracker = None
        build = (
            json.loads((artifact / "build.json").read_text())
            if (artifact / "build.json").is_file()
            else {}
        )
        run_id = (build.get("mlflow") or {}).get("run_id")
        if run_id and not args.no_record:
            from registry.tracking import Tracker

            tracker = Tracker(root)
        bundle = make_bundle(
            artifact, store, out_root, valid_days=args.valid_days or 90, tracker=tracker
        )
        m = bundle.manifest
        size = sum(int(e["size"]) for e in m["files"])
        print(f"{name}: bundle version {bundle.version}")
        print(f"  folder:     {bundle.path}")
        print(f"  manifest:   sha256 {bundle.digest}")
        print(f"  signed by:  {bundle.key_id} (ed25519)")
        print(f"  files:      {len(m['files'])} ({_size(size)})")
        print(
            f"  target:     {m['target']['family']} / {m['target']['runtime']} "
            f"{m['target']['runtime_requirement']}"
        )
        print(f"  expires:    {m['expires_at']}")
        if tracker is not None:
            print(
                f"  mlflow run: {run_id} "
                f"(tags edgeship.bundle.*, artifact bundle/{bundle.version}/)"
            )
        else:
            print(
                "  mlflow:     not recorded (the build has no MLflow run)"
                if not run_id
                else "  mlflow:     skipped"
            )
        pub = store.pub_path(bundle.key_id)
        print(
            f"  check:      openssl pkeyutl -verify -pubin -inkey {pub} -rawin "
            f"-in {bundle.path / 'manifest.json'} -sigfile {bundle.path / 'manifest.json.sig'}"
        )
    if args.export:
        dest = export_bundle(bundle, Path(args.export), store.trust_chain(0))
        print(
            f"  exported:   {dest} ({_size(dest.stat().st_size)}); on the device: "
            f"edgeship-agent activate {dest.name}"
        )
    return 0


# -- fleet verbs ---------------------------------------------------------------------------------


def _fleet_and_devices(opts: dict[str, str]) -> tuple[Any, list[Any]]:
    from orchestrator.config.fleet import load_fleet

    fleet = load_fleet(opts["fleet"], _root())
    return fleet, fleet.select(_list(opts.get("device")), _list(opts.get("group")))


def _print_outcomes(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True, default=str))
        return
    width = max((len(o.device) for o in result.outcomes), default=6)
    for o in result.outcomes:
        line = f"  {o.device:<{width}}  {o.address:<21} {o.result:<11}"
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
                f"  sent {_size(o.bytes_sent)} in {o.files_sent} file(s), {o.files_linked} linked"
                + (f", {_size(o.bytes_resumed)} resumed" if o.bytes_resumed else "")
            )
        line += f"  {o.seconds:.1f}s"
        print(line)
        if o.message and not o.ok:
            print(f"  {'':<{width}}  {o.message}")
        for note in o.notes:
            print(f"  {'':<{width}}  note: {note}")
    print(f"{len(result.succeeded)} succeeded, {len(result.failed)} failed")


def cmd_enroll(args: argparse.Namespace) -> int:
    from orchestrator.rollout.enroll import enroll

    opts = _pairs(args.overrides, ("fleet", "device", "group"), ("fleet",))
    fleet, devices = _fleet_and_devices(opts)
    store = _store()
    if fleet.feed is not None:
        from orchestrator.rollout.feed import enroll_feed

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


@contextmanager
def _bundle_from(args: argparse.Namespace, opts: dict[str, str]) -> Iterator[Any]:
    from registry.bundle import Bundle, bundles_root, find_bundle, unpack_export

    if args.bundle:
        path = Path(args.bundle)
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
    if "deployment" not in opts:
        raise SpecError(
            [Problem(CLI, "deployment", "missing; expected deployment=NAME (or --bundle FILE)")]
        )
    version = int(opts["version"]) if "version" in opts else None
    yield find_bundle(bundles_root(_root()), opts["deployment"], version)


def cmd_deploy(args: argparse.Namespace) -> int:
    from orchestrator.rollout.deploy import DeployOptions, deploy

    opts = _pairs(args.overrides, ("deployment", "fleet", "device", "group", "version"), ("fleet",))
    if "version" in opts and not opts["version"].isdigit():
        raise SpecError(
            [Problem(CLI, "version", f"expected an integer, found '{opts['version']}'")]
        )
    fleet, devices = _fleet_and_devices(opts)
    store = _store()
    options = DeployOptions(
        limit_rate=int(args.limit_rate * 1000) if args.limit_rate else None,
        stage_only=args.stage_only,
        parallel=args.parallel,
        health_timeout=args.health_timeout,
    )
    with _bundle_from(args, opts) as bundle:
        print(
            f"deploy {bundle.deployment} v{bundle.version} ({bundle.digest[:12]}) "
            f"to {len(devices)} "
            f"device(s) of fleet {fleet.name}"
        )
        try:
            result = deploy(fleet, devices, bundle, store if store.exists() else None, options)
        except RolloutError as exc:
            _print_outcomes(exc.result, args.json)
            raise
    _print_outcomes(result, args.json)
    return 0


def cmd_device_status(args: argparse.Namespace) -> int:
    from orchestrator.rollout.enroll import agent_status
    from orchestrator.rollout.results import RolloutResult, run_per_device
    from orchestrator.rollout.ssh import connect

    opts = _pairs(args.overrides, ("fleet", "device", "group"), ("fleet",))
    fleet, devices = _fleet_and_devices(opts)

    def work(device: Any, outcome: Any) -> None:
        with connect(device, Path(fleet.known_hosts)) as session:
            status = agent_status(session)
            outcome.agent = status
            if status is None or not status.get("enrolled"):
                outcome.result, outcome.message = "error", "not enrolled"
                return
            outcome.result = "running" if status.get("current") is not None else "idle"
            outcome.version = status.get("current")
            outcome.trust_serial = (status.get("trust") or {}).get("serial")
            health = (status.get("versions") or {}).get(str(outcome.version), {}).get("health")
            outcome.health = health
            previous = status.get("previous")
            outcome.notes.append(
                f"deployment {status.get('deployment') or '-'}, "
                f"previous {f'v{previous}' if previous is not None else '-'}, "
                f"installed {status.get('installed')}, trust serial {outcome.trust_serial}"
            )

    result = RolloutResult("status", run_per_device(devices, work, args.parallel))
    _print_outcomes(result, args.json)
    return 0 if not result.failed else RolloutError.exit_code


def register(sub: Any) -> None:
    """Add the shipping verbs to the ``edgeship`` parser."""
    p = sub.add_parser("keys", help="signing keys: init | list | rotate | revoke KEYID")
    p.add_argument("action", choices=("init", "list", "rotate", "revoke"))
    p.add_argument("key_id", nargs="?", help="key id to revoke")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("bundle", help="sign a passing artifact as the next bundle version")
    p.add_argument("overrides", nargs="*", help="deployment=NAME")
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
        help="sign a rollback order allowing devices to go back to VERSION",
    )
    p.add_argument("--list", action="store_true", help="list issued bundle versions")
    p.add_argument("--no-record", action="store_true", help="do not record the bundle in MLflow")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("enroll", help="pin host keys, install the agent and trust set on devices")
    p.add_argument("overrides", nargs="*", help="fleet=NAME [device=a,b] [group=g]")
    p.add_argument(
        "--repin", action="store_true", help="accept the devices' current host keys again"
    )
    p.add_argument(
        "--reset-trust", action="store_true", help="replace the device's trust set outright"
    )
    p.add_argument("--parallel", type=int, default=4, help="devices at a time")
    p.add_argument("--json", action="store_true", help="print the per-device outcomes as JSON")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("deploy", help="push a bundle to devices: verify, activate, health check")
    p.add_argument(
        "overrides", nargs="*", help="deployment=NAME fleet=NAME [device=a,b] [group=g] [version=N]"
    )
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
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("device-status", help="what each device of a fleet runs (agent status)")
    p.add_argument("overrides", nargs="*", help="fleet=NAME [device=a,b] [group=g]")
    p.add_argument("--parallel", type=int, default=4, help="devices at a time")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    p.set_defaults(func=cmd_device_status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run: edgeship keys|bundle|enroll|deploy|device-status")
