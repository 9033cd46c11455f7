"""Untrusted names, labels, descriptions and device answers cannot forge report output.

Terminal tables (one row per device), the build's Markdown report and model card,
and the trace's HTML page.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.build.report import render
from orchestrator.build.validate import Validation
from orchestrator.core.text import html, md_code, md_text, terminal
from orchestrator.spec.compose import compose
from orchestrator.spec.gates import Gate, GateResult

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = "<script>alert(1)</script>"
FORGED = (
    "ok |\n| forged | row |\n\x1b[2J\x1b[31mred\x1b[0m [click](http://evil.example) <img src=x>"
)


# -- the helpers --------------------------------------------------------------------------------


def test_terminal_shows_control_characters_when_a_value_has_newlines_and_ansi() -> None:
    text = terminal("ward\n22\x1b[31m\r\t\x7f\u202eevil\u2028x")
    assert text == "ward\\n22\\x1b[31m\\r\\t\\x7f\\u202eevil\\u2028x"
    assert text.isprintable()
    assert terminal("dev01 ward-22 ünïcode") == "dev01 ward-22 ünïcode"
    assert terminal("a\nb\x1b[0m", keep_newlines=True) == "a\nb\\x1b[0m"


def test_md_text_escapes_html_and_markdown_when_a_value_is_hostile() -> None:
    text = md_text(FORGED)
    assert "\n" not in text and "<" not in text and "\x1b" not in text
    assert "|" not in text.replace("\\|", "")
    assert "\\[click\\](http://evil.example)" in text and "&lt;img src=x&gt;" in text
    assert md_text("posture_server v1.2 -0.5") == "posture_server v1.2 -0.5"
    assert md_text("# title") == "\\# title" and md_text("1. item") == "1\\. item"
    assert md_text("_em_ **strong**") == "\\_em\\_ \\*\\*strong\\*\\*"


def test_md_code_fences_backticks_and_escapes_pipes() -> None:
    assert md_code("model.onnx") == "`model.onnx`"
    assert md_code("a`b|c\nd") == "``a`b\\|c d``"
    assert md_code("`x`") == "`` `x` ``"


def test_html_escapes_quotes_too() -> None:
    assert html("\"><script>'") == "&quot;&gt;&lt;script&gt;&#x27;"


# -- Markdown reports ---------------------------------------------------------------------------


def _render(template: str, description: str, label: str) -> str:
    spec = compose(["deployment=posture_server"], ROOT)
    spec.config.deployment.description = description
    spec.config.model.description = description
    spec.config.model.labels = [label, "sitting"]
    runtime: dict[str, Any] = {
        "target": {
            "family": "server",
            "runtime": "onnxruntime",
            "device": "cpu",
            "threads": 2,
        },
        "runtime_version_built_with": "1.20",
        "runtime_requirement": ">=1.18",
        "model": {
            "file": "model|`x`.onnx",
            "format": "onnx",
            "precision": "int8",
            "sha256": "ab" * 32,
        },
        "inputs": [{"name": "in|put", "dtype": "float32", "shape": [1, 3, 64, 64]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "preprocessing": {"scale": "1/255 | <b>"},
    }
    result = Validation(
        metrics={
            "accuracy": 0.93,
            "p50_ms": 1.0,
            "p95_ms": 2.0,
            "p99_ms": 3.0,
            "size_mb": 1.5,
            "peak_memory_mb": 20.0,
            "max_abs_error": 0.01,
        },
        gates=[
            GateResult(Gate("accuracy", ">=", 0.9), 0.93, True),
            GateResult(Gate("p95_ms", "<=", 1.0), 2.0, False),
        ],
        details={
            "confusion_matrix": {
                "labels": [label, "sitting"],
                "rows_true_cols_pred": [[5, 1], [0, 6]],
            }
        },
    )
    data = {"eval_samples": 12, "eval_data_sha256": "cd" * 32, "weights_sha256": "ef" * 32}
    provenance = {
        "environment": {"processor": "x86_64 " + SCRIPT},
        "git": {"commit": "0123abc", "dirty": False},
        "built_at": "2026-01-01T00:00:00Z",
    }
    return render(template, spec, runtime, result, data, provenance=provenance)


def _table_rows_keep_their_columns(text: str) -> None:
    """Every Markdown table row has as many cells as its header."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\|(-*\|)+", line):  # a header separator
            cells = line.count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                unescaped = len(re.findall(r"(?<!\\)\|", lines[j]))
                assert unescaped == cells, f"row {lines[j]!r} does not have {cells - 1} cells"
                j += 1


@pytest.mark.parametrize("template", ["report.md.j2", "model_card.md.j2"])
def test_markdown_reports_escape_the_description_when_it_holds_html(template: str) -> None:
    text = _render(template, SCRIPT + "\n## Forged heading\n" + FORGED, "lying|\n| x")
    outside_code = re.sub(r"(`+).*?(?<!`)\1(?!`)", "", text)  # code spans show HTML as text
    assert "<" not in outside_code
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "\x1b" not in text and "\\x1b" in text
    assert "\n## Forged heading" not in text and "\n| forged | row |" not in text
    assert "[click](http" not in text
    _table_rows_keep_their_columns(text)
    assert "**FAIL**" in text  # the templates' own Markdown still works


