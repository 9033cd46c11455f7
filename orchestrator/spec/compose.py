"""Compose a deployment spec from ``conf/`` with Hydra, then validate it strictly.

``compose(["deployment=posture_server", "target.threads=2"])`` returns a
:class:`ComposedSpec` or raises :class:`SpecError` listing every problem, each
naming the file (or the command line), the dotted key, what was expected and
what was found.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from orchestrator.core.schema import GROUP_SCHEMAS, EdgeshipConfig, register_schemas
from orchestrator.core.typecheck import check_dataclass, unknown_name_message
from orchestrator.errors import Problem, SpecError
from orchestrator.project import builtin_conf_dir, conf_dir, importable, project_root
from orchestrator.spec.files import (
    list_options,
    option_file,
    option_label,
    read_yaml,
    read_yaml_into,
)
from orchestrator.spec.rules import check_spec

BUILD_GROUPS = ("model", "recipe", "target", "deployment")
CLI = "command line"


@dataclass
class ComposedSpec:
    """A validated spec: typed config, the plain mapping, and where each group came from."""

    config: EdgeshipConfig
    data: dict[str, Any]
    choices: dict[str, str]
    overrides: list[str]
    root: Path
    files: dict[str, str] = field(default_factory=dict)  # group -> the option's file, as shown

    @property
    def name(self) -> str:
        return self.config.deployment.name

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.data))


def split_sweeps(overrides: list[str]) -> list[list[str]]:
    """Expand Hydra sweep syntax (``deployment=a,b``) into one override list per job."""
    parsed = _parse_overrides(overrides)
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


# short forms on the command line: validate_on=lab, validate_on.fleet=NAME, validate_on.device=NAME
SHORT_KEYS = {"validate_on": "deployment.validate_on.where"}
SHORT_PREFIXES = {"validate_on.": "deployment.validate_on."}


def expand_short(line: str) -> str:
    """An override with its short key spelled out (``validate_on=lab`` ->
    ``deployment.validate_on.where=lab``); any other override unchanged."""
    key, sep, value = line.partition("=")
    if not sep:
        return line
    sign = key[: len(key) - len(key.lstrip("+~"))]
    bare = key[len(sign) :]
    if bare in SHORT_KEYS:
        return f"{sign}{SHORT_KEYS[bare]}={value}"
    for short, full in SHORT_PREFIXES.items():
        if bare.startswith(short):
            return f"{sign}{full}{bare[len(short) :]}={value}"
    return line


def _parse_overrides(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed, problems = [], []
    for line in (expand_short(o) for o in overrides):
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException:
            problems.append(_unparsable(line))
    if problems:
        raise SpecError(problems)
    return parsed


def _unparsable(line: str) -> Problem:
    """An override Hydra's grammar refuses, with the quoted form that it accepts."""
    key, sep, value = line.partition("=")
    if not sep:
        return Problem(CLI, line, "expected KEY=VALUE (or group=option), found no '='")
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        items = [i.strip() for i in value[1:-1].split(",") if i.strip()]
        quoted = "[" + ", ".join(_quote(i) for i in items) + "]"
    else:
        quoted = _quote(value)
    return Problem(
        f"{CLI} ({line})",
        key.lstrip("+~"),
        "cannot be parsed: a value with spaces or any of = , [ ] { } ( ) needs quotes, "
        f"e.g. {key}={quoted} (in a shell, wrap the whole word in double quotes)",
    )


def _quote(text: str) -> str:
    if text[:1] in ("'", '"') and text[-1:] == text[:1]:
        return text
    return "'" + text.replace("'", "\\'") + "'"


class _Collector:
    """Collects problems and attributes each key to the file (or override) that set it."""

    def __init__(
        self, files: dict[str, str], cli_keys: dict[str, str], deployment: dict[str, Any]
    ) -> None:
        self.files = files
        self.cli_keys = cli_keys
        self.deployment = deployment  # the deployment file may set keys of any group
        self.problems: list[Problem] = []

    def source_of(self, key: str) -> str:
        for cli_key, line in self.cli_keys.items():
            if key == cli_key or key.startswith(cli_key + ".") or key.startswith(cli_key + "["):
                return f"{CLI} ({line})"
        parts = [p for p in re.split(r"[.\[\]]", key) if p]
        node: Any = self.deployment
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            return self.files.get("deployment", CLI)
        return self.files.get(parts[0], CLI)

    def __call__(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.source_of(key), key, message))

    def add(self, source: str, key: str, message: str) -> None:
        self.problems.append(Problem(source, key, message))


