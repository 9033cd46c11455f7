"""Golden tests: the exact text a user sees for each bad spec, and that nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden.cases import CASES
from tests.golden.harness import run_case

EXPECTED = Path(__file__).parent / "expected"


@pytest.mark.parametrize("name", sorted(CASES))
def test_spec_error_text_matches_golden(name: str, tmp_path: Path) -> None:
    code, err = run_case(CASES[name], tmp_path)
    assert f"exit {code}\n{err}" == (EXPECTED / f"{name}.txt").read_text()
    assert code == 2
    project = tmp_path / "project"
    assert not (project / "artifacts").exists()
    assert not (project / "mlflow.db").exists()
    assert not (project / "mlartifacts").exists()


def test_golden_cases_cover_at_least_twelve_distinct_errors() -> None:
    texts = {(EXPECTED / f"{n}.txt").read_text() for n in CASES}
    assert len(texts) == len(CASES) >= 12
