"""Atomic replacement of artifact directories."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.core.fsutil import install_dir, recover, write_json


def _make(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "f.txt").write_text(content)
    return folder


def test_install_dir_replaces_previous_version(tmp_path: Path) -> None:
    final = _make(tmp_path / "dep", "old")
    install_dir(_make(tmp_path / "stage", "new"), final)
    assert (final / "f.txt").read_text() == "new"
    assert not (tmp_path / "stage").exists()
    assert not any((tmp_path / ".trash").iterdir())


def test_install_dir_first_version(tmp_path: Path) -> None:
    install_dir(_make(tmp_path / "stage", "new"), tmp_path / "dep")
    assert (tmp_path / "dep" / "f.txt").read_text() == "new"


def test_recover_restores_directory_left_only_in_trash(tmp_path: Path) -> None:
    _make(tmp_path / ".trash" / "dep.abc123", "old")
    recover(tmp_path)
    assert (tmp_path / "dep" / "f.txt").read_text() == "old"


def test_recover_removes_staging_of_dead_builds_only(tmp_path: Path) -> None:
    dead = _make(tmp_path / ".staging" / "dep.1", "x")
    (dead / ".pid").write_text("999999999")
    alive = _make(tmp_path / ".staging" / "dep.2", "y")
    (alive / ".pid").write_text(str(os.getpid()))
    recover(tmp_path)
    assert not dead.exists() and alive.exists()


def test_write_json_leaves_no_temp_files(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
