"""dvc.yaml stays in step with conf/: every deployment has its stages, with the right model."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.config.loader import compose, list_options

ROOT = Path(__file__).resolve().parents[2]


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_has_spec_and_build_stage_for_every_deployment() -> None:
    stages = _stages()
    deployments = set(list_options(ROOT, "deployment"))
    assert set(stages["spec"]["foreach"]) == deployments
    assert set(stages["build"]["foreach"]) == deployments


def test_dvc_yaml_build_items_name_the_model_the_spec_uses() -> None:
    stages = _stages()
    trained = set(stages["train"]["foreach"])
    for name, item in stages["build"]["foreach"].items():
        spec = compose([f"deployment={name}"], ROOT)
        assert item["model"] == spec.choices["model"], name
        assert item["model"] in trained
        train_item = stages["train"]["foreach"][item["model"]]
        assert item["code"] == train_item["code"] and item["data"] == train_item["data"]


def test_dvc_yaml_build_depends_on_composed_spec_and_weights() -> None:
    deps = _stages()["build"]["do"]["deps"]
    assert "specs/${key}.yaml" in deps and "models/${item.model}.pt" in deps


def test_dvc_analytics_off() -> None:
    assert "analytics = false" in (ROOT / ".dvc" / "config").read_text()
