"""The spec files of a project: the one YAML reader, and the options of a config group.

Every YAML file edgeship reads (conf/ groups, fleets, rollouts) goes through
:func:`read_yaml`, so a file that cannot be read or parsed is always reported
the same way: the file, the line and column, what is wrong.

The options of a group are the project's ``conf/<group>/*.yaml`` plus, for the groups
edgeship ships (recipes, targets, rollouts), its built-in ones; a project option wins
over a built-in option of the same name (:func:`option_file`, :func:`option_origin`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import Problem, SpecError
from orchestrator.project import BUILTIN_GROUPS, builtin_conf_dir, conf_dir


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


BUILTIN = "built-in"
PROJECT = "project"
OVERRIDES = "project, overrides built-in"


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()


def builtin_options(group: str) -> list[str]:
    """The built-in options of ``group`` (none for the groups edgeship ships none of)."""
    if group not in BUILTIN_GROUPS:
        return []
    return sorted(_stems(builtin_conf_dir() / group))


def list_options(root: Path, group: str) -> list[str]:
    """The option names of a config group: the project's and the built-in ones."""
    return sorted(_stems(conf_dir(root) / group) | set(builtin_options(group)))


def option_file(root: Path, group: str, name: str) -> Path:
    """The YAML file of option ``name`` of ``group``: the project's, else the built-in one."""
    own = conf_dir(root) / group / f"{name}.yaml"
    if own.is_file() or name not in builtin_options(group):
        return own
    return builtin_conf_dir() / group / f"{name}.yaml"


def option_label(root: Path, group: str, name: str) -> str:
    """How messages name the option's file: relative to the project, else its full path."""
    path = option_file(root, group, name)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def option_origin(root: Path, group: str, name: str) -> str:
    """``built-in``, ``project``, or ``project, overrides built-in``."""
    own = conf_dir(root) / group / f"{name}.yaml"
    builtin = builtin_conf_dir() / group / f"{name}.yaml"
    if name not in builtin_options(group):
        return PROJECT
    if not own.is_file() or own.resolve() == builtin.resolve():
        return BUILTIN
    return OVERRIDES


def read_option(root: Path, group: str, name: str) -> dict[str, Any] | None:
    """An option's YAML mapping, or None when it cannot be read or is not a mapping
    (composing that option reports what is wrong with its file)."""
    problems: list[Problem] = []
    path = option_file(root, group, name)
    data = read_yaml_into(path, option_label(root, group, name), problems)
    return data if isinstance(data, dict) else None