def _deployment_file(
    root: Path, option: str, problems: list[Problem]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The group choices a deployment file makes in its defaults list, and its content."""
    rel = f"conf/deployment/{option}.yaml"
    data = read_yaml_into(root / rel, rel, problems)
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        problems.append(
            Problem(rel, "", f"expected a mapping at the top, found {type(data).__name__}")
        )
        return {}, {}
    out: dict[str, str] = {}
    body = {k: v for k, v in data.items() if k != "defaults"}
    defaults = data.get("defaults", [])
    if not isinstance(defaults, list):
        problems.append(Problem(rel, "defaults", "expected a list"))
        return {}, body
    for i, entry in enumerate(defaults):
        if entry == "_self_":
            continue
        ok = isinstance(entry, dict) and len(entry) == 1
        key = next(iter(entry)) if ok else ""
        m = re.fullmatch(r"override /(\w+)", key) if ok else None
        if not m or m.group(1) not in BUILD_GROUPS[:3] or not isinstance(entry[key], str):
            problems.append(
                Problem(
                    rel,
                    f"defaults[{i}]",
                    "expected 'override /model: NAME', 'override /recipe: NAME' or "
                    f"'override /target: NAME', found {entry!r}",
                )
            )
            continue
        group, choice = m.group(1), entry[key]
        if choice not in list_options(root, group):
            problems.append(
                Problem(
                    rel,
                    f"defaults[{i}]",
                    unknown_name_message(group, choice, list_options(root, group)),
                )
            )
        out[group] = choice
    return out, body


def compose(overrides: list[str], root: Path | None = None) -> ComposedSpec:
    """Compose and validate the spec selected by Hydra-style ``overrides``."""
    root = root or project_root()
    importable(root)
    register_schemas()
    parsed = _parse_overrides(overrides)
    problems: list[Problem] = []
    cli_choices: dict[str, str] = {}
    cli_keys: dict[str, str] = {}
    for o in parsed:
        key = o.get_key_element().lstrip("+~")
        if o.is_sweep_override():
            problems.append(Problem(CLI, key, f"'{o.input_line}' is a sweep; run it with -m"))
        elif key in BUILD_GROUPS:
            value = o.value()
            if not isinstance(value, str) or value not in list_options(root, key):
                problems.append(
                    Problem(
                        CLI, key, unknown_name_message(key, str(value), list_options(root, key))
                    )
                )
            else:
                cli_choices[key] = value
        else:
            cli_keys[key] = o.input_line
    if "deployment" not in cli_choices and not problems:
        problems.append(
            Problem(
                CLI,
                "deployment",
                "missing; expected deployment=NAME with NAME one of: "
                + ", ".join(list_options(root, "deployment")),
            )
        )
    if problems:
        raise SpecError(problems)

    chosen, deployment_body = _deployment_file(root, cli_choices["deployment"], problems)
    choices = {**chosen, **cli_choices}
    for group in BUILD_GROUPS:
        if group not in choices:
            problems.append(
                Problem(
                    f"conf/deployment/{cli_choices['deployment']}.yaml",
                    "defaults",
                    f"missing 'override /{group}: NAME' (or pass {group}=NAME)",
                )
            )
    if problems:
        raise SpecError(problems)
    files = {g: option_label(root, g, c) for g, c in choices.items()}
    for group, rel in files.items():
        if group != "deployment":
            read_yaml_into(option_file(root, group, choices[group]), rel, problems)
    if problems:
        raise SpecError(problems)

    container = _hydra_compose(root, [f"{g}={choices[g]}" for g in BUILD_GROUPS], problems)
    if problems:
        raise SpecError(problems)
    _apply_value_overrides(
        container, [o for o in parsed if o.get_key_element() not in BUILD_GROUPS]
    )

    collect = _Collector(files, cli_keys, deployment_body)
    for key in container:
        if key not in BUILD_GROUPS:
            collect.add(CLI, key, unknown_name_message("key", key, BUILD_GROUPS))
    for group, schema in GROUP_SCHEMAS.items():
        node = container.get(group)
        if not isinstance(node, dict):
            collect(group, f"expected a mapping, found {type(node).__name__}")
            continue
        check_dataclass(node, schema, group, collect)
    check_spec(container, collect, choices, root)
    if collect.problems:
        raise SpecError(collect.problems)

    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EdgeshipConfig), container))
    assert isinstance(typed, EdgeshipConfig)
    return ComposedSpec(typed, container, choices, list(overrides), root, files)


def _apply_value_overrides(container: dict[str, Any], overrides: list[Any]) -> None:
    """Apply ``key=value`` overrides; unknown keys are kept so the schema check reports them."""
    from hydra.core.override_parser.types import OverrideType

    cfg = OmegaConf.create(container)
    for o in overrides:
        key = o.get_key_element().lstrip("+~")
        if o.type == OverrideType.DEL:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(cfg, key, o.value(), merge=False, force_add=True)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    container.clear()
    container.update({str(k): v for k, v in plain.items()})


def _hydra_compose(root: Path, overrides: list[str], problems: list[Problem]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # the project's conf/ first, then the built-in groups: a project option of the same name wins
    own, builtin = conf_dir(root).resolve(), builtin_conf_dir().resolve()
    config_name = "config"
    if builtin != own:
        overrides = [*overrides, f"hydra.searchpath=['file://{builtin}']"]
        if not (own / "config.yaml").is_file():
            config_name = _builtin_root_config(builtin)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(own)):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
            container = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        text = " ".join(str(exc).split())
        problems.append(Problem(CLI, "", text))
        return {}
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _builtin_root_config(builtin: Path) -> str:
    """The built-in ``config.yaml`` as a ConfigStore node, for a project without its own
    (Hydra looks the primary config up before it reads the search path of the overrides)."""
    from hydra.core.config_store import ConfigStore

    name = "edgeship_builtin_config"
    data = read_yaml(builtin / "config.yaml", str(builtin / "config.yaml"))
    ConfigStore.instance().store(name=name, node=data)
    return name


def load_option(group: str, option: str, root: Path | None = None) -> Any:
    """Load one option of a group on its own (e.g. a model for training), strictly checked."""
    root = root or project_root()
    importable(root)
    schema = GROUP_SCHEMAS[group]
    options = list_options(root, group)
    problems: list[Problem] = []
    if option not in options:
        raise SpecError([Problem(CLI, group, unknown_name_message(group, option, options))])
    rel = option_label(root, group, option)
    data = read_yaml_into(option_file(root, group, option), rel, problems)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "defaults"}
        collect = _Collector({group: rel}, {}, {})
        check_dataclass(data, schema, group, collect)
        problems += collect.problems
    elif not problems:
        problems.append(Problem(rel, "", "expected a mapping at the top"))
    if problems:
        raise SpecError(problems)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
