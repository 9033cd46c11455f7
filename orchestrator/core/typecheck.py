"""Check a plain (YAML-loaded) mapping against a schema dataclass, collecting every problem.

OmegaConf stops at the first bad key; people fixing a spec want all of them at
once, so this walks the dataclass fields itself. Each problem carries the dotted
key; the caller decides which file the key came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import MISSING

# (key, message) -> Problem; the caller maps a key to its source file
Report = Callable[[str, str], None]


def closest(name: str, options: typing.Iterable[str]) -> str | None:
    """The option most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_name_message(kind: str, found: str, options: typing.Iterable[str]) -> str:
    """``unknown <kind> 'x'; expected one of: a, b (closest: a)``."""
    opts = sorted(options)
    msg = f"unknown {kind} '{found}'; expected one of: {', '.join(opts) or '(none)'}"
    near = closest(found, opts)
    if near:
        msg += f" (did you mean '{near}'?)"
    return msg


def describe(value: Any) -> str:
    """A short description of a found value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"str '{shown}'"
    if isinstance(value, int | float):
        return f"{type(value).__name__} {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def type_name(tp: Any) -> str:
    """A person-readable name for a schema type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin in (list, typing.List):  # noqa: UP006
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def check_value(value: Any, tp: Any, key: str, report: Report, meta: Mapping[str, Any]) -> None:
    """Check ``value`` against the type ``tp``; report problems under ``key``."""
    if value is MISSING or value == "???":
        report(key, f"missing required value; expected {type_name(tp)}")
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            check_value(value, inner[0], key, report, meta)
            return
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            report(key, f"expected a mapping, found {describe(value)}")
            return
        check_dataclass(value, tp, key, report)  # type: ignore[arg-type]
        return
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, list | tuple):
            report(key, f"expected {type_name(tp)}, found {describe(value)}")
            return
        for i, item in enumerate(value):
            check_value(item, args[0] if args else Any, join(key, i), report, meta)
        return
    if origin in (dict, typing.Dict):  # noqa: UP006
        if not isinstance(value, Mapping):
            report(key, f"expected a mapping, found {describe(value)}")
            return
        if len(args) == 2 and args[1] is not Any:
            for k, item in value.items():
                check_value(item, args[1], join(key, str(k)), report, {})
        return
    if tp is bool:
        if not isinstance(value, bool):
            report(key, f"expected bool, found {describe(value)}")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            report(key, f"expected int, found {describe(value)}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            report(key, f"expected float, found {describe(value)}")
        return
    if tp is str:
        if not isinstance(value, str):
            report(key, f"expected str, found {describe(value)}")
            return
        allowed = meta.get("choices")
        if allowed and value not in allowed:
            report(key, unknown_name_message("value", value, allowed))
        return


def check_dataclass(data: Mapping[str, Any], schema: type, prefix: str, report: Report) -> None:
    """Check a mapping against a dataclass schema: unknown keys, missing keys, types."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in data:
        if key not in fields:
            report(join(prefix, str(key)), unknown_name_message("key", str(key), fields))
    for name, f in fields.items():
        key = join(prefix, name)
        if name in data:
            check_value(data[name], hints[name], key, report, f.metadata)
        elif f.default is MISSING:
            allowed = f.metadata.get("choices")
            wanted = f"one of: {', '.join(allowed)}" if allowed else type_name(hints[name])
            report(key, f"missing required value; expected {wanted}")
