"""edgeship as an installed tool over a team's own project, in a folder outside the checkout.

The tool runs from this checkout's wheel (unpacked, on PYTHONPATH: the package data a user
gets), never from the checkout itself; no EDGESHIP_ROOT; the project's own Python is found
from the project root. `dvc repro` builds a deployment added after the first run without
any edit of dvc.yaml, recording into the project's local MLflow store (no server).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests import installed
from tests.installed import BIN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, unpacked, and an `edgeship` command that runs it."""
    base = installed.install(tmp_path_factory.mktemp("installed"))
    assert (base / "site" / "orchestrator" / "builtin_conf" / "recipe" / "ort_fp32.yaml").is_file()
    assert not (base / "site" / "examples").exists()
    return base


_run = installed.run
_edgeship = installed.edgeship


def test_installed_edgeship_builds_a_team_project_with_builtin_recipe_and_target(
    tool: Path, tmp_path: Path
) -> None:
    project = tmp_path / "team"
    _edgeship(tool, tmp_path, "init", "team")
    assert not (project / "conf" / "recipe").exists() and not (project / "conf" / "target").exists()

    listed = _edgeship(tool, project, "list").stdout
    assert re.search(r"mymodel_server\s+\(project\)", listed)
    assert re.search(r"ort_fp32\s+\(built-in\)", listed)
    assert re.search(r"\n  server\s+\(built-in\)", listed)

    # a build never makes weights up: it names the key and says how to make them
    refused = _edgeship(tool, project, "build", "deployment=mymodel_server", ok=False)
    assert refused.returncode == 2 and "model.source.weights" in refused.stderr
    assert not (project / "artifacts").exists()
    _edgeship(tool, project, "train", "model=mymodel")
    assert (project / "models" / "mymodel.pt").is_file()  # trained by the project's own code
    built = _edgeship(tool, project, "build", "deployment=mymodel_server", "--no-record")
    assert "mymodel_server: PASSED" in built.stdout
    assert (project / "artifacts" / "mymodel_server" / "model" / "model.onnx").is_file()

    # the project's own recipe of a built-in's name wins
    own = project / "conf" / "recipe" / "ort_fp32.yaml"
    own.parent.mkdir()
    own.write_text(
        "name: ort_fp32\ndescription: the team's own ort_fp32\n"
        "passes:\n  - name: ort_graph_optimize\n    options: {level: basic}\n"
    )
    listed = _edgeship(tool, project, "list").stdout
    assert re.search(r"ort_fp32\s+\(project, overrides built-in\)", listed)
    shown = _edgeship(tool, project, "show", "deployment=mymodel_server").stdout
    assert "description: the team's own ort_fp32" in shown and "level: basic" in shown

    again = _edgeship(tool, project, "init", ok=False)
    assert again.returncode == 2 and "init never overwrites" in again.stderr


def test_dvc_repro_builds_a_new_deployment_without_editing_dvc_yaml(
    tool: Path, tmp_path: Path
) -> None:
    project = tmp_path / "team"
    _edgeship(tool, tmp_path, "init", "team")
    _run(tool, project, "git", "init", "-q")
    _run(tool, project, "git", "config", "user.email", "ci@example.invalid")
    _run(tool, project, "git", "config", "user.name", "edgeship ci")
    _run(tool, project, str(BIN / "dvc"), "init", "-q")
    _run(tool, project, str(BIN / "dvc"), "config", "core.analytics", "false")
    _run(tool, project, "git", "add", "-A")
    _run(tool, project, "git", "commit", "-qm", "project")
    dvc_yaml = (project / "dvc.yaml").read_bytes()

    def repro(ok: bool = True) -> tuple[set[str], subprocess.CompletedProcess]:
        proc = _run(tool, project, str(BIN / "dvc"), "repro", ok=ok)
        return set(re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr)), proc

    first, _ = repro()
    assert first == {"train@mymodel", "spec@mymodel_server", "build@mymodel_server"}
    assert (project / "mlflow.db").is_file()  # the project's local MLflow store

    src = project / "conf" / "deployment" / "mymodel_server.yaml"
    (src.parent / "mymodel_edge.yaml").write_text(
        src.read_text().replace("name: mymodel_server", "name: mymodel_edge")
    )
    # DVC read the lists when it started: the spec@ stages refresh them and stop the run
    _, stale = repro(ok=False)
    assert stale.returncode != 0
    assert "dvc-stages.yaml was out of date" in stale.stdout + stale.stderr
    assert "mymodel_edge" in (project / "dvc-stages.yaml").read_text()

    ran, _ = repro()
    assert "build@mymodel_edge" in ran and "spec@mymodel_edge" in ran
    assert "build@mymodel_server" not in ran and "train@mymodel" not in ran
    assert (project / "artifacts" / "mymodel_edge" / "model" / "model.onnx").is_file()
    assert (project / "dvc.yaml").read_bytes() == dvc_yaml
    assert repro()[0] == set()
    _edgeship(tool, project, "dvc", "--check")
