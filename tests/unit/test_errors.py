"""One exception root and one exit-code table, the same in the code, --help and the README."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import orchestrator.errors as errors
from orchestrator.cli.main import build_parser, main
from orchestrator.errors import EXIT_CODE_MEANINGS, EdgeshipError, ExitCode

ROOT = Path(__file__).resolve().parents[2]


def test_errors_every_code_has_a_meaning_and_codes_are_distinct() -> None:
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def test_errors_every_edgeship_error_carries_a_code_of_the_table() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, EdgeshipError)
    ]
    assert len(classes) > 10
    for cls in classes:
        assert cls.exit_code in set(ExitCode), cls


def test_errors_distinct_codes_for_the_cases_scripts_tell_apart() -> None:
    assert errors.SpecError.exit_code != errors.UsageError.exit_code
    halted, unreachable, locked = (
        errors.RolloutHaltedError.exit_code,
        errors.DeviceUnreachableError.exit_code,
        errors.RolloutLockedError.exit_code,
    )
    assert len({halted, unreachable, locked, errors.RolloutError.exit_code}) == 4


def test_errors_readme_table_matches_the_code() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- exit-codes:", 1)[1].split("<!-- /exit-codes -->", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+) \|$", block, re.M)
    assert [(int(c), n, m) for c, n, m in rows] == [
        (int(c), c.name, EXIT_CODE_MEANINGS[c]) for c in ExitCode
    ]


def test_errors_help_prints_the_table() -> None:
    text = build_parser().format_help()
    for code in ExitCode:
        assert f"{int(code):>3}  {EXIT_CODE_MEANINGS[code]}" in text


def test_errors_bad_flag_is_a_usage_error_not_an_invalid_spec(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["build", "--no-such-flag"])
    assert info.value.code == ExitCode.USAGE
    with pytest.raises(SystemExit) as info:
        main(["no-such-verb"])
    assert info.value.code == ExitCode.USAGE


def test_errors_bundle_of_several_deployments_refuses_flags_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    code = main(["bundle", "deployment=posture_server,posture_nuc", "--export", "out.tar"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "deployment: expected one NAME with --export, found 2: posture_server,posture_nuc" in err
    assert not (tmp_path / "keys").exists() and not Path("out.tar").exists()
