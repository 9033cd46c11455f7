"""Managed tool environments: folder naming, atomic and locked creation, clear errors.

The commands that make an environment are replaced by a fake here (fast); the one real
environment (Apache TVM, made by ``edgeship toolenv install tvm``) is checked last.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.core import toolenv
from orchestrator.errors import ExitCode, MissingDependencyError

FAKE = toolenv.ToolSpec(
    name="fake",
    what="a fake tool",
    requirements=("fakepkg==1.0",),
    probe="print('1.0')",
)


@pytest.fixture
def fake_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setitem(toolenv.TOOLS, "fake", FAKE)
    monkeypatch.setenv("EDGESHIP_TOOLENV_DIR", str(tmp_path / "envs"))
    return tmp_path / "envs"


class FakeRun:
    """Stands in for subprocess.run: `-m venv DIR` makes DIR/bin/python; the rest succeed."""

    def __init__(self, fail_at: str | None = None, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.fail_at = fail_at
        self.delay = delay

    def __call__(self, cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        time.sleep(self.delay)
        if self.fail_at and self.fail_at in " ".join(cmd):
            return subprocess.CompletedProcess(cmd, 1, "", "no matching distribution for fakepkg")
        if cmd[1:3] == ["-m", "venv"]:
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            (Path(cmd[3]) / "bin" / "python").write_text("")
        return subprocess.CompletedProcess(cmd, 0, "1.0\n", "")


def test_folder_is_named_after_the_tool_and_a_hash_of_its_pins(fake_tool: Path) -> None:
    folder = toolenv.env_dir("fake")
    assert folder.parent == fake_tool
    assert folder.name == f"fake-{FAKE.digest()}"
    other = toolenv.ToolSpec("fake", "x", ("fakepkg==2.0",), "")
    assert other.digest() != FAKE.digest()  # a changed pin is a new environment


def test_missing_environment_is_a_missing_dependency_naming_the_command(fake_tool: Path) -> None:
    assert toolenv.unavailable_reason("fake") == (
        f"no fake tool environment at {toolenv.env_dir('fake')}"
    )
    with pytest.raises(MissingDependencyError) as info:
        toolenv.toolenv("fake")
    assert info.value.exit_code == ExitCode.MISSING_DEPENDENCY
    assert "install it with: edgeship toolenv install fake" in str(info.value)
    assert str(toolenv.env_dir("fake")) in str(info.value)


def test_install_builds_in_a_temporary_folder_then_renames_it(fake_tool: Path) -> None:
    run = FakeRun()
    python = toolenv.install("fake", run=run)
    assert python == toolenv.env_dir("fake") / "bin" / "python"
    venv, pip, probe, freeze = run.calls
    tmp = Path(venv[3])
    assert tmp.name.startswith(f".fake-{FAKE.digest()}.tmp-") and not tmp.exists()
    assert pip[1:4] == ["-m", "pip", "install"] and pip[-1] == "fakepkg==1.0"
    assert probe[-1] == FAKE.probe
    record = json.loads((toolenv.env_dir("fake") / toolenv.MARKER).read_text())
    assert record["version"] == "1.0" and record["requirements"] == ["fakepkg==1.0"]
    assert freeze[1:4] == ["-m", "pip", "freeze"] and record["lock"] == ["1.0"]  # pip freeze
    assert toolenv.toolenv("fake") == python
    again = FakeRun()
    toolenv.install("fake", run=again)  # ready: nothing runs
    assert again.calls == []


def test_a_failed_install_leaves_nothing_and_says_where_it_failed(fake_tool: Path) -> None:
    with pytest.raises(toolenv.ToolEnvError) as info:
        toolenv.install("fake", run=FakeRun(fail_at="pip install"))
    assert "failed at pip install fakepkg==1.0" in str(info.value)
    assert "no matching distribution for fakepkg" in str(info.value)
    assert [p.name for p in fake_tool.iterdir()] == [f".fake-{FAKE.digest()}.lock"]
    assert toolenv.info("fake") is None


def test_concurrent_installs_build_once(fake_tool: Path) -> None:
    runs = [FakeRun(delay=0.05), FakeRun(delay=0.05)]
    threads = [
        threading.Thread(target=toolenv.install, args=("fake",), kwargs={"run": r}) for r in runs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r.calls) for r in runs) == [0, 4]  # the second found it ready
    assert toolenv.info("fake") is not None


def test_unknown_tool_names_the_known_ones() -> None:
    with pytest.raises(toolenv.ToolEnvError, match="unknown tool environment 'tvn'; expected"):
        toolenv.env_dir("tvn")


def test_cli_lists_environments(fake_tool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toolenv", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fake"]["installed"] is False
    assert rows["tvm"]["requirements"][0].startswith("apache-tvm==")
    assert main(["toolenv", "list"]) == 0
    assert "create it with: edgeship toolenv install fake" in capsys.readouterr().out


def test_the_real_tvm_environment_runs_tvm() -> None:
    reason = toolenv.unavailable_reason("tvm")
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install tvm`)")
    python = toolenv.toolenv("tvm")
    proc = subprocess.run(
        [str(python), "-c", "import tvm, onnx, numpy; print(tvm.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == (toolenv.info("tvm") or {})["version"]
