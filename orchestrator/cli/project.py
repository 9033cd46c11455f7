"""CLI verbs of the project itself: ``init`` (a new project) and ``dvc`` (dvc.yaml's lists).

Parsing and printing only: the logic lives in :mod:`orchestrator.spec.scaffold` and
:mod:`orchestrator.spec.dvc_stages`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.errors import Problem, SpecError
from orchestrator.project import project_root


def cmd_init(args: argparse.Namespace) -> int:
    from orchestrator.spec.dvc_stages import write_stage_lists
    from orchestrator.spec.scaffold import init_project

    folder = Path(args.dir).resolve()
    written = init_project(folder)
    write_stage_lists(folder)
    print(f"edgeship project in {folder}:")
    for rel in [*written, Path("dvc-stages.yaml")]:
        print(f"  {rel}")
    where = "" if folder == Path.cwd().resolve() else f"cd {args.dir} && "
    print(
        f"next: {where}edgeship train model=mymodel && edgeship build "
        "deployment=mymodel_server   (see README.md)"
    )
    return 0


def cmd_dvc(args: argparse.Namespace) -> int:
    from orchestrator.spec.dvc_stages import (
        STAGES_FILE,
        changes,
        read_stage_lists,
        stage_lists,
        write_stage_lists,
    )

    root = project_root()
    if args.check:
        diff = changes(read_stage_lists(root), stage_lists(root))
        if read_stage_lists(root) is None:
            diff = [f"no {STAGES_FILE}"]
        if diff:
            raise SpecError(
                [Problem(STAGES_FILE, "", line) for line in diff],
                title=f"{STAGES_FILE} is out of date with conf/ (run `edgeship dvc`)",
            )
        print(f"{STAGES_FILE} is up to date")
        return 0
    diff = write_stage_lists(root)
    if diff and args.fail_if_changed:
        raise SpecError(
            [Problem(STAGES_FILE, "", line) for line in diff],
            title=f"{STAGES_FILE} was out of date with conf/ and is refreshed now; "
            "run `dvc repro` again (it read the old lists when it started)",
        )
    for line in diff:
        print(f"{STAGES_FILE}: {line}")
    if not diff:
        print(f"{STAGES_FILE} is up to date")
    return 0


def register(sub: Any) -> None:
    """Add the project verbs to the ``edgeship`` parser."""
    p = sub.add_parser("init", help="make a new project (conf/, an example model, dvc.yaml)")
    p.add_argument("dir", nargs="?", default=".", help="the project folder (default: here)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("dvc", help="write dvc-stages.yaml (the lists dvc.yaml runs over)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; fail when stale")
    mode.add_argument(
        "--fail-if-changed",
        action="store_true",
        help="refresh, and fail when it changed anything (the first step of a spec@ stage)",
    )
    p.set_defaults(func=cmd_dvc)
