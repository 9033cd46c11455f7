"""Run the CLI on a copy of the project's conf/ with a case's edits applied."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

from orchestrator.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def make_project(case: dict, tmp: Path) -> Path:
    project = tmp / "project"
    shutil.copytree(ROOT / "conf", project / "conf")
    for rel, old, new in case.get("replace", []):
        path = project / rel
        text = path.read_text()
        assert old in text, f"{rel} does not contain {old!r}"
        path.write_text(text.replace(old, new, 1))
    return project


def run_case(case: dict, tmp: Path) -> tuple[int, str]:
    project = make_project(case, tmp)
    err = io.StringIO()
    old = os.environ.get("EDGESHIP_ROOT")
    os.environ["EDGESHIP_ROOT"] = str(project)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(case["args"])
    finally:
        if old is None:
            del os.environ["EDGESHIP_ROOT"]
        else:
            os.environ["EDGESHIP_ROOT"] = old
    return code, err.getvalue()