def test_report_keeps_its_layout_when_values_are_plain() -> None:
    text = _render("report.md.j2", "Posture classifier for bedside monitors", "lying")
    assert text.startswith("# Validation report: posture_server\n")
    assert "| artifact | `model\\|`x`.onnx` (onnx, int8)" not in text  # the fence grew
    assert "``model\\|`x`.onnx``" in text
    assert "| recipe | ort_int8_dynamic: " in text
    assert (
        "\n| | lying | sitting |\n|---|---|---|\n| lying | 5 | 1 |\n| sitting | 0 | 6 |\n" in text
    )


# -- the trace's HTML page ----------------------------------------------------------------------


def test_trace_html_escapes_names_labels_and_device_answers() -> None:
    from orchestrator.ship.trace import Check, Trace, render_html

    hostile = '"><script>alert(1)</script>'
    trace = Trace(
        device={
            "name": "dev01" + hostile,
            "fleet": "ward" + hostile,
            "address": "127.0.0.2",
            "family": "server",
            "groups": ["g" + hostile],
            "labels": {"site": "north" + hostile, "ward": "22\n<img src=x onerror=alert(2)>"},
            "install_root": "/opt/edgeship",
        },
        running={
            "deployment": "posture" + hostile,
            "version": 3,
            "health": "fail",
            "health_reason": "<iframe src=evil>",
            "last_event": "activated" + hostile,
            "installed": [3],
        },
        bundle={"manifest_sha256": "ab" * 32, "key_id": "k" + hostile},
        provenance={"choices": {"model": "m" + hostile}, "git": {"branch": "b" + hostile}},
        mlflow={},
        rollouts=[
            {
                "at": "t",
                "rollout": "r" + hostile,
                "strategy": "canary",
                "result": "activated",
                "change": "v2 -> v3",
                "rollout_status": "completed",
            }
        ],
        checks=[Check("manifest" + hostile, False, "found <b>forged</b>")],
        generated_at="2026-01-01T00:00:00Z",
    )
    page = render_html(trace)
    assert "<script>" not in page and "<img" not in page and "<iframe" not in page
    assert "<b>forged" not in page and '"><' not in page
    assert "dev01&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "v2 → v3" in page


def test_templates_mark_nothing_safe() -> None:
    for folder in ("orchestrator/ship/templates", "orchestrator/build/templates"):
        for path in (ROOT / folder).glob("*.j2"):
            text = path.read_text()
            assert not re.search(r"\|\s*safe\b|autoescape\s+false|Markup", text), path


# -- terminal tables ----------------------------------------------------------------------------

ANSI = "\x1b[2J\x1b[1;1H\x1b[32m"


def test_status_table_keeps_one_row_per_device_when_labels_and_answers_hold_newlines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from orchestrator.cli.rollout import _status_table
    from orchestrator.ship.status import DeviceStatus

    rows = [
        DeviceStatus(
            "dev01",
            "127.0.0.2",
            {"site": "north\ndev99  127.0.0.9  -  posture_server  v9  pass", "ward": ANSI + "22"},
            [],
            state="running",
            deployment="posture\r\nforged",
            version=1,
            health="fail",
            health_reason="boom\n" + ANSI,
            last_change="2026-01-01T00:00:00Z",
            last_event="activated\x1b]0;title\x07",
        ),
        DeviceStatus("dev02", "127.0.0.3", {}, [], state="unreachable", message="ssh: x\ny" + ANSI),
    ]
    _status_table("ward\n22", rows)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1 + len(rows) + 1  # header, one row per device, summary
    assert lines[1].startswith("dev01 ") and lines[2].startswith("dev02 ")
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "site=north\\ndev99" in lines[1] and "\\x1b[2J" in lines[1]
    assert lines[3].startswith("fleet ward\\n22: 2 device(s)")


def test_device_outcomes_keep_one_line_per_device_when_answers_hold_escapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from orchestrator.cli.ship import _print_outcomes
    from orchestrator.ship.results import DeviceOutcome, RolloutResult

    outcomes = [
        DeviceOutcome("dev01\nfake", "127.0.0.2", result="running", version=2),
        DeviceOutcome(
            "dev02",
            "127.0.0.3",
            result="error",
            message="agent said:\n  dev03  running v9" + ANSI,
            notes=["note\x1b[8m"],
        ),
    ]
    _print_outcomes(RolloutResult("status", outcomes), as_json=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("  dev01\\nfake  127.0.0.2")
    assert lines[2].strip().startswith("agent said:\\n  dev03  running v9\\x1b[2J")
    assert len(lines) == 5  # two devices, a message, a note, the count
