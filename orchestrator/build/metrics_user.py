"""A team's own metrics (``model.metrics``), computed for the reference and the artifact.

Each entry names ``package.module:function``; edgeship calls it as
``fn(outputs, labels, **args)`` with ``outputs`` a mapping of output name -> array over
every evaluation sample (batch axis first) and ``labels`` the loader's labels (or None).
It returns one number, or a mapping of names to numbers. The names are declared in the
spec (``names:``, default: the function's name) so gates on them are checked before any
work. For each name ``m`` validation reports ``m`` (the artifact), ``reference_m`` and
``m_drop`` (reference minus artifact: a metric where higher is better drops when the
artifact is worse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from orchestrator.build.reference import resolve_callable
from orchestrator.core.schema import MetricRef
from orchestrator.errors import BuildError
from orchestrator.spec.gates import metric_names


def _values(result: Any, names: list[str], key: str) -> dict[str, float]:
    if isinstance(result, Mapping):
        got = {str(k): v for k, v in result.items()}
    elif len(names) == 1:
        got = {names[0]: result}
    else:
        raise BuildError(
            f"error: {key}: expected a mapping with {', '.join(names)}, found one value"
        )
    if set(got) != set(names):
        raise BuildError(
            f"error: {key}: expected values named {', '.join(names)} (model.metrics names), "
            f"found {', '.join(sorted(got)) or 'none'}"
        )
    out = {}
    for name, value in got.items():
        try:
            out[name] = float(value)
        except (TypeError, ValueError) as exc:
            raise BuildError(
                f"error: {key}: value '{name}' is not a number: {type(value).__name__}"
            ) from exc
    return out


def user_metrics(
    refs: list[MetricRef],
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
) -> dict[str, float]:
    """Every user metric for the artifact's and the reference's outputs."""
    metrics: dict[str, float] = {}
    for i, ref in enumerate(refs):
        key = f"model.metrics[{i}]"
        fn = resolve_callable(ref.fn, f"{key}.fn")
        names = metric_names(ref)
        try:
            mine = fn(dict(outputs), labels, **ref.args)
            theirs = fn(dict(reference), labels, **ref.args)
        except Exception as exc:
            raise BuildError(f"error: {key}.fn ({ref.fn}) failed: {exc}") from exc
        a, r = _values(mine, names, f"{key}.fn"), _values(theirs, names, f"{key}.fn")
        for name in names:
            metrics[name] = a[name]
            metrics[f"reference_{name}"] = r[name]
            drop = r[name] - a[name]
            metrics[f"{name}_drop"] = drop if not math.isnan(drop) else float("nan")
    return metrics
