"""CLI verbs for fleets: ``rollout``, ``status``, ``trace``.

A thin layer over :mod:`orchestrator.ship.rollout.engine`, ``.status`` and ``.trace``:
it parses ``key=value`` words (labels such as ``site=north`` select devices),
prints progress as the rollout's journal grows, and prints tables. It is
discovered by :func:`orchestrator.cli.main.verb_modules`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.cli.common import (
    CLI,
    LABELS,
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
from orchestrator.errors import ExitCode, Problem, SpecError, UsageError

_print_lock = threading.Lock()


def _out(line: str = "") -> None:
    """Print one line; names and device answers in it cannot add lines or escape sequences."""
    with _print_lock:
        print(terminal(line), flush=True)


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _v(version: Any) -> str:
    return "-" if version is None else f"v{version}"


def _selection(opts: dict[str, str]) -> Any:
    from orchestrator.ship.rollout.plan import Selection

    return Selection(
        devices=split_list(opts.get("device")),
        groups=split_list(opts.get("group")),
        labels={k: split_list(opts[k]) for k in LABELS if k in opts},
    )


# -- rollout -------------------------------------------------------------------------------------


class ProgressPrinter:
    """Prints a rollout's journal entries as they are written: waves, devices, verdicts."""

    def __init__(self, journal_dir: Path | None = None, bars: ShipProgress | None = None) -> None:
        self.journal_dir = journal_dir or Path(".edgeship/rollouts")
        self.bars = bars or ShipProgress(enabled=False)  # waves, uploads, soaks on a terminal
        self.waves = 0
        self.width = 8
        self.version: int | None = None

    def __call__(self, e: dict[str, Any]) -> None:
        handler = getattr(self, "on_" + str(e.get("event")), None)
        if handler is not None:
            handler(e)

    def on_rollout_started(self, e: dict[str, Any]) -> None:
        b = e["bundle"]
        plan = e["plan"]
        self.waves = len(plan["waves"])
        self.version = int(b["version"])
        names = [d for w in plan["waves"] for d in w["devices"]]
        self.width = max([len(n) for n in names] + [6])
        strategy = e["strategy"]
        _out(f"rollout {e['id']}")
        model_version = (b.get("mlflow") or {}).get("model_version")
        model = f" (MLflow model version {model_version})" if model_version else ""
        _out(
            f"  {e['deployment']} bundle v{b['version']}{model} ({b['digest'][:12]}) "
            f"to {len(names)} device(s) "
            f"of fleet {e['fleet']['name']}, strategy {strategy['name']} ({strategy['source']})"
        )
        config = strategy["config"]
        budget = config["failure_budget"]
        budget_text = (
            f"{budget['max_fraction']:.0%} of a wave"
            if budget.get("max_fraction") is not None
            else f"{budget.get('max_failures') or 0} per wave"
        )
        _out(
            f"  max {config['max_parallel']} at a time, failure budget {budget_text}, "
            f"on failure: {config['on_failure']}"
        )
        _out(f"  journal: {_shown(self.journal_dir / (str(e['id']) + '.jsonl'))}")
        for device, why in plan.get("excluded", {}).items():
            _out(f"  left out: {device} ({why})")

    def on_resumed(self, e: dict[str, Any]) -> None:
        _out(
            f"resumed by pid {e['pid']} on {e['host']}: {len(e.get('done') or [])} device(s) "
            f"already done, redoing {', '.join(e.get('in_flight') or []) or 'none'} "
            "(in flight when it stopped)"
        )

    def on_wave_started(self, e: dict[str, Any]) -> None:
        self.bars.wave(f"wave {e['wave']}/{self.waves} ({e['name']})", len(e["devices"]))
        _out(
            f"wave {e['wave']}/{self.waves} ({e['name']}): {len(e['devices'])} device(s), "
            f"tolerates {e['allowed_failures']} failure(s)"
        )

    def on_device_done(self, e: dict[str, Any]) -> None:
        self.bars.device_done(e["device"])
        w = self.width
        line = f"  {e['device']:<{w}}  {e.get('address', ''):<21} {e['result']:<11}"
        before, after = e.get("from_version"), e.get("version")
        if e["result"] == "rolled_back":
            line += f" {_v(before)} -> v{self.version} -> {_v(after)}"
        elif e["result"] == "unchanged":
            line += f" {_v(after)}"
        elif after is not None or before is not None:
            line += f" {_v(before)} -> {_v(after)}"
        if e.get("refusal"):
            line += f" refusal={e['refusal']}"
        health = e.get("health") or {}
        if health.get("result"):
            latency = health.get("latency_ms")
            line += f"  health {health['result']}" + (f" {latency:.2f} ms" if latency else "")
        if e.get("files_sent") or e.get("files_linked"):
            line += f"  sent {human_size(int(e.get('bytes_sent') or 0))}" + (
                f" ({human_size(int(e['bytes_resumed']))} resumed)"
                if e.get("bytes_resumed")
                else ""
            )
        line += f"  {float(e.get('seconds') or 0):.1f}s"
        _out(line)
        if not e.get("ok") and e.get("message"):
            _out(f"  {'':<{w}}  {e['message']}")

    def on_device_skipped(self, e: dict[str, Any]) -> None:
        self.bars.device_done(e["device"])
        _out(f"  {e['device']:<{self.width}}  not started: {e['reason']}")

    def on_soak_started(self, e: dict[str, Any]) -> None:
        self.bars.soak(float(e["seconds"]), float(e["until"]))
        _out(f"  soak {float(e['seconds']):g}s, then health checks of the wave's devices")

    def on_soak_check(self, e: dict[str, Any]) -> None:
        self.bars.soak_done()
        reason = f" ({e['reason']})" if e.get("reason") else ""
        _out(f"  {e['device']:<{self.width}}  health after soak: {e['result']}{reason}")

    def on_analysis(self, e: dict[str, Any]) -> None:
        wave, base = e.get("wave_figures") or {}, e.get("baseline_figures") or {}

        def figures(f: dict[str, Any]) -> str:
            parts = [f"{int(f.get('events') or 0)} events"]
            if f.get("p95_ms") is not None:
                parts.append(f"p95 {float(f['p95_ms']):.2f} ms")
            if f.get("psi") is not None:
                parts.append(f"PSI {float(f['psi']):.3f}")
            if f.get("error_share") is not None:
                parts.append(f"errors {float(f['error_share']):.1%}")
            return ", ".join(parts)

        _out(
            f"  live analysis: {e['result']}: wave {figures(wave)}; still on the previous "
            f"version: {figures(base) if base else 'no events'}"
        )
        for reason in e.get("reasons") or []:
            _out(f"    {reason}")

    def on_wave_done(self, e: dict[str, Any]) -> None:
        self.bars.soak_done()
        failed = e.get("failed") or []
        verdict = "HALT: over budget" if e.get("halted") else "ok"
        _out(
            f"wave {e['wave']}/{self.waves}: {len(e.get('succeeded') or [])} succeeded, "
            f"{len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}"
            f"{', ' + str(len(e['skipped'])) + ' not started' if e.get('skipped') else ''}"
            f"; budget {e['allowed_failures']} -> {verdict}"
        )

    def on_rollout_halted(self, e: dict[str, Any]) -> None:
        _out(f"HALTED in wave {e['wave']}: {e['reason']}; on failure: {e['on_failure']}")

    def on_rollback_started(self, e: dict[str, Any]) -> None:
        _out(f"rolling back the {len(e['devices'])} device(s) this rollout touched")

    def on_device_rollback(self, e: dict[str, Any]) -> None:
        line = f"  {e['device']:<{self.width}}  {e['result']:<11}"
        if e.get("to_version") is not None:
            line += f" -> v{e['to_version']}"
        health = e.get("health") or {}
        if health.get("result"):
            line += f"  health {health['result']}"
        if e.get("message"):
            line += f"  {e['message']}"
        _out(line)

    def on_mlflow(self, e: dict[str, Any]) -> None:
        if e.get("error"):
            _out(f"mlflow: {e['error']}")
        elif e.get("alias"):
            _out(
                f"mlflow: {e['model']} version {e['model_version']} (bundle v{self.version}) "
                f"is now alias {e['alias']}"
            )
        elif e.get("candidate_withdrawn"):
            _out(
                f"mlflow: rollout recorded as {e['status']}; {e['model']} version "
                f"{e['model_version']} is no longer alias candidate"
            )
        elif e.get("alias_kept") and e.get("status") == "completed":
            _out(
                f"mlflow: rollout recorded as completed; alias {e['alias_kept']} not moved "
                "(the rollout covered part of the fleet)"
            )
        elif e.get("status") and e.get("status") != "running":
            _out(f"mlflow: rollout recorded as {e['status']}")

    def on_rollout_finished(self, e: dict[str, Any]) -> None:
        failed = e.get("failed") or []
        counts: dict[str, int] = {}
        for version in (e.get("running") or {}).values():
            key = _v(version)
            counts[key] = counts.get(key, 0) + 1
        now = ", ".join(f"{v} on {n}" for v, n in sorted(counts.items())) or "nothing"
        _out(
            f"rollout {e['status']} in {float(e.get('seconds') or 0):.1f}s: now {now} device(s)"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + (f"; not reached: {', '.join(e['not_reached'])}" if e.get("not_reached") else "")
        )


