"""Spec composition and the schema check (no builds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.core.schema import ModelConfig
from orchestrator.core.typecheck import check_dataclass, closest
from orchestrator.errors import SpecError
from orchestrator.spec.compose import compose, list_options, load_option, split_sweeps

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (
    "posture_server",
    "posture_nuc",
    "posture_phone",
    "ct_seg_server",
    "ct_seg_nuc",
    "ct_seg_jetson",
)


@pytest.mark.parametrize("name", SHIPPED)
def test_compose_shipped_deployment_is_valid(name: str) -> None:
    spec = compose([f"deployment={name}"], ROOT)
    assert spec.config.deployment.name == name
    assert spec.config.deployment.gates
    assert set(spec.choices) == {"model", "recipe", "target", "deployment"}


def test_compose_command_line_group_choice_beats_deployment_default() -> None:
    spec = compose(["deployment=ct_seg_nuc", "recipe=ov_fp16", "target.threads=1"], ROOT)
    assert spec.choices["recipe"] == "ov_fp16"
    assert spec.config.recipe.passes[0].options == {"compress_to_fp16": True}
    assert spec.config.target.threads == 1


def test_compose_typed_result_has_dataclasses() -> None:
    spec = compose(["deployment=posture_server"], ROOT)
    assert spec.config.model.inputs[0].shape == [1, 6, 100]
    assert spec.config.model.data.calibration is not None


def test_split_sweeps_expands_cartesian_product() -> None:
    jobs = split_sweeps(["deployment=a,b", "target.threads=1,2", "x=3"])
    assert jobs == [
        ["deployment=a", "target.threads=1", "x=3"],
        ["deployment=a", "target.threads=2", "x=3"],
        ["deployment=b", "target.threads=1", "x=3"],
        ["deployment=b", "target.threads=2", "x=3"],
    ]


def test_compose_sweep_without_multirun_is_an_error() -> None:
    with pytest.raises(SpecError, match="is a sweep; run it with -m"):
        compose(["deployment=posture_server,posture_nuc"], ROOT)


def test_list_options_lists_yaml_stems() -> None:
    assert set(SHIPPED) <= set(list_options(ROOT, "deployment"))
    assert list_options(ROOT, "no_such_group") == []


def test_load_option_model_alone() -> None:
    model = load_option("model", "ct_seg", ROOT)
    assert isinstance(model, ModelConfig)
    assert model.labels[0] == "background"


@dataclass
class _Inner:
    n: int = 1


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)
    items: list[float] = field(default_factory=list)


def test_check_dataclass_reports_every_problem() -> None:
    found: list[tuple[str, str]] = []
    data = {"name": 3, "inner": {"n": "one", "m": 2}, "items": [1, "a"], "extra": True}
    check_dataclass(data, _Outer, "root", lambda k, m: found.append((k, m)))
    keys = [k for k, _ in found]
    assert keys == ["root.extra", "root.name", "root.inner.m", "root.inner.n", "root.items[1]"]


def test_check_dataclass_bool_is_not_an_int() -> None:
    found: list[str] = []
    check_dataclass({"n": True}, _Inner, "", lambda k, m: found.append(m))
    assert found == ["expected int, found bool true"]


def test_closest_suggests_only_near_names() -> None:
    assert closest("posture_srv", ["posture_server", "ct_seg_nuc"]) == "posture_server"
    assert closest("zzz", ["posture_server"]) is None


def test_compose_checks_candidates_of_the_given_root_when_run_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    project = tmp_path / "project"
    shutil.copytree(ROOT / "conf", project / "conf")
    auto = project / "conf" / "recipe" / "auto.yaml"
    auto.write_text(auto.read_text().replace("candidates: []", "candidates: [ort_fp32, nope]"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not inside any project, and no $EDGESHIP_ROOT
    monkeypatch.delenv("EDGESHIP_ROOT", raising=False)
    with pytest.raises(SpecError) as info:
        compose(["deployment=ct_seg_server", "recipe=auto"], project)
    assert "recipe.candidates[1]: unknown recipe 'nope'" in str(info.value)
