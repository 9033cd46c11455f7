"""Action rules under ``conf/actions/``: a condition on event fields, held for N consecutive
events of one device, fires its action (a webhook or a command) once per episode (until the
condition breaks).

A condition is a small expression language, parsed (never evaluated as Python)::

    prediction == "Running" and score >= 0.9
    prediction["voxels"]["tumour"] > 5000 or latency_ms > 250
    device in ["bed-12", "bed-14"] and not score < 0.5
"""

from __future__ import annotations

import ast
import dataclasses
import operator
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.schema import (
    EVENT_FIELDS,
    ActionRuleConfig,
    CommandActionConfig,
    WebhookConfig,
)
from orchestrator.core.typecheck import check_dataclass, unknown_name_message
from orchestrator.errors import Problem, SpecError
from orchestrator.spec.files import read_yaml

ACTIONS_DIR = "conf/actions"
NAMES = (*EVENT_FIELDS, "id")
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class ConditionError(ValueError):
    """A condition uses something outside the rule language."""


class Condition:
    """A parsed condition; ``holds(event)`` is False (never an error) when a field is absent
    or of another type than the comparison needs."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise ConditionError(f"invalid expression at column {exc.offset}: {exc.msg}") from exc
        self._check(tree.body)
        self.tree = tree.body

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
            for v in node.values:
                self._check(v)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            self._check(node.operand)
        elif isinstance(node, ast.Compare):
            if not all(type(op) in _COMPARE for op in node.ops):
                raise ConditionError("expected ==, !=, <, <=, >, >=, in or not in")
            for v in [node.left, *node.comparators]:
                self._check(v)
        elif isinstance(node, ast.Name):
            if node.id not in NAMES:
                raise ConditionError(unknown_name_message("event field", node.id, NAMES))
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (str, int, float, bool, type(None))):
                raise ConditionError(f"unsupported constant {node.value!r}")
        elif isinstance(node, (ast.List, ast.Tuple)):
            for v in node.elts:
                self._check(v)
        elif isinstance(node, ast.Subscript):
            self._check(node.value)
            self._check(node.slice)
        else:
            raise ConditionError(
                f"unsupported {type(node).__name__} in the condition; expected field names, "
                'constants, comparisons, and/or/not, lists and field["key"]'
            )

    def holds(self, event: Mapping[str, Any]) -> bool:
        try:
            return bool(self._eval(self.tree, event))
        except (TypeError, KeyError, IndexError):
            return False

    def _eval(self, node: ast.AST, event: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(v, event) for v in node.values)
            return any(self._eval(v, event) for v in node.values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, event)
            return (not value) if isinstance(node.op, ast.Not) else -value
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, event)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self._eval(right_node, event)
                if (left is None or right is None) and type(op) not in (ast.Eq, ast.NotEq):
                    return False
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            return event.get(node.id)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._eval(v, event) for v in node.elts]
        if isinstance(node, ast.Subscript):
            return self._eval(node.value, event)[self._eval(node.slice, event)]
        raise TypeError(type(node).__name__)


@dataclasses.dataclass
class Rule:
    """A checked rule: its spec and its parsed condition."""

    config: ActionRuleConfig
    condition: Condition
    source: str

    @property
    def name(self) -> str:
        return self.config.name


def load_rules(root: Path) -> list[Rule]:
    """Every rule of ``<root>/conf/actions/*.yaml``, checked strictly; a SpecError lists every
    problem of every file (file, key, expected, found)."""
    folder = root / ACTIONS_DIR
    problems: list[Problem] = []
    rules: list[Rule] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        source = f"{ACTIONS_DIR}/{path.name}"
        try:
            data = read_yaml(path, source, title="invalid action rule")
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        rule = rule_from(data, path.stem, source, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise SpecError(problems, title="invalid action rules")
    return rules


def _non_negative(
    section: Mapping[str, Any], name: str, keys: tuple[str, ...], report: Any
) -> None:
    for key in keys:
        value = section.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            report(f"{name}.{key}", f"expected 0 or more, found {value}")


def rule_from(data: Any, stem: str, source: str, problems: list[Problem]) -> Rule | None:
    found: list[Problem] = []

    def report(key: str, message: str) -> None:
        found.append(Problem(source, key, message))

    if not isinstance(data, Mapping):
        report("", f"expected a mapping of rule keys, found {type(data).__name__}")
        problems.extend(found)
        return None
    check_dataclass(data, ActionRuleConfig, "", report)
    if isinstance(data.get("name"), str) and data["name"] != stem:
        report("name", f"expected '{stem}' (the file name), found '{data['name']}'")
    count = data.get("consecutive")
    if isinstance(count, int) and not isinstance(count, bool) and count < 1:
        report("consecutive", f"expected 1 or more, found {count}")
    condition = None
    if isinstance(data.get("when"), str):
        try:
            condition = Condition(data["when"])
        except ConditionError as exc:
            report("when", str(exc))
    hook, command = data.get("webhook"), data.get("command")
    if hook is None and command is None:
        report(
            "webhook",
            "expected the rule's action: webhook (an HTTP POST) or command, found neither",
        )
    elif hook is not None and command is not None:
        report("command", "expected one action per rule, found both webhook and command")
    if isinstance(hook, Mapping):
        url = hook.get("url")
        if isinstance(url, str) and not url.startswith(("http://", "https://")):
            report("webhook.url", f"expected an http:// or https:// address, found '{url}'")
        _non_negative(hook, "webhook", ("retries", "backoff", "timeout"), report)
    if isinstance(command, Mapping):
        argv = command.get("argv")
        if isinstance(argv, list) and (not argv or not all(isinstance(a, str) and a for a in argv)):
            report("command.argv", f"expected a program and its arguments (strings), found {argv}")
        _non_negative(command, "command", ("retries", "backoff", "timeout"), report)
    if found or condition is None:
        problems.extend(found)
        return None
    fields = {k: v for k, v in data.items() if k not in ("webhook", "command")}
    config = ActionRuleConfig(
        **fields,
        webhook=WebhookConfig(**dict(hook)) if hook is not None else None,
        command=CommandActionConfig(**dict(command)) if command is not None else None,
    )
    return Rule(config, condition, source)


class Episodes:
    """Which rules fire for an event: per (rule, device), a run of matching events; a rule
    fires when its run reaches ``consecutive`` and not again until an event breaks the run."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.fired: set[tuple[str, str]] = set()

    def feed(self, event: Mapping[str, Any], device: str) -> list[tuple[Rule, list[dict]]]:
        """The rules that fire on ``event``, each with the events of its run."""
        firing = []
        for rule in self.rules:
            wanted = rule.config.deployment
            if wanted and event.get("deployment") != wanted:
                continue
            key = (rule.name, device)
            if not rule.condition.holds(event):
                self.runs.pop(key, None)
                self.fired.discard(key)
                continue
            run = self.runs.setdefault(key, [])
            run.append(dict(event))
            del run[: -rule.config.consecutive]
            if len(run) >= rule.config.consecutive and key not in self.fired:
                self.fired.add(key)
                firing.append((rule, list(run)))
        return firing
