"""onnxruntime-genai's model builder as a pass (``ortgenai_build``) and the build's
measurement with onnxruntime-genai: option rules and their texts, the builder's command,
the errors a failed builder gives, and the comparison of generations that stop at
end-of-sequence (no tool environment, no model: the builder is a scripted subprocess)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.build import generative
from orchestrator.core import toolenv
from orchestrator.device.agent import generate
from orchestrator.errors import BuildError, MissingDependencyError, SpecError
from orchestrator.passes.base import PassContext, make_options, registered_passes
from orchestrator.spec.compose import compose

ROOT = Path(__file__).resolve().parents[2]


def _problems(overrides: list[str]) -> str:
    with pytest.raises(SpecError) as info:
        compose(["deployment=assistant_llm_server", *overrides], ROOT)
    return str(info.value)


def test_genai_recipes_compose_for_the_server() -> None:
    for recipe, precision in (
        ("llm_genai_fp32", "fp32"),
        ("llm_genai_int8w", "int8"),
        ("llm_genai_int4w", "int4"),
    ):
        spec = compose(["deployment=assistant_llm_server", f"recipe={recipe}"], ROOT)
        (only,) = spec.config.recipe.passes
        assert only.name == "ortgenai_build" and only.options["precision"] == precision


def test_ortgenai_build_refuses_an_unknown_precision_with_the_choices() -> None:
    text = _problems(["recipe=llm_genai_fp32", "recipe.passes.0.options.precision=fp16"])
    assert "recipe.passes[0].options.precision: unknown value 'fp16'" in text
    assert "expected one of: fp32, int4, int8" in text


def test_ortgenai_build_refuses_block_options_at_fp32() -> None:
    text = _problems(
        [
            "recipe=llm_genai_fp32",
            "+recipe.passes.0.options.block_size=64",
            "+recipe.passes.0.options.algorithm=rtn",
        ]
    )
    for option in ("block_size", "algorithm"):
        assert (
            f"recipe.passes[0].options.{option}: applies to int8 and int4 only; precision is fp32"
            in text
        )
    text = _problems(["recipe=llm_genai_int4w", "recipe.passes.0.options.algorithm=gptq"])
    assert "recipe.passes[0].options.algorithm: unknown value 'gptq'" in text


def test_ortgenai_build_refuses_a_block_size_or_accuracy_level_the_builder_lacks() -> None:
    text = _problems(
        [
            "recipe=llm_genai_int4w",
            "recipe.passes.0.options.block_size=48",
            "recipe.passes.0.options.accuracy_level=7",
        ]
    )
    assert (
        "recipe.passes[0].options.block_size: expected one of 16, 32, 64, 128, 256, found 48"
        in text
    )
    assert "recipe.passes[0].options.accuracy_level: expected 1 to 4, found 7" in text


def test_genai_int4_needs_a_target_that_runs_it() -> None:
    text = _problems(["recipe=llm_genai_int4w", "target.precisions=[fp32,int8]"])
    assert "the recipe makes a int4 model; target 'server' runs fp32, int8" in text


def test_a_missing_ort_genai_environment_stops_the_build_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.build.pipeline import _check_available
    from targets.base import get_target

    monkeypatch.setenv("EDGESHIP_TOOLENV_DIR", str(tmp_path / "envs"))
    spec = compose(["deployment=assistant_llm_server", "recipe=llm_genai_fp32"], ROOT)
    target = get_target(spec.config.target, spec.config.model)
    with pytest.raises(MissingDependencyError) as info:
        _check_available(target, spec)
    assert "edgeship toolenv install ort-genai" in str(info.value)


def _pass_and_options(**raw: Any) -> tuple[Any, Any]:
    cls = registered_passes()["ortgenai_build"]
    return cls(), make_options(cls, raw)


def test_builder_command_names_precision_execution_provider_and_int4_blocks(
    tmp_path: Path,
) -> None:
    from orchestrator.passes.onnxruntime.genai_build import builder_command

    _, fp32 = _pass_and_options(precision="fp32")
    argv = builder_command(tmp_path / "in", tmp_path / "out", tmp_path / "cache", fp32)
    assert argv[:2] == ["-m", "onnxruntime_genai.models.builder"]
    assert argv[argv.index("-p") + 1] == "fp32" and argv[argv.index("-e") + 1] == "cpu"
    assert "--extra_options" not in argv
    _, int4 = _pass_and_options(precision="int4", block_size=64, accuracy_level=1)
    argv = builder_command(tmp_path / "in", tmp_path / "out", tmp_path / "cache", int4)
    extra = argv[argv.index("--extra_options") + 1 :]
    assert extra == ["block_size=64", "accuracy_level=1"]
    _, last = _pass_and_options(precision="int4", algorithm="k_quant_last")
    argv = builder_command(tmp_path / "in", tmp_path / "out", tmp_path / "cache", last)
    assert argv[-1] == "algo_config=k_quant_last"


def test_a_failed_builder_names_the_pass_the_precision_and_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.core.model_file import ModelFile

    def failing(name: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert name == "ort-genai"
        return subprocess.CompletedProcess(
            argv, 1, "", "Traceback ...\nNotImplementedError: The tiny model is not supported\n"
        )

    monkeypatch.setattr(toolenv, "run_python", failing)
    step, options = _pass_and_options(precision="int4")
    ctx = PassContext(workdir=tmp_path, input_names=[], calibration=list, threads=1)
    with pytest.raises(BuildError) as info:
        step.run(ModelFile(tmp_path / "folder", "huggingface"), options, ctx)
    text = str(info.value)
    assert text.startswith("error: ortgenai_build: onnxruntime-genai's model builder failed on")
    assert "(-p int4 -e cpu; exit 1) in the ort-genai tool environment" in text
    assert text.endswith("NotImplementedError: The tiny model is not supported")


def test_a_builder_past_its_timeout_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.core.model_file import ModelFile

    def slow(name: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(toolenv, "run_python", slow)
    step, options = _pass_and_options(precision="fp32", timeout=5)
    ctx = PassContext(workdir=tmp_path, input_names=[], calibration=list, threads=1)
    with pytest.raises(
        BuildError,
        match=r"ortgenai_build: onnxruntime-genai's model builder ran "
        r"past 5 s \(options.timeout\)",
    ):
        step.run(ModelFile(tmp_path / "folder", "huggingface"), options, ctx)


def test_genai_measurement_is_skipped_and_says_why_without_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESHIP_TOOLENV_DIR", str(tmp_path / "envs"))
    prompts = generative.Prompts(["a"], ["a"], [[1, 2]], None, "x")
    assert generative.measure_genai(tmp_path, prompts, {"prompts": []}, 1, 0) is None
    (tmp_path / "genai_config.json").write_text("{}")
    got = generative.measure_genai(tmp_path, prompts, {"prompts": []}, 1, 0)
    assert got is not None and got["available"] is False
    assert "edgeship toolenv install ort-genai" in got["reason"]


def test_a_generation_that_stops_at_end_of_sequence_equals_the_loops_prefix() -> None:
    assert generate.same_until_eos([4, 5, 2], [4, 5, 2, 7, 7], eos=2)
    assert generate.same_until_eos([4, 5, 6], [4, 5, 6], eos=None)
    assert not generate.same_until_eos([4, 5, 2], [4, 6, 2, 7], eos=2)
    assert not generate.same_until_eos([4, 5], [4, 5, 6], eos=2)  # stopped, not at eos


class _Meta:
    def __init__(self, name: str, shape: list[Any], type_: str = "tensor(float)") -> None:
        self.name, self.shape, self.type = name, shape, type_


class BuilderSession:
    """A decoder shaped like the model builder's: no position_ids, the head size symbolic
    (``kv_cache_dim``); next token = (last input token + 1) % 10."""

    def __init__(self) -> None:
        self.feeds: list[dict[str, np.ndarray]] = []

    def get_inputs(self) -> list[_Meta]:
        cache = ["batch_size", 2, "past_sequence_length", "kv_cache_dim"]
        return [
            _Meta("input_ids", ["batch_size", "sequence_length"], "tensor(int64)"),
            _Meta("attention_mask", ["batch_size", "total_sequence_length"], "tensor(int64)"),
            _Meta("past_key_values.0.key", cache),
            _Meta("past_key_values.0.value", cache),
        ]

    def get_outputs(self) -> list[_Meta]:
        return [_Meta("logits", []), _Meta("present.0.key", []), _Meta("present.0.value", [])]

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(feed)
        ids, past = feed["input_ids"], feed["past_key_values.0.key"]
        assert past.shape[3] == 8 and feed["attention_mask"].shape == (
            1,
            past.shape[2] + ids.shape[1],
        )
        logits = np.zeros((1, ids.shape[1], 10), dtype=np.float32)
        logits[0, -1, (int(ids[0, -1]) + 1) % 10] = 1.0
        grown = np.zeros((1, 2, past.shape[2] + ids.shape[1], 8), dtype=np.float32)
        return [logits, grown, grown]


def test_the_loop_drives_a_builder_graph_with_the_head_size_of_its_genai_config(
    tmp_path: Path,
) -> None:
    import json

    with pytest.raises(ValueError, match="no static heads/head dims"):
        generate.KvDecoder(BuilderSession())
    (tmp_path / "genai_config.json").write_text(
        json.dumps({"model": {"decoder": {"num_key_value_heads": 2, "head_size": 8}}})
    )
    dims = generate.cache_dims(str(tmp_path))
    assert dims == (2, 8) and generate.cache_dims(str(tmp_path / "none")) is None
    session = BuilderSession()
    out = generate.greedy(generate.KvDecoder(session, dims), [3, 4], 3)
    assert out["tokens"] == [5, 6, 7]
    assert all("position_ids" not in f for f in session.feeds)
