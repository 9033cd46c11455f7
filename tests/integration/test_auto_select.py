"""recipe=auto against a real MLflow server: nested runs, comparison evidence, the winner."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def tracked(isolated: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    from orchestrator.build import reference
    from orchestrator.spec.compose import load_option

    root = Path(os.environ["EDGESHIP_ROOT"])
    reference.ensure_weights(load_option("model", "posture_cnn", root), root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return isolated


def _client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _candidate_version(client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias("posture_server", "candidate").version)
    except MlflowException:
        return None


def test_auto_records_each_candidate_under_one_parent_and_installs_the_fastest_passing(
    tracked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "build",
            "deployment=posture_server",
            "recipe=auto",
            "recipe.candidates=[ort_fp32,ort_int8_static]",
            "deployment.validation.latency_runs=20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    art = tracked / "artifacts" / "posture_server"
    info = json.loads((art / "build.json").read_text())
    selection = info["selection"]
    rows = list(csv.DictReader((art / "selection" / "comparison.csv").open()))
    assert {r["recipe"] for r in rows} == {"ort_fp32", "ort_int8_static"}
    passing = [r for r in rows if r["status"] in ("passed", "WINNER")]
    fastest = min(passing, key=lambda r: float(r["p50_ms"]))
    assert fastest["status"] == "WINNER" and selection["winner"] == fastest["recipe"]
    runtime = json.loads((art / "runtime.json").read_text())
    expected_precision = "int8" if fastest["recipe"] == "ort_int8_static" else "fp32"
    assert runtime["model"]["precision"] == expected_precision
    assert "WINNER" in out

    client = _client()
    parent_id = selection["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["edgeship.selection.winner"] == selection["winner"]
    assert parent.data.tags["edgeship.status"] == "passed"
    files = {f.path for f in client.list_artifacts(parent_id, "selection")}
    assert files == {
        "selection/comparison.csv",
        "selection/comparison.md",
        "selection/latency_vs_parity.png",
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    by_recipe = {c.data.tags["edgeship.recipe"]: c for c in children}
    assert set(by_recipe) == {"ort_fp32", "ort_int8_static"}
    winner_run = by_recipe[selection["winner"]]
    assert winner_run.info.run_id == info["mlflow"]["run_id"] == fastest["run_id"]
    version = client.get_model_version_by_alias("posture_server", "candidate")
    # the winner's artifact is the candidate version (registered by this run, or by an
    # earlier build of the very same artifact: no second version of one artifact)
    digest = "edgeship.artifact.sha256"
    assert version.tags[digest] == winner_run.data.tags[digest]
    assert info["mlflow"]["model_version"] == version.version
    # the registered winner names its source, as a plain build's version does
    assert version.tags["edgeship.source.kind"] == "pytorch"
    assert version.tags["edgeship.source.sha256"] == info["source"]["sha256"]
    loser = next(c for r, c in by_recipe.items() if r != selection["winner"])
    assert "edgeship.model_version" not in loser.data.tags  # only the winner is registered


def test_auto_without_a_passing_candidate_exits_4_listing_every_failure(
    tracked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _candidate_version(_client())
    code = main(
        [
            "build",
            "deployment=posture_server",
            "recipe=auto",
            "recipe.candidates=[ort_fp32,ort_slim]",
            "deployment.gates=['p95_ms <= 0.000001']",
            "deployment.validation.latency_runs=5",
        ]
    )
    captured = capsys.readouterr()
    assert code == 4
    assert "ort_fp32: p95_ms <= 1e-06: FAIL" in captured.err
    assert "ort_slim: p95_ms <= 1e-06: FAIL" in captured.err
    assert "No candidate passed every gate" in captured.out
    assert not (tracked / "artifacts" / "posture_server").exists()
    failed = tracked / "artifacts" / ".failed" / "posture_server.auto"
    assert (failed / "selection" / "comparison.md").is_file()
    assert _candidate_version(_client()) == before
