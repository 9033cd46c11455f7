from __future__ import annotations

import math

import pytest

from orchestrator.spec.gates import GateSyntaxError, evaluate_gates, measured_metrics, parse_gate


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("agreement >= 0.99", "agreement", ">=", 0.99),
        ("p95_ms<=20", "p95_ms", "<=", 20.0),
        ("dice_vs_reference.liver > 9e-1", "dice_vs_reference.liver", ">", 0.9),
        ("size_mb == -1", "size_mb", "==", -1.0),
    ],
)
def test_parse_gate_accepts_metric_op_number(text: str, metric: str, op: str, value: float) -> None:
    g = parse_gate(text)
    assert (g.metric, g.op, g.threshold) == (metric, op, value)


@pytest.mark.parametrize("text", ["agreement = 1", "agreement >= high", ">= 1", "a >= 1 b"])
def test_parse_gate_rejects_malformed(text: str) -> None:
    with pytest.raises(GateSyntaxError):
        parse_gate(text)


def test_evaluate_gates_missing_or_nan_metric_fails() -> None:
    gates = [parse_gate("a >= 1"), parse_gate("b <= 2"), parse_gate("c >= 0")]
    results = evaluate_gates(gates, {"a": 1.0, "b": math.nan})
    assert [r.passed for r in results] == [True, False, False]
    assert results[2].describe() == "c >= 0: FAIL (measured not measured)"


def test_measured_metrics_segmentation_has_per_class_dice() -> None:
    names = measured_metrics("segmentation", ["background", "liver"])
    assert "dice_vs_reference.liver" in names and "dice_vs_reference.background" not in names
    assert "agreement" not in names
