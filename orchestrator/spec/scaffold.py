"""``edgeship init``: a new project with a small working example the team replaces.

The files come from ``templates/project/`` (each ``<name>.tmpl`` is written as ``<name>``,
``gitignore.tmpl`` as ``.gitignore``). Nothing that exists already is overwritten: when
any of the files is there, nothing is written and the error lists them all.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.dvc_stages import STAGES_FILE

TEMPLATES = Path(__file__).resolve().parent / "templates" / "project"
SUFFIX = ".tmpl"


def _destination(rel: Path) -> Path:
    name = rel.name[: -len(SUFFIX)]
    return rel.with_name("." + name if name == "gitignore" else name)


def project_files() -> dict[Path, Path]:
    """Each file ``init`` writes (relative to the project) -> its template."""
    return {
        _destination(t.relative_to(TEMPLATES)): t
        for t in sorted(TEMPLATES.rglob(f"*{SUFFIX}"))
        if t.is_file()
    }


def init_project(folder: Path) -> list[Path]:
    """Write the example project into ``folder``; returns the files written (relative)."""
    from orchestrator.core.fsutil import write_text

    files = project_files()
    existing = [rel for rel in [*files, Path(STAGES_FILE)] if (folder / rel).exists()]
    if existing:
        raise SpecError(
            [
                Problem(
                    str(folder / rel),
                    "",
                    "expected no file here (init never overwrites one), found an existing file",
                )
                for rel in existing
            ],
            title=f"cannot init a project in {folder}",
        )
    for rel, template in files.items():
        write_text(folder / rel, template.read_text())
    return list(files)
