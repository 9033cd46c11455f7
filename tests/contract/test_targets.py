"""The contract every registered target family keeps; a new target is tested by this code.

For each family: it has a conf/target YAML, reports its capabilities, builds the
movement classifier with a recipe it can run (its ``contract_recipe`` when it
declares one, else the first recipe under conf/recipe/ that validates for it),
loads its own artifact and reproduces the artifact's smoke output, and refuses a
recipe made for another runtime with an error naming the pass and the runtime.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.core.model_file import ModelFile
from orchestrator.errors import SpecError
from orchestrator.spec.compose import ComposedSpec, compose
from targets.base import registered_targets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = sorted(registered_targets())
DEPLOYMENT = "posture_server"  # the small model every target can run


def _target_yaml(family: str) -> str:
    for path in sorted((ROOT / "conf" / "target").glob("*.yaml")):
        if yaml.safe_load(path.read_text()).get("family") == family:
            return path.stem
    pytest.fail(f"no conf/target/*.yaml declares family {family}")


@functools.cache
def _candidates(target: str) -> tuple[list[str], dict[str, str]]:
    """Recipes this target can run (simplest first), and the reasons the others cannot.

    Simplest: ends in the target's preferred format, then fewest passes, then by name.
    """
    from orchestrator.build.select import candidate_specs
    from orchestrator.passes.base import registered_passes

    spec = compose([f"deployment={DEPLOYMENT}", f"target={target}", "recipe=auto"], ROOT)
    usable, skipped = candidate_specs(spec)
    formats = registered_targets()[spec.config.target.family].formats
    passes = registered_passes()

    def simplicity(candidate: ComposedSpec) -> tuple[int, int, str]:
        steps = candidate.config.recipe.passes
        final = passes[steps[-1].name].output_format if steps else "onnx"
        return formats.index(final), len(steps), candidate.choices["recipe"]

    ordered = sorted(usable, key=simplicity)
    return [s.choices["recipe"] for s in ordered], {c.recipe: c.message for c in skipped}


@pytest.fixture(scope="module")
def posture_weights() -> None:
    from orchestrator.build import reference
    from orchestrator.spec.compose import load_option

    reference.ensure_weights(load_option("model", "posture_cnn", ROOT), ROOT)


@pytest.fixture(autouse=True)
def _project(isolated: Path) -> Path:
    return isolated


def skip_without_tool_environment(family: str) -> None:
    """Skip a family whose runtime lives in a managed tool environment not created here."""
    from orchestrator.core import toolenv

    for name in registered_targets()[family].tool_environments:
        reason = toolenv.unavailable_reason(name)
        if reason:
            pytest.skip(f"{family}: {reason} (create it with `edgeship toolenv install {name}`)")


@pytest.mark.parametrize("family", FAMILIES)
def test_target_reports_capabilities_matching_its_yaml(family: str) -> None:
    target_name = _target_yaml(family)
    spec = compose([f"deployment={DEPLOYMENT}", f"target={target_name}", "recipe=auto"], ROOT)
    cls = registered_targets()[family]
    skip_without_tool_environment(family)
    caps = cls(spec.config.target).capabilities()
    assert caps["family"] == family
    assert caps["runtime"] == cls.runtime
    assert caps["formats"] and set(caps["formats"]) == set(cls.formats)
    assert caps["precisions"] == list(spec.config.target.precisions)
    assert cls.description and cls.install_hint
    assert cls.unavailable_reason() is None, "every family validates on this machine"


@pytest.mark.parametrize("family", FAMILIES)
def test_target_builds_loads_its_artifact_and_reproduces_the_smoke_output(
    family: str, posture_weights: None, isolated: Path
) -> None:
    from orchestrator.build.pipeline import run_build

    skip_without_tool_environment(family)
    cls = registered_targets()[family]
    target_name = _target_yaml(family)
    usable, _ = _candidates(target_name)
    recipe = getattr(cls, "contract_recipe", None) or usable[0]
    assert recipe in usable
    spec = compose(
        [
            f"deployment={DEPLOYMENT}",
            f"target={target_name}",
            f"recipe={recipe}",
            "deployment.validation.latency_runs=10",
        ],
        ROOT,
    )
    build = run_build(spec, record=False)
    art = build.artifact_dir
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["target"]["family"] == family
    assert runtime["target"]["runtime"] == cls.runtime
    assert runtime["model"]["format"] in cls.formats
    model = ModelFile(
        art / runtime["model"]["file"],
        runtime["model"]["format"],
        runtime["model"]["precision"],
        tuple(art / f for f in runtime["model"]["files"][1:] if not f.endswith(".bin")),
    )
    session = cls(spec.config.target).load(model)
    smoke = json.loads((art / "smoke" / "smoke.json").read_text())
    feed = dict(np.load(art / "smoke" / "input.npz"))
    expected = np.load(art / "smoke" / "expected.npz")
    outputs = session.run(feed)
    close = getattr(session, "close", None)
    if close is not None:
        close()
    for name, got in zip(expected.files, outputs, strict=True):
        np.testing.assert_allclose(got, expected[name], atol=smoke["atol"], rtol=smoke["rtol"])
    assert build.validation.passed


@pytest.mark.parametrize("family", FAMILIES)
def test_target_refuses_a_recipe_for_another_runtime_naming_pass_and_runtime(
    family: str,
) -> None:
    cls = registered_targets()[family]
    target_name = _target_yaml(family)
    _, skipped = _candidates(target_name)
    foreign = sorted(r for r, why in skipped.items() if "makes a model for" in why)
    assert foreign, f"every recipe runs on {family}; the contract needs one that does not"
    with pytest.raises(SpecError) as info:
        compose([f"deployment={DEPLOYMENT}", f"target={target_name}", f"recipe={foreign[0]}"])
    text = str(info.value)
    assert f"runs {cls.runtime}" in text
    assert "pass '" in text and "makes a model for" in text


@pytest.mark.parametrize(
    "family", [f for f in FAMILIES if registered_targets()[f].runtime == "tensorrt"]
)
def test_tensorrt_target_builds_and_runs_its_engine(
    family: str, posture_weights: None, isolated: Path
) -> None:
    pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installable here: no NVIDIA GPU, and its wheels come from "
        "NVIDIA's package index; the engine is built and validated on the device",
    )
    from orchestrator.build.pipeline import run_build

    target_name = _target_yaml(family)
    usable, _ = _candidates(target_name)
    recipe = getattr(registered_targets()[family], "contract_recipe", None) or usable[0]
    spec = compose([f"deployment={DEPLOYMENT}", f"target={target_name}", f"recipe={recipe}"], ROOT)
    build = run_build(spec, record=False)
    assert build.validation.metrics["engine_validated"] == 1.0
