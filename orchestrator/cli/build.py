"""CLI verbs of the build half: ``list``, ``show``, ``train``, ``build``.

Parsing and printing only: the logic lives in :mod:`orchestrator.spec` and
:mod:`orchestrator.build`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.cli.common import words
from orchestrator.cli.progress import BuildSteps
from orchestrator.errors import EdgeshipError, GateFailure, Problem, SpecError, UsageError
from orchestrator.project import project_root


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_list(args: argparse.Namespace) -> int:
    from orchestrator.passes.base import registered_passes
    from orchestrator.spec.files import list_options, option_origin
    from targets.base import registered_targets

    root = project_root()
    groups = ("deployment", "model", "recipe", "target", "fleet", "rollout")
    if args.json:
        listing: dict[str, Any] = {"project": str(root)}
        for group in groups:
            listing[f"{group}s"] = [
                {"name": o, "origin": option_origin(root, group, o)}
                for o in list_options(root, group)
            ]
        listing["target_families"] = [
            {"family": fam, "runtime": cls.runtime, "description": cls.description}
            for fam, cls in sorted(registered_targets().items())
        ]
        listing["passes"] = [
            {"name": name, "description": pcls.description}
            for name, pcls in sorted(registered_passes().items())
        ]
        _print_json(listing)
        return 0
    print(f"project: {root}")
    for group in groups:
        options = list_options(root, group)
        print(f"{group}s ({len(options)}):")
        width = max((len(o) for o in options), default=0)
        for o in options:
            print(f"  {o:<{width}}  ({option_origin(root, group, o)})")
    print("target families:")
    families = sorted(registered_targets().items())
    fw = max(len(f) for f, _ in families)
    rw = max(len(c.runtime) for _, c in families)
    for fam, cls in families:
        print(f"  {fam:<{fw}} {cls.runtime:<{rw}} {cls.description}")
    print("passes:")
    passes = sorted(registered_passes().items())
    pw = max(len(n) for n, _ in passes)
    for name, pcls in passes:
        print(f"  {name:<{pw}} {pcls.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from orchestrator.spec.compose import compose

    spec = compose(args.overrides)
    if args.json:
        shown = {
            "deployment": spec.name,
            "choices": spec.choices,
            "files": spec.files,
            "spec": spec.data,
        }
        text = json.dumps(shown, indent=2, sort_keys=True, default=str) + "\n"
    else:
        text = f"# deployment {spec.name}: " + ", ".join(
            f"{k}={v}" for k, v in spec.choices.items()
        )
        text += "\n" + spec.to_yaml()
    if args.output:
        from pathlib import Path

        from orchestrator.core.fsutil import write_text

        write_text(Path(args.output), text)
    else:
        print(text, end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from orchestrator.build import reference
    from orchestrator.spec.compose import load_option

    root = project_root()
    names = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model=")]
    if not names:
        raise SpecError([], title="edgeship train needs model=NAME")
    for name in names[0].split(","):
        model = load_option("model", name, root)
        path = reference.weights_path(model, root)
        if path is not None and path.exists() and args.force:
            if path.is_dir():  # a model folder (a Hugging Face source's save_pretrained)
                import shutil

                shutil.rmtree(path)
            else:
                path.unlink()
        t0 = time.perf_counter()
        reference.ensure_weights(model, root)
        print(f"{name}: weights at {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from orchestrator.build import store_reference
    from orchestrator.spec.compose import load_option

    root = project_root()
    names = [o.split("=", 1)[1] for o in args.overrides if o.startswith("model=")]
    if not names or len(args.overrides) != 1:
        raise SpecError([], title="edgeship reference needs model=NAME (and nothing else)")
    for name in names[0].split(","):
        model = load_option("model", name, root)
        t0 = time.perf_counter()
        path, summary, computed = store_reference.compute_and_store(model, root, args.threads)
        how = "computed" if computed else "kept outputs matched, not recomputed"
        print(
            f"{name}: reference outputs at {path.relative_to(root)} (key {summary['key']}; "
            f"{how}; {time.perf_counter() - t0:.1f}s)"
        )
    return 0


def _step_printer(prefix: str) -> BuildSteps:
    return BuildSteps(prefix)


def cmd_build(args: argparse.Namespace) -> int:
    from orchestrator.spec.compose import compose, split_sweeps

    jobs = split_sweeps(args.overrides) if args.multirun else [args.overrides]
    specs = []
    problems = []
    for job in jobs:
        try:
            specs.append(compose(job))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    if specs:
        from orchestrator.spec.dvc_stages import refresh_stage_lists

        for note in refresh_stage_lists(specs[0].root):
            _err(f"note: {note}")
    from orchestrator.build.distributed import RayBuilds, Resources, ray_address

    address = ray_address(args.ray)  # None: build here; Ray is never imported
    if args.ray_resources and address is None:
        raise UsageError(
            [Problem("command line", "--ray-resources", "needs --ray or EDGESHIP_RAY_ADDRESS")]
        )
    if address is not None and specs:
        resources = Resources.parse(args.ray_resources)
        pool = RayBuilds(address, specs[0].root, resources)
        try:
            return _build_all(specs, args, pool)
        finally:
            pool.close()
    return _build_all(specs, args, None)


def _report_dir(spec: Any, args: argparse.Namespace) -> Path | None:
    if not args.report_dir:
        return None
    return Path(args.report_dir) / spec.name if args.multirun else Path(args.report_dir)


def _build_all(specs: list[Any], args: argparse.Namespace, pool: Any) -> int:
    """Every build in order; with ``pool`` (a Ray cluster) every plain build is submitted
    first and waited for in order, and a selection's candidates run on the cluster too."""
    from orchestrator.build.pipeline import run_build

    tickets: dict[int, Any] = {}
    measurers: dict[int, Any] = {}
    if pool is not None:
        for i, spec in enumerate(specs):
            measurers[i] = _lab_measurer(spec)
            # a lab device measures one build at a time: those builds stay on this machine
            if measurers[i] is None and not spec.config.recipe.select:
                tickets[i] = pool.submit(
                    spec, record=not args.no_record, report_dir=_report_dir(spec, args)
                )
                _err(f"[{spec.name}] submitted to the Ray cluster at {pool.address}")
    failures = 0
    error: EdgeshipError | None = None
    errors = 0
    outcomes: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        report_dir = _report_dir(spec, args)
        try:
            if i in tickets:
                result = pool.result(tickets[i])
            else:
                measurer = measurers[i] if i in measurers else _lab_measurer(spec)
                if spec.config.recipe.select:
                    result = _run_selection(spec, args, report_dir, measurer, pool)
                else:
                    steps = _step_printer(spec.name)
                    try:
                        result = run_build(
                            spec,
                            on_step=steps,
                            record=not args.no_record,
                            report_dir=report_dir,
                            measurer=measurer,
                        )
                    finally:
                        steps.close()
        except GateFailure as exc:
            failures += 1
            _err(str(exc))
            outcomes.append(
                {
                    "deployment": exc.deployment,
                    "passed": False,
                    "failed_gates": exc.failed,
                    "run_id": exc.run_id,
                }
            )
            continue
        except EdgeshipError as exc:
            if pool is None:
                raise
            # the cluster's other builds run on: each is shown, then the first error decides
            _err(str(exc))
            error = error or exc
            errors += 1
            outcomes.append(
                {
                    "deployment": spec.name,
                    "passed": False,
                    "error": str(exc),
                    "exit_code": int(exc.exit_code),
                }
            )
            continue
        if args.json:
            outcomes.append(_result_json(result))
        else:
            _print_result(result)
    if args.json:
        _print_json(outcomes)
    if error is not None:
        gates = f", {failures} failed their gates" if failures else ""
        _err(
            f"{errors} of {len(specs)} build(s) broke{gates}; "
            f"exit code {int(error.exit_code)}: the first error's"
        )
        return int(error.exit_code)
    if failures:
        _err(f"{failures} of {len(specs)} build(s) failed their gates")
        return GateFailure.exit_code
    return 0