def cmd_rollout(args: argparse.Namespace) -> int:
    bars = ShipProgress(enabled=False if args.json else None)
    try:
        return _rollout(args, bars)
    finally:
        bars.close()


def _rollout(args: argparse.Namespace, bars: ShipProgress) -> int:
    from orchestrator.cli.ship import bundle_from
    from orchestrator.ship.rollout.engine import (
        RolloutHaltedError,
        report_of,
        resume_rollout,
        start_rollout,
    )
    from orchestrator.spec.files import option_label
    from orchestrator.spec.fleet import load_fleet
    from orchestrator.spec.strategy import load_rollout

    root = project_dir()
    if args.list:
        return _list_rollouts(root)
    if args.abandon:
        from orchestrator.ship.rollout.engine import abandon_rollout

        for line in abandon_rollout(root, args.abandon):
            _out(line)
        return ExitCode.OK
    from orchestrator.ship.rollout.journal import rollouts_dir

    printer = ProgressPrinter(rollouts_dir(root), bars)
    store = key_store()
    store = store if store.exists() else None
    if args.resume is not None:
        if args.overrides:
            raise UsageError(
                [Problem(CLI, "resume", "takes no KEY=VALUE words; the journal has them all")]
            )
        report = resume_rollout(
            root,
            args.resume or None,
            store,
            listeners=[printer],
            on_bytes=bars.upload,
            analyst=_analyst(root),
        )
        for note in report.notes:
            _out(f"note: {note}")
        return ExitCode.OK if report.status == "completed" else ExitCode.ROLLOUT_HALTED
    if args.show:
        report = report_of(root, args.show)
        return _show(report, args.json)
    allowed = ("deployment", "fleet", "rollout", "version", "device", "group", *LABELS)
    opts = pairs(args.overrides, allowed, ("deployment", "fleet", "rollout"))
    integer(opts, "version")
    fleet = load_fleet(opts["fleet"], root)
    strategy = load_rollout(opts["rollout"], root)
    source = (
        option_label(root, "rollout", opts["rollout"])
        if not opts["rollout"].endswith((".yaml", ".yml")) and "/" not in opts["rollout"]
        else opts["rollout"]
    )
    printer_list: list[Callable[[dict[str, Any]], None]] = [printer] if not args.json else []
    with bundle_from(args, opts) as bundle:
        if args.dry_run and fleet.pull is not None:
            return _pull_dry_run(fleet, bundle, strategy, source, opts, store, args.json)
        if args.dry_run:
            from orchestrator.cli.ship import print_dry_run
            from orchestrator.ship.dry_run import dry_run_rollout
            from orchestrator.ship.rollout.plan import plan_rollout

            family = str((bundle.manifest.get("target") or {}).get("family"))
            plan = plan_rollout(fleet, strategy, family, _selection(opts), source)
            locks = rollouts_dir(root) / "locks"
            return print_dry_run(dry_run_rollout(fleet, plan, bundle, store, locks), args.json)
        if fleet.pull is not None and store is not None:
            return _pull_rollout(
                root, fleet, bundle, strategy, source, opts, store, args.json, not args.no_record
            )
        try:
            report = start_rollout(
                root,
                fleet,
                opts["fleet"],
                bundle,
                strategy,
                source,
                _selection(opts),
                store,
                record=not args.no_record,
                listeners=printer_list,
                on_bytes=bars.upload,
                analyst=_analyst(root) if strategy.analysis is not None else None,
            )
        except RolloutHaltedError as exc:
            if args.json:
                _show(exc.report, True)
            raise
        except KeyboardInterrupt:
            print(
                "interrupted: the journal keeps every step; carry on with: "
                "edgeship rollout --resume",
                file=sys.stderr,
            )
            raise
    for note in report.notes:
        _out(f"note: {note}")
    if args.json:
        _show(report, True)
    return 0


