"""Builds on Ray, without a cluster: the default path, the address, the task options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]


def test_build_without_ray_address_never_imports_ray(tmp_path: Path) -> None:
    """The whole build verb runs (its build stubbed to miss a gate): Ray stays unimported."""
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_RAY_ADDRESS"}
    env.update(EDGESHIP_ROOT=str(ROOT), EDGESHIP_ARTIFACTS=str(tmp_path / "artifacts"))
    code = (
        "import sys\n"
        "from orchestrator.build import pipeline\n"
        "from orchestrator.errors import GateFailure\n"
        "def stub(spec, **kw): raise GateFailure(spec.name, ['p95_ms <= 1: FAIL'], None)\n"
        "pipeline.run_build = stub\n"
        "from orchestrator.cli.main import main\n"
        "code = main(['build', '-m', '--no-record', 'deployment=posture_server,posture_nuc'])\n"
        "print(code, 'ray' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.stdout.split()[-2:] == ["4", "False"], done.stderr
    assert "2 of 2 build(s) failed their gates" in done.stderr


def test_ray_address_comes_from_the_option_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.build.distributed import ray_address

    monkeypatch.delenv("EDGESHIP_RAY_ADDRESS", raising=False)
    assert ray_address(None) is None
    monkeypatch.setenv("EDGESHIP_RAY_ADDRESS", "auto")
    assert ray_address(None) == "auto"
    assert ray_address("127.0.0.1:6379") == "127.0.0.1:6379"


def test_ray_resources_parse_defaults_and_overrides() -> None:
    from orchestrator.build.distributed import Resources

    assert Resources.parse(None) == Resources(1.0, 2048, None, 2)
    assert Resources.parse("cpus=2,memory_mb=4096,gpus=1,retries=0") == Resources(2.0, 4096, 1.0, 0)


def test_ray_resources_parse_lists_every_problem() -> None:
    from orchestrator.build.distributed import Resources

    with pytest.raises(SpecError) as caught:
        Resources.parse("cpu=2,retries=1.5,memory_mb=-1")
    assert str(caught.value).splitlines() == [
        "error: invalid --ray-resources (3 problems)",
        "  command line: --ray-resources: expected KEY=VALUE with KEY one of cpus, memory_mb, "
        "gpus, retries, found 'cpu=2'",
        "  command line: --ray-resources retries: expected a non-negative integer, found '1.5'",
        "  command line: --ray-resources memory_mb: expected a non-negative integer, found '-1'",
    ]


def test_ray_task_environment_spells_out_the_project_and_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.build.distributed import task_environment

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", "rel/artifacts")
    monkeypatch.setenv("EDGESHIP_RAY_ADDRESS", "auto")
    monkeypatch.setenv("EDGESHIP_ALLOW_DIRTY", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = task_environment(ROOT)
    assert env["EDGESHIP_ROOT"] == str(ROOT.resolve())
    assert env["EDGESHIP_ARTIFACTS"] == str(tmp_path / "rel" / "artifacts")
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{ROOT.resolve() / 'mlflow.db'}"
    assert env["EDGESHIP_ALLOW_DIRTY"] == "1"
    assert "EDGESHIP_RAY_ADDRESS" not in env  # a worker builds where it is


def test_ray_resources_without_a_ray_address_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.cli.main import main

    monkeypatch.delenv("EDGESHIP_RAY_ADDRESS", raising=False)
    code = main(["build", "--ray-resources", "cpus=2", "deployment=posture_server"])
    assert code == 64
    assert "--ray-resources: needs --ray or EDGESHIP_RAY_ADDRESS" in capsys.readouterr().err


def test_ray_gpu_is_wanted_by_tensorrt_builds_only() -> None:
    from orchestrator.build.distributed import needs_gpu
    from orchestrator.spec.compose import compose

    assert needs_gpu(compose(["deployment=ct_seg_jetson"], ROOT))
    assert not needs_gpu(compose(["deployment=posture_server"], ROOT))


def test_ray_lost_or_broken_candidate_is_an_outcome_of_the_selection(tmp_path: Path) -> None:
    from orchestrator.build.distributed import _candidate
    from orchestrator.build.ray_task import TaskOutcome

    lost = TaskOutcome(
        "ort_fp32",
        "error",
        error_type="WorkerLostError",
        exit_code=1,
        message="error: ort_fp32: its Ray task failed on the cluster after 3 attempt(s)",
        candidate_error=True,
    )
    missing = TaskOutcome(
        "ov_fp16", "error", error_type="MissingDependencyError", exit_code=3, message="x"
    )
    assert _candidate(lost, tmp_path, "posture_server").status == "error"
    assert _candidate(lost, tmp_path, "posture_server").message.startswith(
        "ort_fp32: its Ray task failed on the cluster"
    )
    assert _candidate(missing, tmp_path, "posture_server").status == "skipped"
