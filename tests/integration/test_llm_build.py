"""The assistant LLM on a server: Hugging Face folder -> ONNX with KV cache (optimum-onnx, in
its tool environment) -> weight-only INT8 -> teacher-forced validation -> the device's
health check by greedy generation.

optimum-onnx lives in its own tool environment (``edgeship toolenv install optimum-onnx``);
without it these tests skip, naming the command. The model folder is trained once
(``edgeship train model=assistant_llm``) and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.build import reference
from orchestrator.core import toolenv
from orchestrator.device.agent.runners import smoke_check
from orchestrator.spec.compose import compose, load_option

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _optimum_environment(isolated: Path) -> None:
    reason = toolenv.unavailable_reason("optimum-onnx")
    if reason:
        pytest.skip(f"{reason} (create it with `edgeship toolenv install optimum-onnx`)")
    reference.ensure_weights(load_option("model", "assistant_llm", ROOT), ROOT)


def _build(overrides: list[str]) -> Path:
    from orchestrator.build.pipeline import run_build

    return run_build(compose(overrides, ROOT), record=False).artifact_dir


def test_assistant_llm_server_builds_int8_and_its_health_check_generates(
    tmp_path: Path, ssh_devices: list, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.build.pipeline import run_build

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    build = run_build(compose(["deployment=assistant_llm_server"], ROOT))
    art = build.artifact_dir
    # recorded in MLflow like any build: metrics, the prompt set as a dataset, a version
    assert build.run_id and build.model_version
    run = MlflowClient(mlflow_server).get_run(build.run_id)
    assert run.data.metrics["teacher_forced_agreement"] >= 0.95
    assert run.data.params["choice.recipe"] == "llm_int8w"
    datasets = [d.dataset.name for d in run.inputs.dataset_inputs]
    assert datasets == ["assistant_llm-prompts"], datasets
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["teacher_forced_agreement"] >= 0.95 and metrics["tokenizer_exact"] == 1.0
    assert 0 < metrics["step1_max_abs_error"] < 0.5  # weight-only INT8: close, not equal
    assert metrics["reference_perplexity"] > 1 and abs(metrics["perplexity_ratio"] - 1) < 0.05
    assert (
        metrics["tokens_per_s"] > 0 and metrics["ttft_ms"] > 0 and metrics["prompt_tokens"] == 128
    )
    runtime = json.loads((art / "runtime.json").read_text())
    assert runtime["task"] == "text-generation" and runtime["model"]["precision"] == "int8"
    assert runtime["generation"]["eos_token_id"] is not None
    # the whole model folder travels: graph, config, tokenizer, chat template, export record
    names = {Path(f).name for f in runtime["model"]["files"]}
    assert {"model.onnx", "config.json", "tokenizer.json", "export.json"} <= names
    assert "genai_config.json" in names  # ONNX Runtime GenAI can load the folder too
    export = json.loads((art / "model" / "export.json").read_text())
    assert export["toolenv"]["name"] == "optimum-onnx" and export["toolenv"]["lock"]
    assert "past_key_values.0.key" in export["inputs"] and "present.0.key" in export["outputs"]
    validation = json.loads((art / "validation.json").read_text())
    assert len(validation["details"]["generation"]["prompts"]) == 8

    health = smoke_check(str(art))
    assert health["result"] == "pass", health
    assert health["generation"]["tokens"] == health["generation"]["expected"]

    # signed and deployed to a simulated server (real sshd on loopback), whose agent checks
    # the bundle and generates before it activates the version
    from tests.sshd import ShipLab

    lab = ShipLab(tmp_path / "lab", ssh_devices[:1], art)
    name = ssh_devices[0].name
    assert lab.enroll([name]).outcomes[0].result == "enrolled"
    shipped = lab.deploy(lab.bundle(allow_dirty=True), [name]).outcomes[0]
    assert shipped.result == "activated", shipped.summary()
    assert shipped.health and shipped.health["result"] == "pass", shipped.health
    assert shipped.health["generation"]["tokens"] == shipped.health["generation"]["expected"]

    smoke = art / "smoke" / "smoke.json"
    data = json.loads(smoke.read_text())
    data["generation"]["expected_tokens"][3] += 1
    smoke.write_text(json.dumps(data))
    broken = smoke_check(str(art))
    assert broken["result"] == "fail" and "first difference at step 3" in broken["reason"]


def test_fp32_export_matches_pytorch_token_for_token() -> None:
    art = _build(["deployment=assistant_llm_server", "recipe=llm_fp32"])
    metrics = json.loads((art / "metrics.json").read_text())
    assert metrics["exact_generations"] == 1.0 and metrics["teacher_forced_agreement"] == 1.0
    assert metrics["step1_max_abs_error"] < 1e-4


def test_recipe_auto_picks_among_text_generation_recipes() -> None:
    """``recipe=auto`` on a text-generation deployment: the passing candidate with the
    fastest decoding step wins, ranked with teacher-forced agreement beside it (a CNN recipe
    named as a candidate is refused when the spec is composed)."""
    from orchestrator.build.select import run_selection

    spec = compose(
        [
            "deployment=assistant_llm_server",
            "recipe=auto",
            "recipe.candidates=[llm_fp32,llm_int8w]",
        ],
        ROOT,
    )
    result = run_selection(spec, record=False)
    by_recipe = {c.recipe: c for c in result.candidates}
    assert set(by_recipe) == {"llm_fp32", "llm_int8w"}
    passed = [c for c in result.candidates if c.status in ("passed", "winner")]
    assert result.winner is not None and result.winner.recipe in ("llm_fp32", "llm_int8w")
    assert result.parity_metric == "teacher_forced_agreement"
    assert result.error_metric == "step1_max_abs_error"
    best = min(passed, key=lambda c: c.metrics["p50_ms"])
    assert best is result.winner
    table = (result.artifact_dir / "selection" / "comparison.md").read_text()
    assert "teacher_forced_agreement" in table and "llm_int8w" in table
