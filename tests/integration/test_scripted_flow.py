"""A script drives build -> bundle -> rollout with `--json` answers and exit codes alone:
no line of human text is parsed, every decision comes from a documented field or code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ExitCode

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EDGESHIP = str(Path(sys.executable).parent / "edgeship")


def _json(args: list[str], env: dict[str, str], expect: int = 0) -> Any:
    res = subprocess.run(
        [EDGESHIP, *args, "--json"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert res.returncode == expect, (args, res.returncode, res.stderr[-2000:])
    return json.loads(res.stdout)


def test_a_script_builds_bundles_and_rolls_out_from_json_and_exit_codes(
    lab, trained_models: Path, tmp_path: Path
) -> None:
    assert not lab.enroll().failed
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_KEY_PASSPHRASE"}
    env.update(
        EDGESHIP_ROOT=str(ROOT),
        EDGESHIP_ARTIFACTS=str(tmp_path / "artifacts"),
        EDGESHIP_BUNDLES=str(lab.bundles),
        EDGESHIP_KEYS_DIR=str(lab.store.path),
        EDGESHIP_ROLLOUTS=str(tmp_path / "rollouts"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )

    names = sorted(lab.devices)
    (result,) = _json(["build", "deployment=posture_server"], env)
    assert result["passed"] and result["model_version"] == "1"

    made = _json(["bundle", "deployment=posture_server"], env)
    (bundle,) = made["bundles"]
    assert bundle["version"] == 1 and bundle["model_version"] == "1"
    assert bundle["bytes"] > 0 and len(bundle["manifest_sha256"]) == 64

    common = [
        "rollout",
        "deployment=posture_server",
        f"fleet={lab.fleet_path}",
        "rollout=all_at_once",
        f"version={bundle['version']}",
    ]
    plan = _json([*common, "--dry-run"], env)
    assert plan["would_start"] and plan["bundle"]["bytes_per_device"] > bundle["bytes"]
    assert sorted(d["name"] for wave in plan["waves"] for d in wave["devices"]) == names

    done = _json(common, env)
    assert done["status"] == "completed" and sorted(done["succeeded"]) == names
    assert {d: e["result"] for d, e in done["devices"].items()} == dict.fromkeys(names, "activated")

    # a gate the build fails: the documented exit code, the failure in the answer
    failed = _json(
        ["build", "deployment=posture_server", "deployment.gates=['p95_ms <= 0.000001']"],
        env,
        expect=ExitCode.GATES_FAILED,
    )
    assert not failed[0]["passed"] and failed[0]["failed_gates"]
