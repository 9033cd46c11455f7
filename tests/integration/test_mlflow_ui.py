"""The MLflow UI, opened in headless Chromium, shows the builds and their metrics."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main
from tests.browser import page_text, screenshot

# MLflow 3's UI opens in its GenAI view unless told otherwise; builds are classic ML runs
CLASSIC = "?workflowType=machine_learning"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_mlflow_ui_shows_build_runs_and_metrics(
    isolated: Path, mlflow_server: str, trained_models: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert main(["build", "deployment=posture_server"]) == 0
    build = json.loads((isolated / "artifacts" / "posture_server" / "build.json").read_text())
    run_id = build["mlflow"]["run_id"]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("posture_server")
    assert exp is not None
    agreement = client.get_run(run_id).data.metrics["agreement"]

    runs_url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs{CLASSIC}"
    listing = page_text(runs_url)
    assert "posture_server-ort_int8_dynamic" in listing

    run_url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{run_id}{CLASSIC}"
    page = page_text(run_url)
    for metric in ("agreement", "accuracy_drop", "p95_ms", "size_mb", "peak_memory_mb"):
        assert metric in page, metric
    assert f"{agreement:g}"[:4] in page

    for name, url in (("runs.png", runs_url), ("run.png", run_url)):
        png = screenshot(url, isolated / name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000
        _evidence(png)


def _evidence(png: Path) -> None:
    """Keep a screenshot where ``EDGESHIP_EVIDENCE_DIR`` says (for a reviewer's folder)."""
    folder = os.environ.get("EDGESHIP_EVIDENCE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, Path(folder) / png.name)


def test_mlflow_ui_shows_the_model_version_and_the_auto_selection(
    isolated: Path, mlflow_server: str, trained_models: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    deployment = "posture_nuc"
    code = main(
        [
            "build",
            f"deployment={deployment}",
            "recipe=auto",
            "recipe.candidates=[ov_fp32,int8_nncf]",
            "--json",
        ]
    )
    assert code == 0
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias(deployment, "candidate")
    exp = client.get_experiment_by_name(deployment)
    assert exp is not None
    parent = next(
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("mlflow.runName") == f"{deployment}-auto"
    )
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.data.tags["mlflow.runName"] for c in children} == {
        f"{deployment}-ov_fp32",
        f"{deployment}-int8_nncf",
    }

    version_url = f"{mlflow_server}/#/models/{deployment}/versions/{version.version}{CLASSIC}"
    page = page_text(version_url)
    assert f"Version {version.version}" in page
    assert "candidate" in page and "PASSED" in page  # the alias and the gate description
    parent_url = (
        f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}{CLASSIC}"
    )
    page = page_text(parent_url)
    assert f"{deployment}-auto" in page and "Evaluation runs" not in page
    listing_url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs{CLASSIC}"
    page = page_text(listing_url)
    assert f"{deployment}-ov_fp32" in page or f"{deployment}-auto" in page

    for name, url in (
        ("model-version.png", version_url),
        ("auto-selection.png", parent_url),
        ("auto-candidates.png", listing_url),
    ):
        png = screenshot(url, isolated / name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000
        _evidence(png)
