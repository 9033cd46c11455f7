"""Text generation: the spec rules, the KV-cache decoding loop and the parity figures
(no model, no runtime: a scripted session stands in for ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.build import generative
from orchestrator.device.agent import generate
from orchestrator.errors import BuildError, SpecError
from orchestrator.spec.compose import compose
from orchestrator.spec.gates import measured_metrics

ROOT = Path(__file__).resolve().parents[2]


def _problems(overrides: list[str]) -> str:
    with pytest.raises(SpecError) as info:
        compose(["deployment=assistant_llm_server", *overrides], ROOT)
    return str(info.value)


def test_assistant_llm_server_composes_with_generation_settings() -> None:
    spec = compose(["deployment=assistant_llm_server"], ROOT)
    gen = spec.config.model.generation
    assert spec.config.model.task == "text-generation" and gen is not None
    assert (gen.decoding, gen.max_new_tokens, gen.max_context) == ("greedy", 32, 512)
    passes = [p.name for p in spec.config.recipe.passes]
    assert passes == ["optimum_export_onnx", "ort_weight_only", "ortgenai_config"]


def test_generation_settings_that_exceed_the_context_are_refused() -> None:
    text = _problems(["model.generation.prompt_tokens=500", "model.generation.health_tokens=40"])
    assert "model.generation.prompt_tokens: prompt_tokens + max_new_tokens = 532 exceeds" in text
    assert "model.generation.health_tokens: expected at most max_new_tokens (32), found 40" in text


def test_greedy_is_the_only_decoding() -> None:
    assert "model.generation.decoding: unknown value 'sample'" in _problems(
        ["model.generation.decoding=sample"]
    )


def test_text_generation_needs_its_settings_and_a_hugging_face_folder() -> None:
    text = _problems(["~model.generation"])
    assert "model.generation: expected the generation settings of a text-generation model" in text


def test_generation_settings_belong_to_text_generation_only() -> None:
    text = _problems(["model.task=classification"])
    assert "model.generation: expected no generation settings for a classification model" in text


def test_text_generation_recipe_must_start_from_the_folder() -> None:
    text = _problems(["recipe=ort_fp32"])
    assert "a text-generation model is exported with its KV cache by a first pass" in text


def test_int4_needs_a_target_that_runs_it() -> None:
    text = _problems(["recipe=llm_int4w", "target.precisions=[fp32,int8]"])
    assert "the recipe makes a int4 model; target 'server' runs fp32, int8" in text


def test_text_generation_metrics_can_be_gated() -> None:
    names = measured_metrics("text-generation", [])
    for metric in ("teacher_forced_agreement", "first_divergence", "ttft_ms", "tokens_per_s"):
        assert metric in names
    assert "step1_max_abs_error" in names and "peak_memory_mb" in names


# -- the decoding loop -----------------------------------------------------------------------------


class _Meta:
    def __init__(self, name: str, shape: list[Any], type_: str = "tensor(float)") -> None:
        self.name, self.shape, self.type = name, shape, type_


class ScriptedSession:
    """A decoder whose next token is always (last input token + 1) % vocab; it checks the
    feeds a KV-cache loop must give (cache length, positions, mask)."""

    vocab = 10

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get_inputs(self) -> list[_Meta]:
        return [
            _Meta("input_ids", ["batch", "seq"], "tensor(int64)"),
            _Meta("attention_mask", ["batch", "total"], "tensor(int64)"),
            _Meta("position_ids", ["batch", "seq"], "tensor(int64)"),
            _Meta("past_key_values.0.key", ["batch", 2, "past", 4]),
            _Meta("past_key_values.0.value", ["batch", 2, "past", 4]),
        ]

    def get_outputs(self) -> list[_Meta]:
        return [_Meta("logits", []), _Meta("present.0.key", []), _Meta("present.0.value", [])]

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append(feed)
        ids = feed["input_ids"]
        past = feed["past_key_values.0.key"].shape[2]
        assert feed["attention_mask"].shape == (1, past + ids.shape[1])
        assert feed["position_ids"].tolist() == [list(range(past, past + ids.shape[1]))]
        logits = np.zeros((1, ids.shape[1], self.vocab), dtype=np.float32)
        logits[0, -1, (int(ids[0, -1]) + 1) % self.vocab] = 1.0
        grown = np.zeros((1, 2, past + ids.shape[1], 4), dtype=np.float32)
        return [logits, grown, grown]


def test_greedy_feeds_the_cache_and_one_token_a_step() -> None:
    session = ScriptedSession()
    dec = generate.KvDecoder(session)
    out = generate.greedy(dec, [3, 4, 5], 4)
    assert out["tokens"] == [6, 7, 8, 9]
    assert [c["input_ids"].shape[1] for c in session.calls] == [3, 1, 1, 1]
    assert len(out["steps_ms"]) == 3 and out["ttft_ms"] >= 0


def test_greedy_stops_after_end_of_sequence() -> None:
    assert generate.greedy(generate.KvDecoder(ScriptedSession()), [5], 8, eos=7)["tokens"] == [
        6,
        7,
    ]


def test_teacher_forcing_feeds_the_reference_tokens() -> None:
    dec = generate.KvDecoder(ScriptedSession())
    forced = generate.teacher_forced(dec, [1], [2, 9, 4, 5])
    # fed 2 -> 3 (the reference says 9), fed 9 -> 0 (4), fed 4 -> 5 (5)
    assert forced["top1"] == [2, 3, 0, 5]
    assert generate.agreement(forced["top1"], [2, 9, 4, 5]) == (0.5, 1)
    assert generate.agreement([1, 2], [1, 2]) == (1.0, -1)


def test_a_graph_without_a_kv_cache_is_refused() -> None:
    class Plain(ScriptedSession):
        def get_inputs(self) -> list[_Meta]:
            return [_Meta("input_ids", ["batch", "seq"], "tensor(int64)")]

    with pytest.raises(ValueError, match="not a decoder with a KV cache"):
        generate.KvDecoder(Plain())


def test_parity_metrics_count_steps_and_the_first_divergence() -> None:
    prompts = generative.Prompts(["a", "b"], ["a", "b"], [[1], [2]], None, "x")
    ref = generative.GenerationReference(
        [[5, 6, 7, 8], [3, 4]],
        np.zeros((2, 10), dtype=np.float32),
        100.0,
        1.0,
        False,
        Path("ref.npz"),
    )
    logits = [0.0] * 10
    measured = {
        "prompts": [
            {"top1": [5, 6, 0, 8], "greedy": [5, 6, 0, 1], "first_logits": logits},
            {"top1": [3, 4], "greedy": [3, 4], "first_logits": [0.25, *logits[1:]]},
        ]
    }
    metrics, per_prompt = generative.parity_metrics(measured, ref, prompts, 32)
    assert metrics["teacher_forced_agreement"] == 5 / 6
    assert metrics["min_teacher_forced_agreement"] == 0.75
    assert metrics["first_divergence"] == 2.0
    assert metrics["exact_generations"] == 0.5
    assert metrics["step1_max_abs_error"] == metrics["max_abs_error"] == 0.25
    assert per_prompt[1]["first_divergence"] == -1


def test_ttft_prompt_is_built_to_the_stated_length() -> None:
    prompts = generative.Prompts(["a"], ["a"], [[1, 2, 3]], None, "x")
    assert generative.ttft_prompt(prompts, 7) == [1, 2, 3, 1, 2, 3, 1]
    assert generative.ttft_prompt(prompts, 0) == [1, 2, 3]


def test_genai_config_names_optimums_cache_and_the_model_sizes() -> None:
    from orchestrator.passes.onnxruntime.genai_config import genai_config

    hf = {
        "model_type": "qwen3",
        "hidden_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_hidden_layers": 4,
        "vocab_size": 584,
        "eos_token_id": 2,
        "bos_token_id": None,
        "pad_token_id": 0,
        "max_position_embeddings": 512,
    }
    inputs = ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    config = genai_config(hf, inputs, 0)
    decoder = config["model"]["decoder"]
    assert decoder["inputs"] == {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "position_ids": "position_ids",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    assert decoder["outputs"]["present_key_names"] == "present.%d.key"
    assert (decoder["head_size"], decoder["num_key_value_heads"]) == (32, 2)
    assert config["model"]["context_length"] == 512 and config["model"]["bos_token_id"] == 2
    assert config["search"]["do_sample"] is False
    assert "position_ids" not in genai_config(hf, inputs[:2], 64)["model"]["decoder"]["inputs"]


def test_a_missing_tool_environment_stops_the_build_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.build.pipeline import _check_available
    from orchestrator.errors import MissingDependencyError
    from targets.base import get_target

    monkeypatch.setenv("EDGESHIP_TOOLENV_DIR", str(tmp_path / "envs"))
    spec = compose(["deployment=assistant_llm_server"], ROOT)
    target = get_target(spec.config.target, spec.config.model)
    with pytest.raises(MissingDependencyError) as info:
        _check_available(target, spec)
    assert "edgeship toolenv install optimum-onnx" in str(info.value)


def test_negative_log_likelihood_scores_every_token_after_the_first() -> None:
    # the scripted decoder's logits are zero (uniform over 10 tokens) except at the last
    # position, which predicts nothing of the sequence
    total, count = generate.negative_log_likelihood(
        generate.KvDecoder(ScriptedSession()), [[1, 2, 3], [4]]
    )
    assert count == 2 and total == pytest.approx(2 * np.log(10))


def test_heldout_pairs_are_rendered_as_chat_exchanges() -> None:
    from orchestrator.core.schema import CallableRef

    class Tok:
        def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool) -> str:
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

        def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
            return {"input_ids": [len(part) for part in text.split("|")]}

    spec = compose(["deployment=assistant_llm_server"], ROOT)
    model = spec.config.model
    assert model.generation is not None and model.generation.heldout is not None
    model.generation.heldout = CallableRef(fn="builtins:list", args={})
    with pytest.raises(BuildError, match=r"model\.generation\.heldout: expected a non-empty list"):
        generative.heldout_ids(model, Tok())
    model.generation.heldout = CallableRef(
        fn="examples.assistant_llm.data:heldout", args={"count": 2}
    )
    ids = generative.heldout_ids(model, Tok())  # system, user and assistant turns each
    assert len(ids) == 2 and all(len(seq) == 3 for seq in ids)
    model.generation.heldout = None
    assert generative.heldout_ids(model, Tok()) == []