def _pull_dry_run(
    fleet: Any,
    bundle: Any,
    strategy: Any,
    source: str,
    opts: dict[str, str],
    store: Any,
    as_json: bool,
) -> int:
    """What a pull rollout would publish: the waves, after the checks that refuse it."""
    from orchestrator.ship.deploy import require_approval
    from orchestrator.ship.rollout.plan import plan_rollout

    require_approval(fleet, bundle, store)
    family = str((bundle.manifest.get("target") or {}).get("family"))
    plan = plan_rollout(fleet, strategy, family, _selection(opts), source)
    if as_json:
        print(json.dumps(plan.to_json(), indent=2, sort_keys=True))
        return ExitCode.OK
    m = bundle.manifest
    _out(f"dry run: {m['deployment']} v{m['version']} to pull fleet {fleet.name}; nothing is "
         f"published")  # fmt: skip
    for wave in plan.waves:
        _out(f"  wave {wave.name}: {len(wave.devices)} device(s), {wave.allowed_failures} "
             f"failure(s) allowed")  # fmt: skip
    for name, why in plan.excluded.items():
        _out(f"  left out: {terminal(name)} ({why})")
    return ExitCode.OK


def _pull_rollout(
    root: Path,
    fleet: Any,
    bundle: Any,
    strategy: Any,
    source: str,
    opts: dict[str, str],
    store: Any,
    as_json: bool,
    record: bool,
) -> int:
    """A fleet that pulls: publish wave after wave into the signed repository, watch reports."""
    from orchestrator.ship.pull import pull_rollout

    def show(e: dict[str, Any]) -> None:
        if e["event"] == "wave_started":
            _out(f"wave {e['wave']}: open to {e['devices']} devices (published)")
        elif e["event"] == "wave_done":
            _out(
                f"wave {e['name']}: {e['healthy']} healthy, {len(e['failed'])} failed, "
                f"{len(e['silent'])} silent in {e['seconds']:.1f} s"
            )
        elif e["event"] == "rollout_halted":
            _out(f"halted: {e['reason']}; rollback published: {e['rollback']}")

    m = bundle.manifest
    _out(f"rollout of {m['deployment']} v{m['version']} to pull fleet {fleet.name}")
    report = pull_rollout(
        root,
        fleet,
        bundle,
        strategy,
        source,
        _selection(opts),
        store,
        [] if as_json else [show],
        record=record,
    )
    if as_json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    elif report.status == "halted":
        _out(f"rolled back: {len(report.rolled_back)}; not rolled back: {report.not_rolled_back}")
    else:
        _out(f"completed: every wave healthy (rollout {report.id})")
    return ExitCode.OK if report.status == "completed" else ExitCode.ROLLOUT_HALTED