def _lab_measurer(spec: Any) -> Any:
    """The lab device measurer of ``deployment.validate_on.where: lab`` (None: build machine)."""
    place = spec.config.deployment.validate_on
    if place.where != "lab":
        return None
    from orchestrator.cli.common import key_store
    from orchestrator.ship.lab import lab_measurer

    family = spec.config.target.family
    return lab_measurer(spec.root, family, place.fleet, place.device, key_store(), place.timeout)


def _run_selection(
    spec: Any,
    args: argparse.Namespace,
    report_dir: Path | None,
    measurer: Any = None,
    pool: Any = None,
) -> object:
    """recipe=auto: build every candidate, print the comparison, return the winner's build
    (with ``pool``, the candidates are built on the Ray cluster at once)."""
    from orchestrator.build.select import NoCandidatePassedError, run_selection

    t0 = time.perf_counter()
    steps = _step_printer(spec.name)
    try:
        selection = run_selection(
            spec,
            on_step=steps,
            record=not args.no_record,
            report_dir=report_dir,
            measurer=measurer,
            build_candidates=pool.candidates if pool is not None and measurer is None else None,
        )
    except NoCandidatePassedError as exc:
        steps.close()
        (_err if args.json else print)(exc.result.summary())
        raise
    finally:
        steps.close()
    table = selection.summary()
    if args.json:
        _err(table)
    else:
        print(table, end="")
        print("  full table: selection/comparison.md in the artifact folder")
        if selection.parent_run_id:
            print(f"  selection run: {selection.parent_run_id}")
    build = selection.winner_build()
    build.seconds = time.perf_counter() - t0  # the whole selection, every candidate
    return build


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _result_json(result: Any) -> dict[str, Any]:
    v = result.validation
    return {
        "deployment": result.deployment,
        "passed": v.passed,
        "seconds": round(result.seconds, 3),
        "artifact": str(result.artifact_dir),
        "run_id": result.run_id,
        "model_version": result.model_version,
        "version_reused": result.version_reused,
        "gates": [{"gate": str(g.gate), "value": g.value, "passed": g.passed} for g in v.gates],
        "metrics": v.metrics,
        "device_validated": v.validated_on is not None,
        "validated_on": v.validated_on,
    }


