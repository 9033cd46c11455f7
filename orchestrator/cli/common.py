"""What every CLI verb module shares: ``KEY=VALUE`` words, the project root, the key store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.core.typecheck import unknown_name_message
from orchestrator.errors import Problem, SpecError, UsageError
from orchestrator.project import project_root

CLI = "command line"
LABELS = ("site", "ward", "bed")


def pairs(
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
        raise UsageError(problems)
    return out


def integer(opts: dict[str, str], key: str) -> int | None:
    """``opts[key]`` as an integer (None when absent); a usage error names the word otherwise."""
    if key not in opts:
        return None
    if not opts[key].isdigit():
        raise UsageError([Problem(CLI, key, f"expected an integer, found '{opts[key]}'")])
    return int(opts[key])


def split_list(value: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; empty or None -> ``[]``."""
    return [v for v in (value or "").split(",") if v]


def project_dir() -> Path:
    """The project root (see :mod:`orchestrator.project`)."""
    return project_root()


def key_store() -> Any:
    """The signing key store, refused when it lies inside the project."""
    from registry.keys import KeyStore

    store = KeyStore()
    try:
        here = project_dir()
    except SpecError:
        return store
    store.ensure_outside(here)
    return store


def human_size(n: int) -> str:
    """Bytes as ``12.3 kB`` / ``4.5 MB``."""
    return f"{n / 1000:.1f} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


_COMPLETED_GROUPS = ("deployment", "model", "recipe", "target", "fleet", "rollout")


def complete_words(prefix: str, **_: Any) -> list[str]:
    """Shell completion of ``KEY=VALUE`` words: group names, then the options of a group."""
    from orchestrator.spec.files import list_options

    group, sep, start = prefix.partition("=")
    if not sep:
        return [f"{g}=" for g in _COMPLETED_GROUPS if g.startswith(prefix)]
    if group not in _COMPLETED_GROUPS:
        return []
    try:
        options = list_options(project_dir(), group)
    except SpecError:
        return []
    return [f"{group}={o}" for o in options if o.startswith(start)]


def words(parser: Any, help_text: str) -> None:
    """The verb's ``KEY=VALUE`` positional words, completed in the shell."""
    action = parser.add_argument("overrides", nargs="*", help=help_text)
    action.completer = complete_words