def _show(report: Any, as_json: bool) -> int:
    s = report.state
    if as_json:
        print(
            json.dumps(
                {
                    "id": report.id,
                    "status": report.status,
                    "journal": str(report.journal),
                    "succeeded": report.succeeded,
                    "failed": report.failed,
                    "halted": s.halted,
                    "devices": s.done,
                    "rollback": s.rolled_back,
                    "mlflow": s.mlflow,
                },
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
        return 0
    for note in report.notes:
        print(terminal(f"note: {note}"), file=sys.stderr)
    print(terminal(report.summary(), keep_newlines=True))
    print(terminal(f"  journal: {report.journal}"))
    for device, e in s.done.items():
        print(
            terminal(
                f"  {device:<10} {e['result']:<11} v{e.get('from_version')} -> "
                f"v{e.get('version')}  {e.get('message') or ''}".rstrip()
            )
        )
    return 0


def _list_rollouts(root: Path) -> int:
    from orchestrator.ship.rollout.journal import journals, load_rollout, rollouts_dir

    folder = rollouts_dir(root)
    paths = journals(folder)
    print(f"{len(paths)} rollout(s) in {folder}")
    damaged = []
    for path in paths:
        try:
            s, _ = load_rollout(path)
        except (ValueError, OSError) as exc:
            damaged.append(path.stem)
            print(terminal(f"  {path.stem}  DAMAGED    {str(exc).splitlines()[0]}"))
            continue
        b = s.started["bundle"]
        devices = sum(len(w["devices"]) for w in s.started["plan"]["waves"])
        failed = len(s.failed_in(list(s.done)))
        print(
            terminal(
                f"  {path.stem}  {s.status:<10} {s.started['deployment']} v{b['version']} "
                f"-> {s.started['fleet']['name']} ({s.started['strategy']['name']}): "
                f"{len(s.done)}/{devices} device(s) done, {failed} failed"
            )
        )
    for rid in damaged:
        print(f"see: edgeship rollout --show {rid}; give it up: edgeship rollout --abandon {rid}")
    return 0


# -- status --------------------------------------------------------------------------------------


def _analyst(root: Path) -> Any:
    """Live canary analysis reads the events collector's database (``$EDGESHIP_EVENTS_DB``,
    else the project's, unless the strategy names one)."""
    from orchestrator.events.monitor import EventsAnalyst
    from orchestrator.project import bundles_root, events_db_url

    return EventsAnalyst(events_db_url(root), bundles_root(root))


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.ship.status import fleet_status
    from orchestrator.spec.fleet import load_fleet

    opts = pairs(args.overrides, ("fleet", "device", "group", *LABELS), ("fleet",))
    fleet = load_fleet(opts["fleet"], project_dir())
    if fleet.feed is not None and not fleet.devices:
        print(
            f"fleet {fleet.name} is phones polling the feed {fleet.feed.base_url}; see what it "
            f"offers with: edgeship publish fleet={opts['fleet']} --show"
        )
        return 0
    sel = _selection(opts)
    devices = fleet.select(sel.devices or None, sel.groups or None, sel.labels)
    if fleet.pull is not None:
        return _pull_status(fleet, [d.name for d in devices], args.json)
    rows = fleet_status(fleet, devices, timeout=args.timeout, parallel=args.parallel)
    live = {} if args.no_live else _live_by_device(fleet.name, args.window)
    if args.json:
        out = []
        for r in rows:
            stats = live.get((r.device, r.deployment, r.version))
            out.append(r.to_json() | ({"live": stats.to_json()} if stats else {}))
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
    else:
        _status_table(fleet.name, rows, live)
        if live:
            print(f"live: prediction events of the last {args.window:g} minute(s)")
    bad = [r for r in rows if not r.ok]
    if any(r.state == "unreachable" for r in bad):
        return ExitCode.UNREACHABLE
    return ExitCode.DEVICES_FAILED if bad else ExitCode.OK


def _pull_status(fleet: Any, names: list[str], as_json: bool) -> int:
    """A pull fleet's status: each device's latest report (nothing connects to devices)."""
    from orchestrator.ship.pull import latest_reports

    reports = latest_reports(project_dir(), fleet.name)
    if as_json:
        print(json.dumps({n: reports.get(n) for n in names}, indent=2, sort_keys=True))
    else:
        print(f"fleet {fleet.name} (pull): the latest report of each device")
        print(f"  {'device':<16} {'running':>7} {'result':<12} {'rollout':<40} reported at")
        for n in names:
            r = reports.get(n)
            if r is None:
                print(f"  {terminal(n):<16} {'-':>7} {'no report':<12}")
                continue
            result = str(r.get("result"))
            if r.get("reason"):
                result += f" ({r['reason']})"
            print(
                f"  {terminal(n):<16} {terminal(str(r.get('running'))):>7} "
                f"{terminal(result):<12} {terminal(str(r.get('rollout') or '-')):<40} "
                f"{terminal(str(r.get('received_at')))}"
            )
    silent = [n for n in names if n not in reports]
    bad = [n for n in names if (reports.get(n) or {}).get("result") in ("failed", "refused")]
    if not as_json:
        print(f"{len(names) - len(silent) - len(bad)} of {len(names)} device(s) fine; "
              f"{len(bad)} failed; {len(silent)} never reported")  # fmt: skip
    return ExitCode.DEVICES_FAILED if bad else ExitCode.OK


def _live_by_device(fleet: str, window: float) -> dict[tuple[Any, ...], Any]:
    """The live figures of each device's (deployment, version) from the events database, when
    there is one (``$EDGESHIP_EVENTS_DB`` or the project's ``.edgeship/events.db``)."""
    import os

    from orchestrator.events.monitor import References, live_stats, since_minutes
    from orchestrator.events.store import EventStore
    from orchestrator.project import ENV_EVENTS_DB, bundles_root, events_db_url

    root = project_dir()
    if not os.environ.get(ENV_EVENTS_DB) and not (root / ".edgeship" / "events.db").is_file():
        return {}
    store = EventStore(events_db_url(root))
    try:
        stats = live_stats(store, since=since_minutes(window), fleet=fleet)
    finally:
        store.close()
    References(bundles_root(root)).fill(stats)
    return {(s.device, s.deployment, s.version): s for s in stats if s.device != "*"}


def _status_table(
    fleet: str, rows: list[Any], live: dict[tuple[Any, ...], Any] | None = None
) -> None:
    from orchestrator.events.monitor import fmt

    live = live or {}
    head = ["device", "address", "labels", "deployment", "version", "health", "last change"]
    if live:
        head += ["p50/p95 ms", "ev/min", "PSI"]
    table: list[tuple[str, ...]] = [tuple(head)]
    for r in rows:
        stats = live.get((r.device, r.deployment, r.version))
        extra: tuple[str, ...] = ()
        if stats:
            p = f"{fmt(stats.p50_ms)}/{fmt(stats.p95_ms)}"
            extra = (p, fmt(stats.per_minute), fmt(stats.psi, ".3f"))
        elif live:
            extra = ("-", "-", "-")
        labels = " ".join(f"{k}={v}" for k, v in r.labels.items()) or "-"
        if r.state in ("running", "idle", "not_enrolled"):
            health = r.health or "-"
            if r.health == "pass" and r.latency_ms:
                health = f"pass {r.latency_ms:.2f} ms"
                if r.engine:
                    health += f", {engine_summary(r.engine)}"
            elif r.health == "fail" and r.health_reason:
                health = f"FAIL: {r.health_reason[:40]}"
            change = f"{r.last_change} {r.last_event}" if r.last_change else "-"
            version = f"v{r.version}" if r.version is not None else "-"
            if r.state == "not_enrolled":
                version, health, change = "-", "-", "not enrolled"
            table.append(
                (r.device, r.address, labels, r.deployment or "-", version, health, change, *extra)
            )
        else:
            message = r.message.split(": ", 1)[-1] if r.message else ""
            table.append(
                (r.device, r.address, labels, "-", "-", r.state.upper(), message[:60] or "-",
                 *extra)
            )  # fmt: skip
    # one row per device: a newline or ANSI escape in a label or answer is shown, not obeyed
    cells = [[terminal(c) for c in row] for row in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    healthy = sum(1 for r in rows if r.ok and r.version is not None)
    unreachable = sum(1 for r in rows if r.state == "unreachable")
    other = len(rows) - healthy - unreachable
    versions: dict[str, int] = {}
    for r in rows:
        if r.version is not None:
            key = f"{r.deployment} v{r.version}"
            versions[key] = versions.get(key, 0) + 1
    running = ", ".join(f"{k} on {n}" for k, n in sorted(versions.items())) or "nothing"
    print(
        terminal(
            f"fleet {fleet}: {len(rows)} device(s): {healthy} healthy, {unreachable} "
            f"unreachable, {other} other; running {running}"
        )
    )


# -- trace ---------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    from orchestrator.ship.trace import render_html, trace_device
    from orchestrator.spec.fleet import fleet_options, load_fleet
    from registry.bundle import bundles_root

    root = project_dir()
    opts = pairs(args.overrides, ("fleet",))
    if "fleet" in opts:
        fleet = load_fleet(opts["fleet"], root)
    else:
        holders = []
        for name in fleet_options(root):
            try:
                candidate = load_fleet(name, root)
            except SpecError:
                continue
            if args.device in candidate.names():
                holders.append(candidate)
        if len(holders) != 1:
            found = ", ".join(f.name for f in holders) or "none"
            raise SpecError(
                [
                    Problem(
                        CLI,
                        "fleet",
                        f"device '{args.device}' is in {len(holders)} fleet(s) ({found}); "
                        "name one with fleet=NAME",
                    )
                ]
            )
        fleet = holders[0]
    store = key_store()
    tracker = None
    if not args.no_mlflow:
        from registry.tracking import Tracker

        tracker = Tracker(root)
    trace = trace_device(
        root,
        fleet,
        args.device,
        store if store.exists() else None,
        bundles_root(root),
        tracker,
        timeout=args.timeout,
    )
    if args.format == "json":
        text = json.dumps(trace.to_json(), indent=2, sort_keys=True, default=str) + "\n"
    elif args.format == "html":
        text = render_html(trace)
    else:
        text = _trace_text(trace)
    if args.output:
        from orchestrator.core.fsutil import write_text

        write_text(Path(args.output), text)
        print(f"{args.device}: trace written to {args.output} ({'ok' if trace.ok else 'FAILED'})")
    else:
        print(text, end="")
    if trace.ok:
        return ExitCode.OK
    return ExitCode.UNREACHABLE if trace.source == "journal" else ExitCode.DEVICES_FAILED


def engine_summary(engine: dict[str, Any], full: bool = False) -> str:
    """A TensorRT engine built on a device: its hash, TensorRT version and GPU."""
    digest = str(engine.get("sha256") or "-")
    text = (
        f"engine {digest if full else digest[:12]} built on the device with TensorRT "
        f"{engine.get('tensorrt_version') or '?'} on {engine.get('gpu') or '?'}"
    )
    if full and engine.get("onnx_sha256"):
        text += f", from ONNX sha256 {engine['onnx_sha256']}"
    return text


def _trace_text(t: Any) -> str:
    d, r, b, p = t.device, t.running, t.bundle, t.provenance
    lines = []
    labels = ", ".join(f"{k} {v}" for k, v in d["labels"].items())
    lines.append(f"device      {d['name']} ({d['address']}), fleet {d['fleet']}; {labels}")
    health = r.get("health") or "-"
    if r.get("latency_ms"):
        health += f" {r['latency_ms']:.2f} ms"
    runtime = r.get("runtime") or {}
    if runtime:
        health += f" with {runtime.get('name')} {runtime.get('version')}"
    lines.append(
        f"running     {r['deployment']} v{r['version']}"
        + (f" since {r['last_change']} ({r['last_event']})" if r.get("last_change") else "")
        + f"; health {health}"
    )
    if r.get("engine"):
        lines.append(f"engine      {engine_summary(r['engine'], full=True)}")
    if t.source == "journal":
        lines.append("            (the device did not answer: from the last rollout journal)")
    lines.append(f"bundle      manifest sha256 {b.get('manifest_sha256')}")
    if b.get("key_id"):
        lines.append(
            f"            signed {b.get('algorithm')} by key {b['key_id']}, created "
            f"{b.get('created_at')}, expires {b.get('expires_at')}"
        )
    if b.get("issued"):
        lines.append(f"            issued as {_shown(Path(b['issued']['path']))}")
    approval = b.get("approval")
    if approval:
        who = approval.get("approver") or {}
        lines.append(
            f"approved    by {who.get('name')} ({', '.join(who.get('roles') or [])}, key "
            f"{who.get('key_id')}) at {approval.get('approved_at')}: {approval.get('comment')}"
        )
    built_by = p.get("built_by")
    bundled_by = (p.get("bundled_by") or {}).get("user")
    if built_by or bundled_by:
        lines.append(f"people      built by {built_by or '?'}, bundled by {bundled_by or '?'}")
    ml = p.get("mlflow") or {}
    run = (t.mlflow or {}).get("run") or {}
    if ml.get("run_id"):
        lines.append(
            f"mlflow run  {ml['run_id']}"
            + (f" (experiment {run['experiment']}, {run['status']})" if run else "")
        )
        mv = (t.mlflow or {}).get("model_version")
        if ml.get("model_name"):
            aliases = ", ".join(mv["aliases"]) if mv else "?"
            lines.append(
                f"            model {ml['model_name']} version {ml['model_version']}; "
                f"aliases: {aliases or '-'}"
            )
    else:
        lines.append("mlflow run  - (the build was not recorded)")
    git = p.get("git") or {}
    lines.append(
        f"git         {git.get('commit') or '-'}"
        + (f" ({git.get('branch')})" if git.get("branch") else "")
        + (" with uncommitted changes at build time" if git.get("dirty") else "")
    )
    validation = p.get("validation") or {}
    for k, v in (validation.get("data") or {}).items():
        lines.append(f"data        {k} {v}")
    lines.append(
        f"validation  {'passed' if validation.get('passed') else 'NOT passed'}; built "
        f"{p.get('built_at') or '-'}"
    )
    lines.append(f"measured on {measured_on(validation)}")
    where = measured_where(validation)
    for g in validation.get("gates") or []:
        value = g.get("value")
        shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
        lines.append(
            f"            {g['gate']:<26} {shown:>10}  {'pass' if g.get('passed') else 'FAIL'}"
            f"  ({where})"
        )
    for g in validation.get("build_machine_gates") or []:
        value = g.get("value")
        shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
        lines.append(
            f"            {g['gate']:<26} {shown:>10}  {'pass' if g.get('passed') else 'FAIL'}"
            "  (build machine, not gated)"
        )
    for ro in t.rollouts:
        who = ro.get("operator") or {}
        by = f"            run by {who.get('user') or '?'}" + (
            f"@{who['host']}" if who.get("host") else ""
        )
        if who.get("key_id"):
            by += f" with key {who['key_id']}"
        lines.append(
            f"rollout     {ro['at']} {ro['rollout']} ({ro['strategy']}): {ro['result']} "
            f"{ro['change']}; rollout {ro['rollout_status']}"
        )
        lines.append(by)
    if p.get("allow_dirty"):
        lines.append("            bundled with --allow-dirty despite the uncommitted changes")
    for w in t.warnings:
        lines.append(f"WARNING     {w}")
    lines.append("checks")
    for c in t.checks:
        mark = "ok  " if c.ok else ("--  " if c.ok is None else "FAIL")
        lines.append(f"  {mark} {c.name}: {c.detail}")
    return "\n".join(terminal(line) for line in lines) + "\n"


def measured_where(validation: dict[str, Any]) -> str:
    """Where a build's gated figures were measured: the lab device's name or the build machine."""
    on = validation.get("validated_on") if validation.get("device_validated") else None
    return f"lab device {on.get('device')}" if isinstance(on, dict) else "build machine"


def measured_on(validation: dict[str, Any]) -> str:
    """:func:`measured_where` with the fleet, runtime and Python of a lab device."""
    on = validation.get("validated_on") if validation.get("device_validated") else None
    if not isinstance(on, dict):
        return "the build machine (gated figures)"
    return (
        f"lab device {on.get('device')} of fleet {on.get('fleet')} (gated figures): "
        f"{on.get('runtime')} {on.get('runtime_version')}, Python {on.get('python')}; "
        "the build machine's figures are kept as build_machine.*"
    )


def register(sub: Any) -> None:
    """Add the fleet verbs to the ``edgeship`` parser."""
    p = sub.add_parser(
        "rollout",
        help="roll a bundle out to a fleet in waves (canary, failure budget, rollback)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="deployment=NAME fleet=NAME rollout=STRATEGY [version=N] [device=a,b] [group=g] "
        "[site=..] [ward=..] [bed=..]",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="ID",
        help="carry on an interrupted rollout (default: the newest unfinished one)",
    )
    p.add_argument("--list", action="store_true", help="list the rollouts in the journal folder")
    p.add_argument("--show", metavar="ID", help="show one rollout from its journal")
    p.add_argument(
        "--abandon",
        metavar="ID",
        help="give up on an interrupted rollout or a damaged journal: devices keep what they "
        "run, its locks are released, a damaged journal is moved to damaged/",
    )
    p.add_argument(
        "--bundle", metavar="PATH", help="a bundle folder or exported .tar instead of deployment="
    )
    p.add_argument("--no-record", action="store_true", help="do not record the rollout in MLflow")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the waves, budgets, bytes per device and refusals; touch nothing",
    )
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("status", help="what every device of a fleet runs (a table, in parallel)")
    words(p, "fleet=NAME [device=a,b] [group=g] [site=..] [ward=..]")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per device")
    p.add_argument("--parallel", type=int, default=16, help="devices asked at a time")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="minutes of prediction events the live columns cover",
    )
    p.add_argument(
        "--no-live", action="store_true", help="leave out the live columns (prediction events)"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "trace", help="what runs on a device, back to bundle, MLflow run, commit, data, gates"
    )
    p.add_argument("device", help="device name")
    words(p, "[fleet=NAME] (needed when several fleets have it)")
    p.add_argument("--format", choices=("text", "html", "json"), default="text")
    p.add_argument(
        "--json", action="store_const", dest="format", const="json", help="same as --format json"
    )
    p.add_argument("-o", "--output", help="write the report to this file")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds for the device to answer")
    p.add_argument("--no-mlflow", action="store_true", help="do not consult MLflow")
    p.set_defaults(func=cmd_trace)