def _print_result(result: object) -> None:
    from orchestrator.build.pipeline import BuildResult

    assert isinstance(result, BuildResult)
    v = result.validation
    print(f"{result.deployment}: {'PASSED' if v.passed else 'FAILED'} in {result.seconds:.1f}s")
    print(f"  artifact:    {result.artifact_dir}")
    where = v.validated_on
    if where is not None:
        print(
            f"  measured on: lab device {where['device']} (fleet {where['fleet']}, "
            f"{where['runtime']} {where['runtime_version']}, Python {where['python']}); "
            "build machine figures kept as build_machine.*"
        )
    if result.run_id:
        print(f"  mlflow run:  {result.run_id}")
    if result.model_version:
        how = "unchanged artifact, alias candidate" if result.version_reused else "alias candidate"
        print(f"  registered:  {result.deployment} version {result.model_version} ({how})")
    width = max((len(str(g.gate)) for g in v.gates), default=10)
    for g in v.gates:
        shown = "n/a" if g.value is None else f"{g.value:.4g}"
        print(f"  {g.gate!s:<{width}}  {shown:>10}  {'pass' if g.passed else 'FAIL'}")


def register(sub: Any) -> None:
    """Add the build verbs to the ``edgeship`` parser."""
    p = sub.add_parser("list", help="deployments, models, recipes, targets, fleets, passes")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print the composed, validated spec as YAML")
    p.add_argument("-o", "--output", help="write the YAML to this file (atomically)")
    p.add_argument("--json", action="store_true", help="the spec, choices and files as JSON")
    words(p, "Hydra overrides, e.g. deployment=NAME key=value")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("build", help="export -> optimise -> validate -> record")
    p.add_argument(
        "-m", "--multirun", action="store_true", help="sweep: deployment=a,b builds both"
    )
    p.add_argument("--no-record", action="store_true", help="do not write to MLflow")
    p.add_argument(
        "--json", action="store_true", help="print each build's outcome as JSON (steps: stderr)"
    )
    p.add_argument(
        "--report-dir",
        help="also copy metrics.json and plot data here (for dvc metrics / dvc plots); "
        "with -m, one sub-folder per deployment",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="build on a Ray cluster (host:port, or auto): each build of -m and each "
        "recipe=auto candidate is one task; default $EDGESHIP_RAY_ADDRESS, else here",
    )
    p.add_argument(
        "--ray-resources",
        metavar="KEY=VALUE,...",
        help="what each Ray build task asks for: cpus (1), memory_mb (2048), gpus "
        "(1 for a TensorRT target when the cluster has GPUs, else 0), retries (2)",
    )
    words(p, "Hydra overrides, e.g. deployment=NAME key=value")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train a reference model (model=NAME)")
    p.add_argument("--force", action="store_true", help="retrain even when weights exist")
    words(p, "model=NAME")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "reference",
        help="compute a generative model's reference outputs once and keep them in "
        "references/<model>/ (model=NAME; the reference@ stage of dvc.yaml)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="PyTorch threads while the reference runs (its recorded speed; default 2)",
    )
    words(p, "model=NAME")
    p.set_defaults(func=cmd_reference)
