"""dvc.yaml stays in step with conf/: its lists come from dvc-stages.yaml, which is current."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.spec.compose import compose, list_options
from orchestrator.spec.dvc_stages import STAGES_FILE, read_stage_lists, stage_lists

ROOT = Path(__file__).resolve().parents[2]


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _stages() -> dict:
    return _dvc()["stages"]


def test_dvc_yaml_runs_its_stages_over_the_lists_edgeship_dvc_writes() -> None:
    assert _dvc()["vars"] == [STAGES_FILE]
    stages = _stages()
    assert stages["train"]["foreach"] == "${models}"
    assert stages["spec"]["foreach"] == "${deployments}"
    assert stages["build"]["foreach"] == "${deployments}"
    assert stages["spec"]["do"]["cmd"].startswith("edgeship dvc --fail-if-changed && ")


def test_dvc_stages_yaml_is_current_with_conf() -> None:
    lists = read_stage_lists(ROOT)
    assert lists == stage_lists(ROOT), "dvc-stages.yaml is out of date: run `edgeship dvc`"
    assert set(lists["deployments"]) == set(list_options(ROOT, "deployment"))


def test_dvc_stages_name_the_model_the_spec_uses() -> None:
    lists = stage_lists(ROOT)
    for name, item in lists["deployments"].items():
        spec = compose([f"deployment={name}"], ROOT)
        assert item["model"] == spec.choices["model"], name
        source = spec.config.model.source
        assert item["weights"] == (source.weights or source.path)  # a model folder: its path
        generative = spec.config.model.task in ("text-generation", "speech-recognition")
        reference = f"references/{item['model']}" if generative else item["weights"]
        assert item == {
            "model": item["model"],
            "reference": reference,
            **lists["models"][item["model"]],
        }
    assert lists["models"]["posture_cnn"] == {
        "code": "examples/posture_cnn",
        "weights": "models/posture_cnn.pt",
    }


def test_dvc_yaml_build_depends_on_composed_spec_weights_and_code() -> None:
    deps = _stages()["build"]["do"]["deps"]
    assert {"specs/${key}.yaml", "${item.weights}", "${item.code}"} <= set(deps)


def test_generative_models_keep_their_reference_outputs_in_a_stage() -> None:
    lists = stage_lists(ROOT)
    assert lists["references"] == {
        "assistant_llm": {"code": "examples/assistant_llm", "weights": "models/assistant_llm"},
        "dictation_whisper": {
            "code": "examples/dictation_whisper",
            "weights": "models/dictation_whisper",
        },
    }
    stage = _stages()["reference"]
    assert stage["foreach"] == "${references}"
    assert stage["do"]["cmd"] == "edgeship reference model=${key}"
    assert stage["do"]["outs"] == ["references/${key}"]
    assert {"conf/model/${key}.yaml", "${item.weights}", "${item.code}"} <= set(stage["do"]["deps"])
    # the builds of those models depend on the kept outputs (dvc repro runs the stage first)
    assert "${item.reference}" in _stages()["build"]["do"]["deps"]
    assert lists["deployments"]["assistant_llm_nuc"]["reference"] == "references/assistant_llm"


def test_dvc_yaml_reference_stage_covers_every_module_it_imports() -> None:
    import json
    import subprocess
    import sys

    deps = [d for d in _stages()["reference"]["do"]["deps"] if "$" not in d]
    code = (
        "import json, sys\n"
        "import orchestrator.cli.main, orchestrator.cli.build\n"
        "import orchestrator.build.kept_reference, orchestrator.build.store_reference\n"
        "import orchestrator.build.generative, orchestrator.build.speech\n"
        "import orchestrator.build.sources, orchestrator.build.framework_sources\n"
        "print(json.dumps(sorted({getattr(m, '__file__', None) or '' "
        "for m in list(sys.modules.values())})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    files = [Path(f).resolve() for f in json.loads(out.strip().splitlines()[-1]) if f]
    ours = [f.relative_to(ROOT) for f in files if ROOT in f.parents and "tests" not in f.parts]
    uncovered = [
        str(f)
        for f in ours
        if str(f).startswith(("orchestrator", "targets", "registry"))
        and not any(str(f) == d or str(f).startswith(d.rstrip("/") + "/") for d in deps)
    ]
    assert not uncovered, f"reference@ stage deps miss: {uncovered}"


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
