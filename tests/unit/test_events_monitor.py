"""Live monitoring from the events store: percentiles, rate, PSI against the distribution a
build measured, the `edgeship events summary` table and MLflow steps on the build's run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from orchestrator.build.tasks import classification_metrics
from orchestrator.events.monitor import (
    References,
    live_stats,
    percentile,
    psi,
    report_mlflow,
    since_minutes,
)
from orchestrator.events.store import EventStore
from tests.conftest import ROOT

LABELS = ["Standing", "Walking", "Running"]


def test_percentile_and_psi() -> None:
    assert percentile([], 95) is None
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 95) == pytest.approx(95.05)
    same = {"a": 30, "b": 70}
    assert psi(same, {"a": 3.0, "b": 7.0}) == pytest.approx(0.0)
    shifted = psi({"a": 70, "b": 30}, {"a": 30.0, "b": 70.0})
    assert shifted == pytest.approx(2 * 0.4 * np.log(7 / 3))
    assert psi({}, {"a": 1.0}) is None


def test_build_records_the_prediction_distribution_on_the_eval_set() -> None:
    out = np.array([[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5]], np.float32)
    _, details = classification_metrics(out, out, None, LABELS)
    assert details["prediction_distribution"] == {"labels": LABELS, "counts": [1, 2, 1]}


def _store(tmp_path: Path) -> tuple[str, EventStore]:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = EventStore(url)
    start = datetime.now(UTC) - timedelta(minutes=10)
    n = 0
    for device, version, preds, latency in (
        ("bed-1", 1, ["Standing"] * 5 + ["Walking"] * 5, 10.0),
        ("bed-2", 2, ["Running"] * 9 + ["Walking"], 30.0),
    ):
        for i, pred in enumerate(preds):
            n += 1
            event = {
                "id": f"e{n}",
                "deployment": "posture",
                "version": version,
                "prediction": pred,
                "latency_ms": latency + i,
                "time": (start + timedelta(seconds=6 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if device == "bed-2" and i == 0:
                event["error"] = "inference failed"
            store.add("ward", device, event)
    old = {"id": "old", "deployment": "posture", "version": 1, "prediction": "Running",
           "time": "2020-01-01T00:00:00Z"}  # fmt: skip
    store.add("ward", "bed-1", old)
    return url, store


def _bundle(bundles: Path, version: int, counts: list[int], run_id: str | None) -> None:
    folder = bundles / "posture" / str(version)
    folder.mkdir(parents=True)
    validation = {"details": {"prediction_distribution": {"labels": LABELS, "counts": counts}}}
    (folder / "validation.json").write_text(json.dumps(validation))
    (folder / "build.json").write_text(json.dumps({"mlflow": {"run_id": run_id}}))


def test_live_stats_per_version_and_device_with_drift(tmp_path: Path) -> None:
    _, store = _store(tmp_path)
    bundles = tmp_path / "bundles"
    _bundle(bundles, 1, [50, 50, 0], "run-1")
    _bundle(bundles, 2, [40, 40, 20], None)
    stats = References(bundles).fill(live_stats(store, since=since_minutes(60)))
    store.close()
    by = {(s.version, s.device): s for s in stats}
    assert set(by) == {(1, "bed-1"), (1, "*"), (2, "bed-2"), (2, "*")}
    one = by[(1, "bed-1")]
    assert one.events == 10  # the 2020 event is outside the window
    assert one.p50_ms == pytest.approx(14.5) and one.p95_ms == pytest.approx(18.55)
    assert one.per_minute == pytest.approx(9 / 0.9)  # 10 events over 54 s
    assert one.distribution == {"Standing": 5, "Walking": 5}
    assert one.psi == pytest.approx(0.0, abs=1e-3)
    two = by[(2, "bed-2")]
    assert two.errors == 1 and two.error_share == pytest.approx(0.1)
    assert two.psi is not None and two.psi > 0.5  # mostly Running where validation saw 20%

    class FakeTracker:
        logged: list[tuple[str, dict, int]] = []

        def log_live(self, run_id: str, metrics: dict, step: int) -> None:
            self.logged.append((run_id, metrics, step))

    tracker = FakeTracker()
    lines = report_mlflow(stats, bundles, tracker, 3)
    assert lines == [
        "posture v1: logged to run run-1 (step 3)",
        "posture v2: no MLflow run recorded in its bundle",
    ]
    ((run_id, metrics, step),) = tracker.logged
    assert (run_id, step, metrics["live_events"]) == ("run-1", 3, 10.0)
    assert set(metrics) == {"live_events", "live_error_share", "live_p50_ms", "live_p95_ms",
                            "live_events_per_min", "live_psi"}  # fmt: skip


def test_events_summary_and_mlflow_report_commands(tmp_path: Path) -> None:
    url, store = _store(tmp_path)
    store.close()
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "config.yaml").write_text("{}\n")
    bundles = tmp_path / "bundles"
    from registry.tracking import Tracker

    tracker = Tracker(project)
    with tracker.run("posture", "build", {}) as run:
        run_id = run.info.run_id
    _bundle(bundles, 1, [50, 50, 0], run_id)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGESHIP_ROOT": str(project),
           "EDGESHIP_BUNDLES": str(bundles)}  # fmt: skip
    cli = [sys.executable, "-m", "orchestrator.cli.main", "events"]
    out = subprocess.run(
        [*cli, "summary", "--db", url], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["deployment", "version", "device", "events"]
    row = next(line for line in lines if "ward/bed-1" in line).split()
    assert row[:6] == ["posture", "v1", "ward/bed-1", "10", "0.0%", "14.50"]
    assert row[8] == "0.000"
    for _ in (1, 2):
        subprocess.run([*cli, "report", "--mlflow", "--db", url], env=env, check=True,
                       capture_output=True)  # fmt: skip
    history = tracker.client.get_metric_history(run_id, "live_p95_ms")
    assert len(history) == 2 and history[0].value == pytest.approx(18.55)
    assert tracker.client.get_metric_history(run_id, "live_events")[-1].value == 10.0


def test_status_table_shows_live_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli.rollout import _status_table
    from orchestrator.events.monitor import LiveStats
    from orchestrator.ship.status import DeviceStatus

    rows = [
        DeviceStatus("bed-1", "127.0.0.2:22", {}, [], state="running", deployment="posture",
                     version=1, health="pass", latency_ms=1.0),
        DeviceStatus("bed-2", "127.0.0.3:22", {}, [], state="running", deployment="posture",
                     version=1, health="pass", latency_ms=1.0),
    ]  # fmt: skip
    live = {("bed-1", "posture", 1): LiveStats("posture", 1, "bed-1", "ward", events=10,
                                               p50_ms=1.5, p95_ms=2.25, per_minute=30.0,
                                               psi=0.012)}  # fmt: skip
    _status_table("ward", rows, live)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-3:] == ["p50/p95", "ms", "ev/min", "PSI"][-3:]
    assert lines[1].split()[-3:] == ["1.5/2.2", "30.0", "0.012"]
    assert lines[2].split()[-3:] == ["-", "-", "-"]
