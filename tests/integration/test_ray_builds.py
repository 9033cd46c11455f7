"""Builds on a real local Ray cluster (``ray start --head`` on loopback) against a real MLflow
server: a multirun, a ``recipe=auto`` selection and a worker that dies, each checked against
what a local build records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from tests.conftest import BIN, free_port

pytest.importorskip("ray")
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHEAP = ["deployment.validation.latency_runs=20"]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A Ray head node on 127.0.0.1 with two CPUs, for the whole session; yields its address.

    ``ray start --block`` keeps the node's processes in one process group, stopped as one
    (``ray stop`` would stop every cluster of this user on the machine)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # socket paths stay short
    log = (temp / "start.log").open("w")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("EDGESHIP_RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--temp-dir",
            str(temp),
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=temp,
    )
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (temp / "start.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((temp / "start.log").read_text()[-2000:])
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _end_group(proc)
        log.close()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def _end_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop the node's process group: ``ray start --block``, GCS, raylet, workers."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        proc.poll()  # reaped, the group's leader leaves it
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_driver(ray_cluster: str) -> Iterator[str]:
    """This process connected to the cluster once for the module's builds: one Ray job, so
    the workers it starts stay for the next test (each CLI run is a job of its own)."""
    from orchestrator.build.distributed import connect

    ray = connect(ray_cluster)
    yield ray_cluster
    ray.shutdown()


@pytest.fixture
def tracked(isolated: Path, mlflow_server: str, trained_models: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("EDGESHIP_RAY_ADDRESS", raising=False)
    return isolated


def _client() -> MlflowClient:
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _run_id(artifact: Path) -> str:
    return str(json.loads((artifact / "build.json").read_text())["mlflow"]["run_id"])


def _files(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _files(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _shape(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """What a build's run records, less what measurement changes (figures, digests)."""
    run = client.get_run(run_id)
    varying = {"edgeship.artifact.sha256", "mlflow.note.content", "edgeship.model_version"}
    return {
        "params": run.data.params,
        "metrics": set(run.data.metrics),
        "tags": {k: v for k, v in run.data.tags.items() if k not in varying and "runName" not in k},
        "tag_keys": set(run.data.tags),
        "files": _files(client, run_id),
        "datasets": sorted(d.dataset.name for d in run.inputs.dataset_inputs),
        "status": run.info.status,
    }


def test_ray_multirun_records_each_build_as_a_local_build_does(
    tracked: Path, ray_driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tracked / "artifacts"
    assert main(["build", "deployment=posture_phone", *CHEAP]) == 0
    local = _run_id(art / "posture_phone")
    code = main(
        ["build", "-m", "--ray", ray_driver, "deployment=posture_phone,posture_server", *CHEAP]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "submitted to the Ray cluster" in out.err
    client = _client()
    remote = _run_id(art / "posture_phone")
    assert remote != local
    assert _shape(client, remote) == _shape(client, local)
    for name in ("posture_phone", "posture_server"):
        run_id = _run_id(art / name)
        assert run_id in out.out
        version = client.get_model_version_by_alias(name, "candidate")
        run = client.get_run(run_id)
        assert version.tags["edgeship.artifact.sha256"] == run.data.tags["edgeship.artifact.sha256"]
        assert run.data.tags["edgeship.model_version"] == version.version
        assert json.loads((art / name / "build.json").read_text())["status"] == "passed"


def test_ray_auto_records_candidates_under_the_driver_parent_run(
    tracked: Path, ray_driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "build",
            "--ray",
            ray_driver,
            "deployment=posture_server",
            "recipe=auto",
            "recipe.candidates=[ort_fp32,ort_int8_static]",
            *CHEAP,
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "2 candidate(s) submitted to the Ray cluster" in out.err
    art = tracked / "artifacts" / "posture_server"
    info = json.loads((art / "build.json").read_text())
    selection = info["selection"]
    client = _client()
    parent = client.get_run(selection["parent_run_id"])
    assert parent.data.tags["edgeship.selection"] == "parent"
    assert parent.data.tags["edgeship.selection.winner"] == selection["winner"]
    assert parent.data.params["candidates"] == "ort_fp32,ort_int8_static"
    assert parent.data.metrics["candidates_passed"] == 2.0
    assert _files(client, parent.info.run_id) == {
        "selection/comparison.csv",
        "selection/comparison.md",
        "selection/latency_vs_parity.png",
    }
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    by_recipe = {c.data.tags["edgeship.recipe"]: c for c in children}
    assert set(by_recipe) == {"ort_fp32", "ort_int8_static"}
    winner = by_recipe[selection["winner"]]
    assert winner.info.run_id == info["mlflow"]["run_id"]
    assert winner.data.tags["edgeship.selection"] == "winner"
    version = client.get_model_version_by_alias("posture_server", "candidate")
    assert info["mlflow"]["model_version"] == version.version
    assert version.tags["edgeship.artifact.sha256"] == winner.data.tags["edgeship.artifact.sha256"]
    loser = next(c for r, c in by_recipe.items() if r != selection["winner"])
    assert "edgeship.model_version" not in loser.data.tags
    # each candidate's run is a build's run: the same params, tags and files
    for child in children:
        shape = _shape(client, child.info.run_id)
        assert shape["status"] == "FINISHED"
        assert "artifact/metrics.json" in shape["files"] and "artifact/model" not in shape["files"]
        assert shape["params"]["choice.recipe"] == child.data.tags["edgeship.recipe"]


def _kill_task_when_running(title: str, killed: list[int], timeout: float = 60) -> None:
    """SIGKILL the first worker whose process title is ``title`` (the task running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not killed:
        ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        for line in ps.splitlines():
            pid, _, args = line.strip().partition(" ")
            if args.strip() == title:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.1)


def test_ray_build_whose_worker_dies_is_retried_else_reported(
    tracked: Path, ray_driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    title = "ray::edgeship-build:posture_phone:ort_mobile_int8"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_task_when_running, args=(title, killed))
    watcher.start()
    code = main(["build", "--ray", ray_driver, "deployment=posture_phone", *CHEAP])
    watcher.join()
    out = capsys.readouterr()
    assert killed, "the build task was never seen running"
    assert code == 0, out.err  # the task ran again on another worker
    run = _client().get_run(_run_id(tracked / "artifacts" / "posture_phone"))
    assert run.data.tags["edgeship.status"] == "passed"

    # without retries the lost task is reported, with the exit code of a failed build
    killed.clear()
    watcher = threading.Thread(target=_kill_task_when_running, args=(title, killed))
    watcher.start()
    code = main(
        [
            "build",
            "--ray",
            ray_driver,
            "--ray-resources",
            "retries=0",
            "--no-record",
            "deployment=posture_phone",
            *CHEAP,
        ]
    )
    watcher.join()
    err = capsys.readouterr().err
    assert killed and code == 1, err
    assert "posture_phone: its Ray task failed on the cluster after 1 attempt(s)" in err
