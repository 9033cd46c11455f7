"""recipe=auto without building: which candidates a target gets, and how a winner is chosen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.build.select import (
    Candidate,
    NoCandidatePassedError,
    SelectionResult,
    _choose,
    candidate_specs,
)
from orchestrator.spec.compose import compose

ROOT = Path(__file__).resolve().parents[2]


def _result(*candidates: Candidate) -> SelectionResult:
    return SelectionResult("d", "server", "p50_ms", "agreement", list(candidates), None)


def test_candidates_are_every_recipe_the_target_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    spec = compose(["deployment=posture_server", "recipe=auto"], ROOT)
    usable, skipped = candidate_specs(spec)
    names = {s.choices["recipe"] for s in usable}
    assert {"ort_fp32", "ort_int8_dynamic", "ort_int8_static"} <= names
    assert "auto" not in names
    reasons = {c.recipe: c.message for c in skipped}
    assert "makes a model for openvino" in reasons["int8_nncf"]
    assert "fp16" in reasons["trt_fp16"]  # the server target runs fp32 and int8 only
    assert all(c.status == "n/a" for c in skipped)


def test_candidates_of_a_nuc_include_openvino_and_qdq_recipes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    spec = compose(["deployment=ct_seg_nuc", "recipe=auto"], ROOT)
    names = {s.choices["recipe"] for s in candidate_specs(spec)[0]}
    assert {"int8_nncf", "ov_fp32", "ov_fp16", "ort_int8_static"} <= names
    assert "ort_fp32" not in names  # ORT's offline fusions are ONNX Runtime-only


def test_explicit_candidates_and_overrides_reach_each_candidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    spec = compose(
        [
            "deployment=posture_server",
            "recipe=auto",
            "recipe.candidates=[ort_int8_static,ort_fp32]",
            "target.threads=1",
        ],
        ROOT,
    )
    usable, skipped = candidate_specs(spec)
    assert [s.choices["recipe"] for s in usable] == ["ort_int8_static", "ort_fp32"]
    assert skipped == []
    assert all(s.config.target.threads == 1 for s in usable)
    assert all(not s.config.recipe.select for s in usable)


def test_candidates_narrowed_in_the_deployment_file_build_as_plain_recipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "conf", project / "conf")
    src = project / "conf" / "deployment" / "posture_server.yaml"
    text = src.read_text().replace("override /recipe: ort_int8_dynamic", "override /recipe: auto")
    assert "override /recipe: auto" in text
    src.write_text(text + "recipe:\n  candidates: [ort_int8_static, ort_fp32]\n")
    monkeypatch.setenv("EDGESHIP_ROOT", str(project))
    spec = compose(["deployment=posture_server"], project)
    assert spec.config.recipe.select and spec.config.recipe.candidates == [
        "ort_int8_static",
        "ort_fp32",
    ]
    usable, skipped = candidate_specs(spec)
    assert [s.choices["recipe"] for s in usable] == ["ort_int8_static", "ort_fp32"]
    assert skipped == []
    assert all(s.config.recipe.candidates == [] for s in usable)
    assert [s.overrides for s in usable] == [
        ["deployment=posture_server", "recipe=ort_int8_static"],
        ["deployment=posture_server", "recipe=ort_fp32"],
    ]


def test_winner_is_the_fastest_candidate_that_passes_every_gate() -> None:
    result = _result(
        Candidate("fast_but_failing", "failed", {"p50_ms": 1.0}, ["agreement >= 0.99: FAIL"]),
        Candidate("slow", "passed", {"p50_ms": 9.0}),
        Candidate("quick", "passed", {"p50_ms": 3.0}),
        Candidate("broken", "error", message="pass failed"),
    )
    _choose(result)
    assert result.winner is not None and result.winner.recipe == "quick"
    statuses = {r["recipe"]: r["status"] for r in result.rows()}
    assert statuses == {
        "fast_but_failing": "failed",
        "slow": "passed",
        "quick": "WINNER",
        "broken": "error",
    }
    assert "Winner: `quick`" in result.markdown()


def test_winner_follows_the_chosen_latency_metric() -> None:
    result = _result(
        Candidate("steady", "passed", {"p50_ms": 5.0, "p95_ms": 6.0}),
        Candidate("spiky", "passed", {"p50_ms": 4.0, "p95_ms": 30.0}),
    )
    result.select_by = "p95_ms"
    _choose(result)
    assert result.winner is not None and result.winner.recipe == "steady"


def test_no_passing_candidate_lists_every_failure_and_exits_4() -> None:
    result = _result(
        Candidate("a", "failed", {"p50_ms": 1.0}, ["p95_ms <= 1: FAIL (measured 3)"]),
        Candidate("b", "error", message="recipe.passes[0] (onnx_fp16) failed: boom"),
        Candidate("c", "skipped", message="tensorrt is not available"),
        Candidate("foreign", "n/a", message="pass 'ov_convert' makes a model for openvino"),
    )
    _choose(result)
    assert result.winner is None
    error = NoCandidatePassedError(result)
    assert error.exit_code == 4
    text = str(error)
    assert "a: p95_ms <= 1: FAIL (measured 3)" in text
    assert "b: error: recipe.passes[0] (onnx_fp16) failed: boom" in text
    assert "c: skipped: tensorrt is not available" in text
    assert "foreign" not in text  # recipes the target cannot run were never candidates


def test_terminal_summary_fits_100_columns_and_names_the_winner() -> None:
    why = "agreement >= 0.99: FAIL (0.93); " + "p95_ms <= 1: FAIL " * 10
    result = _result(
        Candidate("a_recipe_with_a_rather_long_name", "failed", {"p50_ms": 1.0}, [why]),
        Candidate("quick", "passed", {"p50_ms": 3.123456, "p95_ms": 4.0, "agreement": 1.0}),
    )
    _choose(result)
    text = result.summary()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[-1] == "winner: quick"
    assert "agreement >= 0.99" in text  # the first reason, shortened to fit
    assert "WINNER" in text and "3.123" in text
