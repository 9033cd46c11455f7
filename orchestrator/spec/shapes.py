"""Rules on shapes: dynamic dimension declarations, what the target serves, batch sizes.

Run on the plain composed mapping before any work (see :mod:`orchestrator.spec.rules`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.core.shapes import describe_shape
from orchestrator.core.typecheck import closest, describe
from orchestrator.passes.base import registered_passes
from targets.base import registered_targets

Report = Callable[[str, str], None]
_NAME = re.compile(r"^[A-Za-z_]\w*$")
EXAMPLE = "e.g. shape: [batch, 6, 100] with dynamic: {batch: {min: 1, opt: 8, max: 32}}"


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bounds(decl: Any) -> tuple[int, int, int] | None:
    if not isinstance(decl, Mapping) or not all(_int(decl.get(k)) for k in ("min", "opt", "max")):
        return None
    return int(decl["min"]), int(decl["opt"]), int(decl["max"])


def declared_dims(model: Mapping[str, Any]) -> dict[str, tuple[int, int, int]]:
    """Every well-formed dynamic declaration of the inputs (first wins)."""
    out: dict[str, tuple[int, int, int]] = {}
    for t in model.get("inputs") or []:
        if isinstance(t, Mapping) and isinstance(t.get("dynamic"), Mapping):
            for name, decl in t["dynamic"].items():
                b = _bounds(decl)
                if b is not None:
                    out.setdefault(str(name), b)
    return out


def check_shapes(model: Mapping[str, Any], report: Report) -> None:
    """Dims are positive ints or declared names; declarations are used, ordered, consistent."""
    first: dict[str, tuple[str, tuple[int, int, int]]] = {}
    for group in ("inputs", "outputs"):
        tensors = model.get(group)
        for i, t in enumerate(tensors if isinstance(tensors, list) else []):
            if not isinstance(t, Mapping):
                continue
            key = f"model.{group}[{i}]"
            shape = t.get("shape")
            dynamic = t.get("dynamic")
            dynamic = dynamic if isinstance(dynamic, Mapping) else {}
            if group == "outputs" and dynamic:
                report(
                    f"{key}.dynamic",
                    "outputs take their dynamic dimensions from the inputs; declare "
                    f"{', '.join(map(str, dynamic))} under the input that has it",
                )
            if not isinstance(shape, list):
                continue
            known = dynamic if group == "inputs" else declared_dims(model)
            hints = set(known) | (set() if group == "inputs" else _input_dim_names(model))
            used: set[str] = set()
            for j, d in enumerate(shape):
                dkey = f"{key}.shape[{j}]"
                if _int(d) and d > 0:
                    continue
                if isinstance(d, str) and _NAME.match(d):
                    used.add(d)
                    if d not in known:
                        where = f"{key}.dynamic" if group == "inputs" else "the inputs' dynamic"
                        report(
                            dkey,
                            f"dimension '{d}' is not declared; expected {where}.{d}: "
                            "{min: N, opt: N, max: N}"
                            + (
                                f" (did you mean '{closest(d, hints)}'?)"
                                if closest(d, hints)
                                else ""
                            ),
                        )
                    continue
                report(
                    dkey,
                    "expected a positive int or the name of a dynamic dimension "
                    f"({EXAMPLE}), found {describe(d)}",
                )
            if group != "inputs":
                continue
            for name, decl in dynamic.items():
                dkey = f"{key}.dynamic.{name}"
                if name not in used:
                    near = closest(str(name), used)
                    report(
                        dkey,
                        f"declares a dimension the shape {describe_shape(shape)} does not use"
                        + (f" (did you mean '{near}'?)" if near else ""),
                    )
                    continue
                b = _bounds(decl)
                if b is None:
                    continue  # the type check reports a missing or mistyped min/opt/max
                lo, opt, hi = b
                if not (1 <= lo <= opt <= hi):
                    report(
                        dkey,
                        f"expected 1 <= min <= opt <= max, found min {lo}, opt {opt}, max {hi}",
                    )
                elif lo == hi:
                    report(
                        dkey,
                        f"expected min < max, found min {lo}, max {hi}; write a fixed size as a "
                        "number in the shape",
                    )
                elif name in first and first[name][1] != b:
                    other, ob = first[name]
                    report(
                        dkey,
                        f"dimension '{name}' is declared in {other} as min {ob[0]}, opt {ob[1]}, "
                        f"max {ob[2]}; found min {lo}, opt {opt}, max {hi} "
                        "(a name is one dimension)",
                    )
                else:
                    first.setdefault(str(name), (f"{key}.dynamic.{name}", b))


def _input_dim_names(model: Mapping[str, Any]) -> set[str]:
    return {d for _, names in _dynamic_inputs(model) for d in names}


def _dynamic_inputs(model: Mapping[str, Any]) -> list[tuple[int, list[str]]]:
    out = []
    for i, t in enumerate(model.get("inputs") or []):
        if isinstance(t, Mapping) and isinstance(t.get("shape"), list):
            names = [d for d in t["shape"] if isinstance(d, str)]
            if names:
                out.append((i, names))
    return out


def check_servable(spec: Mapping[str, Any], report: Report) -> None:
    """A dynamic dimension on a target or pass that runs only static shapes is an error."""
    model = spec.get("model") if isinstance(spec.get("model"), Mapping) else {}
    target = spec.get("target") if isinstance(spec.get("target"), Mapping) else {}
    recipe = spec.get("recipe") if isinstance(spec.get("recipe"), Mapping) else {}
    assert isinstance(model, Mapping) and isinstance(target, Mapping)
    dyn = _dynamic_inputs(model)
    if not dyn:
        return
    first_i, names = dyn[0]
    where = f"model.inputs[{first_i}].shape has dynamic {', '.join(names)}"
    cls = registered_targets().get(str(target.get("family")))
    if cls is not None:
        reason = cls.static_shapes_reason(str(target.get("device", "CPU")))
        if reason:
            report(
                "target.device",
                f"target '{target.get('name')}' runs only static input shapes ({reason}); "
                f"{where}: write fixed sizes for this deployment",
            )
    passes = registered_passes()
    for i, p in enumerate(recipe.get("passes") or [] if isinstance(recipe, Mapping) else []):
        if not isinstance(p, Mapping) or p.get("name") not in passes:
            continue
        reason = passes[p["name"]].static_shapes_reason(p.get("options") or {})
        if reason:
            report(
                f"recipe.passes[{i}].name",
                f"pass '{p['name']}' needs static input shapes ({reason}); {where}",
            )


def gate_batches(spec: Mapping[str, Any]) -> list[int]:
    """The batch sizes latency is measured at, from the plain spec (see core.shapes)."""
    model = spec.get("model") if isinstance(spec.get("model"), Mapping) else {}
    deployment = spec.get("deployment") if isinstance(spec.get("deployment"), Mapping) else {}
    assert isinstance(model, Mapping) and isinstance(deployment, Mapping)
    validation = deployment.get("validation")
    requested = validation.get("latency_batches") if isinstance(validation, Mapping) else None
    if isinstance(requested, list) and requested:
        return [int(b) for b in requested if _int(b)]
    inputs = model.get("inputs")
    first = inputs[0] if isinstance(inputs, list) and inputs else None
    shape = first.get("shape") if isinstance(first, Mapping) else None
    if not isinstance(shape, list) or not shape:
        return []
    if _int(shape[0]):
        return [int(shape[0])]
    b = declared_dims(model).get(str(shape[0]))
    return list(dict.fromkeys(b)) if b else []


def check_latency_batches(spec: Mapping[str, Any], report: Report) -> None:
    """Every batch size latency is measured at is one the model serves."""
    model = spec.get("model")
    deployment = spec.get("deployment")
    if not isinstance(model, Mapping) or not isinstance(deployment, Mapping):
        return
    validation = deployment.get("validation")
    batches = validation.get("latency_batches") if isinstance(validation, Mapping) else None
    inputs = model.get("inputs")
    if not isinstance(batches, list) or not isinstance(inputs, list) or not inputs:
        return
    first = inputs[0] if isinstance(inputs[0], Mapping) else {}
    shape = first.get("shape") if isinstance(first, Mapping) else None
    if not isinstance(shape, list) or not shape:
        return
    dim = shape[0]
    declared = declared_dims(model)
    for j, b in enumerate(batches):
        key = f"deployment.validation.latency_batches[{j}]"
        if not _int(b):
            continue
        if _int(dim) and b != dim:
            report(
                key,
                f"expected {dim}, the static batch of model.inputs[0].shape[0], found {b}; "
                "to measure other batch sizes declare the batch dynamic "
                f"({EXAMPLE})",
            )
        elif isinstance(dim, str) and dim in declared:
            lo, _, hi = declared[dim]
            if not lo <= b <= hi:
                report(
                    key,
                    f"expected a batch size from {lo} to {hi} (model.inputs[0].dynamic.{dim}), "
                    f"found {b}",
                )
