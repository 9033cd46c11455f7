"""``edgeship toolenv``: the managed environments of toolchains that cannot share edgeship's.

Parsing and printing only: the logic lives in :mod:`orchestrator.core.toolenv`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.core import toolenv


def cmd_install(args: argparse.Namespace) -> int:
    for name in args.names:
        toolenv.tool(name)  # an unknown name fails before any work
    for name in args.names:
        ready = toolenv.info(name) is not None
        if ready and not args.force:
            print(f"{name}: ready at {toolenv.env_dir(name)}")
            continue

        def step(line: str, tool: str = name) -> None:
            print(f"[{tool}] {line}", file=sys.stderr)

        python = toolenv.install(name, force=args.force, on_step=step)
        version = (toolenv.info(name) or {}).get("version")
        print(f"{name}: installed {version} at {python.parent.parent}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = toolenv.listing()
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    for row in rows:
        state = f"installed ({row['version']})" if row["installed"] else "not installed"
        print(f"{row['name']:<8} {state:<28} {row['path']}")
        print(f"{'':<8} {row['what']}: {' '.join(row['requirements'])}")
        if not row["installed"]:
            print(f"{'':<8} create it with: edgeship toolenv install {row['name']}")
    return 0


def register(sub: Any) -> None:
    """Add ``toolenv install`` and ``toolenv list`` to the ``edgeship`` parser."""
    p = sub.add_parser(
        "toolenv",
        help=(
            "managed environments of toolchains whose pins cannot share edgeship's"
            " (Apache TVM, optimum-onnx)"
        ),
    )
    verbs = p.add_subparsers(dest="toolenv_command", required=True)
    names = sorted(toolenv.TOOLS)
    i = verbs.add_parser("install", help="create tool environments (reused when ready)")
    i.add_argument("names", nargs="+", choices=names, metavar="NAME", help=", ".join(names))
    i.add_argument("--force", action="store_true", help="make the environment anew")
    i.set_defaults(func=cmd_install)
    lst = verbs.add_parser("list", help="every tool environment, its folder and state")
    lst.add_argument("--json", action="store_true", help="JSON on stdout")
    lst.set_defaults(func=cmd_list)
