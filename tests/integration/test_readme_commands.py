"""The README's commands run as written.

Every `edgeship` command in README.md and docs/*.md parses (its verb and flags exist), the
docs use one invocation style (the activated environment, no `.venv/bin/` prefixes), and
the README's fleet and events walkthroughs run command by command on a fresh copy of the
project: each
exits as the README shows (an `error:` line: a failure) and prints the lines the README
shows, numbers, hashes, addresses and times aside.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.main import build_parser
from orchestrator.sim.broker import find_mosquitto
from tests.sshd import require_sshd

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"\[|\]|\.\.\.|\||\b[A-Z]{2,}\b(?!=)")  # usage lines, not commands


def code_blocks(text: str) -> list[list[str]]:
    """The fenced code blocks of a Markdown text, as lists of lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands(lines: list[str]) -> list[str]:
    """The `edgeship` command lines of a block (console prompts stripped, continuations
    joined)."""
    out: list[str] = []
    joined = "\n".join(lines).replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.removeprefix("$ ").strip()
        if line.startswith("edgeship "):
            out.append(line)
    return out


def console_session(block: list[str]) -> list[tuple[str, list[str]]]:
    """``$ command`` lines with the output lines shown after each."""
    session: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            session.append((line[2:], []))
        elif session:
            session[-1][1].append(line)
    return session


def normal(line: str) -> str:
    """A line with what differs between runs made uniform: hashes, numbers, spacing."""
    # a rollout id's random suffix, also when it happens to have no digit ("acef")
    line = re.sub(r"(\d{8}T\d{6}-\S+-)[0-9a-f]{4}(?![0-9a-zA-Z])", r"\1H", line)
    line = re.sub(r"\d+\.\d+", "N", line)
    line = re.sub(r"(?<![0-9a-zA-Z])(?=[0-9a-f]*\d)[0-9a-f]{4,64}(?![0-9a-zA-Z])", "H", line)
    line = re.sub(r"\d+", "N", line)
    return " ".join(line.split())


def shown_lines(expected: list[str]) -> list[re.Pattern[str]]:
    """The README's output lines as patterns (``...`` inside a line matches anything)."""
    patterns = []
    for line in expected:
        text = normal(line)
        if not text or text == "...":
            continue
        parts = [re.escape(p) for p in text.split("...")]
        patterns.append(re.compile(".*".join(parts) + ("" if text.endswith("...") else "$")))
    return patterns


def test_docs_use_one_invocation_style_and_every_command_parses() -> None:
    parser = build_parser()
    checked = 0
    for doc in DOCS:
        text = doc.read_text()
        prefixed = [
            line
            for line in text.splitlines()
            if ".venv/bin/" in line and ".venv/bin/activate" not in line
        ]
        assert not prefixed, f"{doc.name}: run commands in the activated environment: {prefixed}"
        for block in code_blocks(text):
            for line in commands(block):
                if PLACEHOLDER.search(re.sub(r'"[^"]*"', "", line.split("#")[0])):
                    continue  # a usage line (NAME, [optional], a|b)
                words = shlex.split(line, comments=True)
                try:
                    parser.parse_args(words[1:])
                except SystemExit as exc:
                    pytest.fail(f"{doc.name}: `{line}` does not parse (exit {exc.code})")
                checked += 1
    assert checked >= 40, checked


def _fresh_copy(dest: Path) -> None:
    """The project as a clone has it (tracked and new files), plus the trained weights."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file() and not rel.startswith("clients/react-native/node_modules"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shutil.copytree(ROOT / "models", dest / "models")
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=dest, check=True)


def _walkthrough(title: str) -> list[tuple[str, list[str]]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"## {title}") :]
    section = section[: section.index("\n## ", 1)]
    session = [step for block in code_blocks(section) for step in console_session(block)]
    assert session and session[0][0].startswith("edgeship sim up"), session[:1]
    assert session[-1][0] == "edgeship sim down"
    return session


def _run_walkthrough(title: str, tmp_path: Path) -> Path:
    """Run the README section's console session in a fresh copy; returns the copy."""
    require_sshd()
    project = tmp_path / "edgeship"
    _fresh_copy(project)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGESHIP_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # activated
    env["EDGESHIP_KEYS_DIR"] = str(tmp_path / "keys")  # the README's scratch keys
    env["PYTHONPATH"] = str(project)
    problems: list[str] = []
    printed: dict[str, list[str]] = {}
    started = False
    try:
        for command, expected in _walkthrough(title):
            started = True
            res = subprocess.run(
                ["bash", "-c", command],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            out = res.stdout + res.stderr
            fails = any(line.startswith("error:") for line in expected)
            if (res.returncode != 0) != fails:
                problems.append(f"$ {command}\n  exit {res.returncode}\n{out[-3000:]}")
                continue
            got = [normal(line) for line in out.splitlines()]
            for pattern in shown_lines(expected):
                if not any(pattern.match(line) for line in got):
                    problems.append(f"$ {command}\n  the README shows: {pattern.pattern}")
                    printed[command] = got
    finally:
        if started:
            subprocess.run(
                ["bash", "-c", "edgeship sim down"], cwd=project, env=env, capture_output=True
            )
    outputs = "\n".join(f"$ {c}\n" + "\n".join(f"    {x}" for x in g) for c, g in printed.items())
    assert not problems, "\n".join(problems) + "\n\nprinted (normalised):\n" + outputs
    return project


@pytest.mark.integration
@pytest.mark.slow
def test_readme_fleet_walkthrough_runs_as_written(tmp_path: Path) -> None:
    project = _run_walkthrough("Rolling out to a fleet", tmp_path)
    assert (project / "trace-bed-05.html").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_readme_events_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Broker, collector, traffic, a rule's action, live status and a canary judged on its
    live events, as the README shows them."""
    if find_mosquitto() is None:
        pytest.skip("needs the mosquitto broker (apt-get install mosquitto; tools/system-deps.sh)")
    project = _run_walkthrough("Prediction events: from the bedside to an action", tmp_path)
    log = (project / ".edgeship" / "sim" / "sim" / "broker" / "collector.log").read_text()
    assert "refused 0" in log, log[-2000:]  # every event came from the device it names
    journal = sorted((project / ".edgeship" / "rollouts").glob("*.jsonl"))[-1]
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    (analysis,) = [e for e in entries if e.get("event") == "analysis"]
    assert analysis["result"] == "pass", analysis
    assert analysis["wave_figures"]["events"] >= 50 and analysis["baseline_figures"]["events"]
    # the collector (--report-every) put v1's live figures on its build's MLflow run
    from mlflow.tracking import MlflowClient

    build = json.loads((project / "bundles" / "posture_server" / "1" / "build.json").read_text())
    uri = f"sqlite:///{project / 'mlflow.db'}"
    history = MlflowClient(uri, registry_uri=uri).get_metric_history(
        build["mlflow"]["run_id"], "live_events"
    )
    assert history and max(m.value for m in history) > 0, history
