"""dvc.yaml stays in step with conf/: every deployment has its stages, with the right model."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.spec.compose import compose, list_options

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


# What `edgeship build` runs: the CLI entry, the verb's module and everything it loads while it
# builds (every pass and target is discovered, so all of them count). The other verb modules are
# imported only to add their parsers, and are left out here.
_BUILD_IMPORTS = """
import json, sys
import orchestrator.cli.main, orchestrator.cli.build
import orchestrator.build.pipeline, orchestrator.build.select
from orchestrator.passes.base import registered_passes
from targets.base import registered_targets
registered_passes(); registered_targets()
print(json.dumps(sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})))
"""


def test_dvc_yaml_build_stage_covers_every_module_a_build_imports() -> None:
    import json
    import subprocess
    import sys

    deps = [d for d in _stages()["build"]["do"]["deps"] if "$" not in d]
    out = subprocess.run(
        [sys.executable, "-c", _BUILD_IMPORTS], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    files = [Path(f) for f in json.loads(out) if f]
    ours = [f.relative_to(ROOT) for f in files if f.is_relative_to(ROOT / "orchestrator")]
    ours += [f.relative_to(ROOT) for f in files if f.is_relative_to(ROOT / "targets")]
    ours += [f.relative_to(ROOT) for f in files if f.is_relative_to(ROOT / "registry")]
    assert any(str(f).startswith("orchestrator/build/") for f in ours)
    uncovered = [
        str(f)
        for f in ours
        if not any(str(f) == d or str(f).startswith(d.rstrip("/") + "/") for d in deps)
    ]
    assert not uncovered, (
        f"modules a build imports that no dependency of dvc.yaml's build covers: {uncovered}"
    )
