"""The MLflow UI, opened in headless Chromium, shows the builds and their metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli.main import main
from tests.browser import page_text, screenshot

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

    runs_url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs"
    listing = page_text(runs_url)
    assert "posture_server-ort_int8_dynamic" in listing

    run_url = f"{mlflow_server}/#/experiments/{exp.experiment_id}/runs/{run_id}"
    page = page_text(run_url)
    for metric in ("agreement", "accuracy_drop", "p95_ms", "size_mb", "peak_memory_mb"):
        assert metric in page, metric
    assert f"{agreement:g}"[:4] in page

    for name, url in (("runs.png", runs_url), ("run.png", run_url)):
        png = screenshot(url, isolated / name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000
