"""A build's code provenance lists the project modules its spec's files reach, not every
project module the process has loaded (builds share a process in a multirun, on a Ray
worker and under pytest)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.build.provenance import reachable_modules


def test_only_modules_reached_through_imports_are_recorded(tmp_path: Path) -> None:
    files = {
        "team/__init__.py": "",
        "team/model.py": "from . import layers\nimport numpy\n",
        "team/layers.py": "from team.util import helper\n",
        "team/util.py": "def helper():\n    return 1\n",
        "other/__init__.py": "",
        "other/llm.py": "import transformers\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    loaded = {
        rel[:-3].replace("/__init__", "").replace("/", "."): (tmp_path / rel).resolve()
        for rel in files
    }
    got = reachable_modules(loaded, [tmp_path / "team" / "model.py"])
    assert set(got) == {"team", "team.model", "team.layers", "team.util"}
    assert reachable_modules(loaded, []) == {}
