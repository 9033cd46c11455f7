"""Kept reference outputs: the stored file (the DVC output) wins only when its key matches;
else the build's cache; a stale stored file is named in a note, never silently used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.build import kept_reference as kept
from orchestrator.errors import BuildError


def _meta(key: str) -> dict:
    return {"key": key, "tokens": [[1, 2, 3]], "threads": 2}


def test_nothing_kept_finds_nothing(tmp_path: Path) -> None:
    assert kept.find(tmp_path, "m", "k1") is None
    assert kept.stale(tmp_path, "m", "k1") is None


def test_cache_then_store_then_the_store_is_read(tmp_path: Path) -> None:
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    cached = kept.cache(tmp_path, "m", _meta("k1"), logits)
    assert cached == tmp_path / ".edgeship" / "reference" / "m-k1.npz"
    found = kept.find(tmp_path, "m", "k1")
    assert found is not None and not found.stored and found.path == cached
    np.testing.assert_array_equal(found.first_logits, logits)

    stored = kept.store(tmp_path, "m", cached, {"key": "k1", "model": "m"})
    assert stored == tmp_path / "references" / "m" / "reference.npz"
    assert json.loads(stored.with_name("reference.json").read_text())["key"] == "k1"
    cached.unlink()  # another machine: only what DVC restored
    found = kept.find(tmp_path, "m", "k1")
    assert found is not None and found.stored and found.meta["tokens"] == [[1, 2, 3]]
    np.testing.assert_array_equal(found.first_logits, logits)


def test_a_stored_file_for_another_key_is_not_used_and_is_named(tmp_path: Path) -> None:
    logits = np.zeros((1, 4), np.float32)
    kept.store(tmp_path, "m", kept.cache(tmp_path, "m", _meta("old"), logits), {"key": "old"})
    assert kept.find(tmp_path, "m", "new") is None
    note = kept.stale(tmp_path, "m", "new")
    assert note and "references/m/reference.npz" in note and "old" in note and "new" in note
    assert "edgeship reference model=m" in note


def test_a_damaged_kept_file_is_a_clear_error(tmp_path: Path) -> None:
    path = kept.stored_path(tmp_path, "m")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a numpy archive")
    with pytest.raises(BuildError, match="not a reference file edgeship wrote"):
        kept.find(tmp_path, "m", "k")


def test_only_generative_models_have_kept_references(tmp_path: Path) -> None:
    from orchestrator.build.store_reference import compute_and_store
    from orchestrator.spec.compose import load_option

    root = Path(__file__).resolve().parents[2]
    model = load_option("model", "posture_cnn", root)
    with pytest.raises(BuildError, match="text-generation and speech-recognition"):
        compute_and_store(model, root, 2)
