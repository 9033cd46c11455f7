"""What a script or a shell relies on: --version, "did you mean" for verbs and flags, --json
for list and show, shell completion of verbs, flags and KEY=VALUE words, a clear error for
an override Hydra cannot parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.common import complete_words
from orchestrator.cli.main import build_parser, main
from orchestrator.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]


def test_version_names_edgeship_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("edgeship 0.") and f"Python {sys.version.split()[0]}" in out


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["buidl"], "(did you mean 'build'?)"),
        (["rollot"], "(did you mean 'rollout'?)"),
        (["build", "--reprot-dir", "x"], "(did you mean '--report-dir' for '--reprot-dir'?)"),
    ],
)
def test_mistyped_verb_or_flag_is_a_usage_error_with_the_closest_name(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert hint in err


def test_list_json_names_every_option_and_where_it_comes_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {d["name"]: d["origin"] for d in listing["deployments"]}
    assert names["posture_server"] == "project"
    assert {"name": "ort_fp32", "origin": "built-in"} in listing["recipes"]
    assert {p["name"] for p in listing["passes"]} >= {"ort_graph_optimize"}
    assert {t["family"] for t in listing["target_families"]} >= {"server", "intel_nuc"}


def test_show_json_is_the_composed_spec(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    assert main(["show", "deployment=posture_server", "target.threads=2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["deployment"] == "posture_server"
    assert shown["choices"]["model"] == "posture_cnn"
    assert shown["files"]["model"] == "conf/model/posture_cnn.yaml"
    assert shown["spec"]["target"]["threads"] == 2


def test_trace_json_is_format_json() -> None:
    args = build_parser().parse_args(["trace", "dev1", "--json"])
    assert args.format == "json"


def test_unparsable_override_names_the_word_and_the_quoted_form(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    code = main(["show", "deployment=posture_server", "deployment.gates=[p95_ms <= 3]"])
    assert code == ExitCode.INVALID_SPEC
    err = capsys.readouterr().err
    assert "deployment.gates: cannot be parsed" in err
    assert "e.g. deployment.gates=['p95_ms <= 3']" in err
    assert "LexerNoViableAltException" not in err
    # the suggested form is accepted
    assert main(["show", "deployment=posture_server", "deployment.gates=['p95_ms <= 3']"]) == 0


def test_completion_of_key_value_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    assert complete_words("dep") == ["deployment="]
    assert complete_words("deployment=posture_s") == ["deployment=posture_server"]
    assert "recipe=ort_fp32" in complete_words("recipe=")
    assert complete_words("nosuch=x") == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("edgeship bu", {"build", "bundle"}),
        ("edgeship build --rep", {"--report-dir"}),
        ("edgeship build deployment=ct_seg_n", {"deployment=ct_seg_nuc"}),
    ],
)
def test_shell_completion_through_argcomplete(
    line: str, expected: set[str], tmp_path: Path
) -> None:
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "EDGESHIP_ROOT": str(ROOT),
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert {w.strip() for w in out.read_text().split("\n") if w.strip()} == expected
