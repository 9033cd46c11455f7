"""The spec files of a project: the one YAML reader, and the options of a config group.

Every YAML file edgeship reads (conf/ groups, fleets, rollouts) goes through
:func:`read_yaml`, so a file that cannot be read or parsed is always reported
the same way: the file, the line and column, what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError
from orchestrator.project import conf_dir


def read_yaml(path: Path, source: str, title: str = "invalid spec") -> Any:
    """The YAML document in ``path``; a file that cannot be read or parsed is a SpecError
    naming ``source`` (and the line and column of a syntax error)."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(
            [Problem(source, "", f"{where}invalid YAML ({getattr(exc, 'problem', exc)})")],
            title=title,
        ) from exc
    except OSError as exc:
        raise SpecError([Problem(source, "", f"cannot read: {exc.strerror}")], title=title) from exc


def read_yaml_into(path: Path, source: str, problems: list[Problem]) -> Any:
    """:func:`read_yaml`, adding what is wrong to ``problems`` (and returning None) instead."""
    try:
        return read_yaml(path, source)
    except SpecError as exc:
        problems.extend(exc.problems)
        return None


def list_options(root: Path, group: str) -> list[str]:
    """The option names of a config group (its YAML files' stems)."""
    folder = conf_dir(root) / group
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def option_file(root: Path, group: str, name: str) -> Path:
    """The YAML file of option ``name`` of ``group``."""
    return conf_dir(root) / group / f"{name}.yaml"


def read_option(root: Path, group: str, name: str) -> dict[str, Any] | None:
    """An option's YAML mapping, or None when it cannot be read or is not a mapping
    (composing that option reports what is wrong with its file)."""
    problems: list[Problem] = []
    path = option_file(root, group, name)
    data = read_yaml_into(path, str(path), problems)
    return data if isinstance(data, dict) else None
