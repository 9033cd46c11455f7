"""Model sources without building: missing files, errors in the project's code, provenance."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.build.provenance import GitStates, git_info, imported_distributions
from orchestrator.cli.main import main
from orchestrator.errors import ExitCode
from tests.userproject import UserProject


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserProject]:
    p = UserProject(tmp_path)
    monkeypatch.setenv("EDGESHIP_ROOT", str(p.root))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.delenv("EDGESHIP_FULL_ERROR", raising=False)
    yield p
    p.close()


def _build(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["build", "--no-record", "deployment=tiny_server", *args])
    return code, capsys.readouterr().err


def test_sources_missing_weights_stop_the_build_before_any_work_when_mistyped(
    project: UserProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _build(capsys, "model.source.weights=models/nope.pt")
    assert code == ExitCode.INVALID_SPEC
    assert "model source not found" in err
    assert "command line (model.source.weights=models/nope.pt): model.source.weights" in err
    assert "file models/nope.pt does not exist" in err
    assert not (project.root / "models" / "nope.pt").exists()  # nothing was trained
    assert not (project.root / "models" / "tiny.pt").exists()
    assert not (tmp_path / "artifacts").exists()


def test_sources_missing_weights_name_the_model_file_when_set_there(
    project: UserProject, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _build(capsys)
    assert code == ExitCode.INVALID_SPEC
    assert "conf/model/tiny.yaml: model.source.weights: file models/tiny.pt does not exist" in err
    assert "edgeship train" in err
    assert list((project.root / "models").iterdir()) == []


def test_sources_train_is_the_explicit_step_that_writes_weights(
    project: UserProject, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "model=tiny"]) == 0
    assert (project.root / "models" / "tiny.pt").is_file()


def test_sources_factory_that_raises_names_key_file_and_line_and_writes_nothing(
    project: UserProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project.model("tiny", f"kind: pytorch\nfactory: {{fn: {project.pkg}.model:broken_factory}}")
    code, err = _build(capsys)
    assert code == ExitCode.USER_CODE == 16
    lines = (project.root / project.pkg / "model.py").read_text().splitlines()
    line = next(i for i, t in enumerate(lines, 1) if "do not add up" in t)
    assert (
        f"error: model.source.factory: {project.pkg}.model:broken_factory raised ValueError" in err
    )
    assert f"at {project.pkg}/model.py:{line} in broken_factory" in err
    assert "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()


def test_sources_factory_that_raises_shows_the_traceback_with_verbose(
    project: UserProject, capsys: pytest.CaptureFixture[str]
) -> None:
    project.model("tiny", f"kind: pytorch\nfactory: {{fn: {project.pkg}.model:broken_factory}}")
    assert main(["-v", "build", "--no-record", "deployment=tiny_server"]) == ExitCode.USER_CODE
    assert "Traceback" in capsys.readouterr().err


def test_sources_factory_module_that_does_not_import_names_the_file_and_line(
    project: UserProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project.root / project.pkg / "bad.py").write_text("import numpy\n\ndef build(:\n    pass\n")
    project.model("tiny", f"kind: pytorch\nfactory: {{fn: {project.pkg}.bad:build}}")
    code, err = _build(capsys)
    assert code == ExitCode.USER_CODE
    assert "error: model.source.factory.fn: importing module" in err
    assert f"at {project.pkg}/bad.py:3" in err
    assert not (tmp_path / "artifacts").exists()


def test_sources_factory_module_missing_names_the_module(
    project: UserProject, capsys: pytest.CaptureFixture[str]
) -> None:
    project.model("tiny", f"kind: pytorch\nfactory: {{fn: {project.pkg}.nowhere:build}}")
    code, err = _build(capsys)
    assert code == ExitCode.USER_CODE
    assert f"cannot import module '{project.pkg}.nowhere'" in err


def test_sources_eval_loader_that_raises_names_its_key(
    project: UserProject, capsys: pytest.CaptureFixture[str]
) -> None:
    project.model("tiny", f"kind: pytorch\nfactory: {{fn: {project.pkg}.model:build}}")
    code, err = _build(capsys, "model.data.eval.args={samples: -1}")
    assert code == ExitCode.USER_CODE
    assert f"error: model.data.eval: {project.pkg}.model:eval_set raised ValueError" in err
    assert f"{project.pkg}/model.py:" in err


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_provenance_dirty_user_repository_counts_uncommitted_model_code(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "team").mkdir(parents=True)
    (root / ".gitignore").write_text("models/\n")
    (root / "team" / "model.py").write_text("import numpy\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "model")
    assert git_info(root)["dirty"] is False
    # what builds write (the DVC lock, the stage list, reports) does not make the tree dirty
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "reports" / "posture").mkdir(parents=True)
    (root / "reports" / "posture" / "metrics.json").write_text("{}")
    (root / "specs").mkdir()
    (root / "specs" / "posture.yaml").write_text("deployment: {}\n")
    assert git_info(root)["dirty"] is False
    (root / "team" / "new_model.py").write_text("import torch\n")  # never committed
    (root / "models").mkdir()
    (root / "models" / "w.pt").write_bytes(b"w")
    info = git_info(root)
    assert info["dirty"] is True
    assert info["changes"] == ["team/new_model.py"]
    sub = git_info(root / "team")  # a project in a folder of the repository
    assert sub["dirty"] is True and sub["changes"] == ["team/new_model.py"]
    states = GitStates()
    assert states.state(root / "team" / "model.py") == "committed"
    assert states.state(root / "team" / "new_model.py") == "untracked"
    assert states.state(root / "models" / "w.pt") == "ignored"
    (root / "team" / "model.py").write_text("import numpy  # changed\n")
    assert GitStates().state(root / "team" / "model.py") == "modified"
    assert GitStates().state(tmp_path / "elsewhere.py") == "not-in-git"


def test_provenance_imported_distributions_are_the_code_imports_with_versions(
    tmp_path: Path,
) -> None:
    code = tmp_path / "m.py"
    code.write_text(
        "import os\nimport numpy as np\nfrom team import helpers\n\ndef f():\n    import onnx\n"
    )
    found = imported_distributions([code], {"team"})
    assert found == {"numpy": np.__version__, "onnx": __import__("onnx").__version__}
