"""Text generation on OpenVINO: the recipes' spec rules, the stateful decoding loop (a scripted
compiled model stands in for OpenVINO), the compile settings, and NNCF weight compression
on a small IR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.core.model_file import ModelFile
from orchestrator.device.agent import generate
from orchestrator.errors import SpecError
from orchestrator.spec.compose import compose

ROOT = Path(__file__).resolve().parents[2]


def _problems(overrides: list[str]) -> str:
    with pytest.raises(SpecError) as info:
        compose(overrides, ROOT)
    return str(info.value)


def test_assistant_llm_nuc_composes_with_an_openvino_recipe() -> None:
    spec = compose(["deployment=assistant_llm_nuc"], ROOT)
    assert spec.config.target.family == "intel_nuc"
    passes = [p.name for p in spec.config.recipe.passes]
    assert passes == ["optimum_intel_export_openvino", "nncf_compress_weights"]
    assert dict(spec.config.recipe.passes[1].options) == {"mode": "int8_asym"}


def test_openvino_recipes_are_refused_on_a_server_and_onnx_ones_on_the_nuc() -> None:
    text = _problems(["deployment=assistant_llm_server", "recipe=llm_ov_int8w"])
    assert "pass 'optimum_intel_export_openvino' makes a model for openvino" in text
    text = _problems(["deployment=assistant_llm_nuc", "recipe=llm_int8w"])
    assert "pass 'ort_weight_only' makes a model for onnxruntime" in text


def test_openvino_int4_needs_a_target_that_runs_it() -> None:
    text = _problems(
        ["deployment=assistant_llm_nuc", "recipe=llm_ov_int4w", "target.precisions=[fp32,int8]"]
    )
    assert "the recipe makes a int4 model; target 'intel_nuc' runs fp32, int8" in text


def test_an_unknown_compression_mode_is_refused_with_the_choices() -> None:
    text = _problems(["deployment=assistant_llm_nuc", "recipe.passes.1.options.mode=int3_sym"])
    assert "recipe.passes[1].options.mode" in text and "int4_sym" in text


def test_compression_options_that_do_not_fit_the_mode_are_refused() -> None:
    text = _problems(["deployment=assistant_llm_nuc", "+recipe.passes.1.options.group_size=64"])
    assert "recipe.passes[1].options.group_size: applies to int4 modes only; mode is int8_asym" in (
        text
    )
    text = _problems(
        [
            "deployment=assistant_llm_nuc",
            "recipe=llm_ov_int4w",
            "recipe.passes.1.options.group_size=0",
            "recipe.passes.1.options.ratio=1.5",
        ]
    )
    assert "recipe.passes[1].options.group_size: expected -1 (per channel) or 2 or more" in text
    assert "recipe.passes[1].options.ratio: expected more than 0 and at most 1, found 1.5" in text


def test_a_missing_optimum_intel_environment_stops_the_build_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.build.pipeline import _check_available
    from orchestrator.errors import MissingDependencyError
    from targets.base import get_target

    monkeypatch.setenv("EDGESHIP_TOOLENV_DIR", str(tmp_path / "envs"))
    spec = compose(["deployment=assistant_llm_nuc"], ROOT)
    target = get_target(spec.config.target, spec.config.model)
    with pytest.raises(MissingDependencyError) as info:
        _check_available(target, spec)
    assert "edgeship toolenv install optimum-intel" in str(info.value)


def test_a_generation_decoder_keeps_its_kv_cache_at_the_inference_precision() -> None:
    from targets.openvino_nuc import ov_config

    model = ModelFile(Path("openvino_model.xml"), "openvino_ir", "int8")
    config = ov_config(model, "CPU", 2, generation=True)
    assert config["INFERENCE_PRECISION_HINT"] == "f32" and config["KV_CACHE_PRECISION"] == "f32"
    assert "KV_CACHE_PRECISION" not in ov_config(model, "CPU", 2)


# -- the stateful decoding loop ------------------------------------------------------------


class _Port:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_any_name(self) -> str:
        return self.name

    def get_names(self) -> set[str]:
        return {self.name}


class _Request:
    """A stateful decoder whose next token is (last input token + 1) % vocab; it checks the
    feeds (positions continue the state, the mask covers it, beam_idx is [0])."""

    vocab = 10

    def __init__(self, logits: _Port) -> None:
        self.logits = logits
        self.state = 0  # tokens the KV cache holds
        self.resets = 0
        self.calls: list[dict[str, Any]] = []

    def reset_state(self) -> None:
        self.state = 0
        self.resets += 1

    def infer(self, feed: dict[str, np.ndarray], **_: Any) -> dict[Any, np.ndarray]:
        self.calls.append(feed)
        ids = feed["input_ids"]
        n = ids.shape[1]
        assert feed["beam_idx"].tolist() == [0]
        assert feed["attention_mask"].shape == (1, self.state + n)
        assert feed["position_ids"].tolist() == [list(range(self.state, self.state + n))]
        self.state += n
        logits = np.zeros((1, n, self.vocab), dtype=np.float32)
        logits[0, -1, (int(ids[0, -1]) + 1) % self.vocab] = 1.0
        return {self.logits: logits}


class _Compiled:
    def __init__(self, with_beam: bool = True) -> None:
        names = ["input_ids", "attention_mask", "position_ids"]
        names += ["beam_idx"] if with_beam else []
        self.inputs = [_Port(n) for n in names]
        self.outputs = [_Port("logits")]
        self.request = _Request(self.outputs[0])

    def create_infer_request(self) -> _Request:
        return self.request


def test_stateful_greedy_resets_the_state_and_feeds_one_token_a_step() -> None:
    compiled = _Compiled()
    dec = generate.OvStatefulDecoder(compiled)
    assert generate.greedy(dec, [3, 4, 5], 4)["tokens"] == [6, 7, 8, 9]
    assert [c["input_ids"].shape[1] for c in compiled.request.calls] == [3, 1, 1, 1]
    forced = generate.teacher_forced(dec, [1], [2, 9, 4, 5])  # a new prompt: state reset
    assert forced["top1"] == [2, 3, 0, 5] and compiled.request.resets == 2


def test_a_model_without_state_inputs_is_refused() -> None:
    with pytest.raises(ValueError, match="not a stateful decoder"):
        generate.OvStatefulDecoder(_Compiled(with_beam=False))


# -- NNCF weight compression on a small IR -----------------------------------------------


def _matmul_ir(path: Path) -> ModelFile:
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    x = ops.parameter([1, 64], np.float32, name="x")
    rng = np.random.default_rng(0)
    w1 = ops.constant(rng.normal(size=(64, 64)).astype(np.float32))
    w2 = ops.constant(rng.normal(size=(64, 64)).astype(np.float32))
    y = ops.matmul(ops.matmul(x, w1, False, True), w2, False, True)
    model = ov.Model([y], [x], "two_matmuls")
    path.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path / "openvino_model.xml"), compress_to_fp16=False)
    (path / "config.json").write_text("{}")
    return ModelFile(path / "openvino_model.xml", "openvino_ir", "fp32", (path / "config.json",))


@pytest.mark.parametrize(("mode", "precision"), [("int8_asym", "int8"), ("int4_sym", "int4")])
def test_nncf_compress_weights_keeps_the_name_and_companions(
    tmp_path: Path, mode: str, precision: str
) -> None:
    pytest.importorskip("nncf")
    from orchestrator.passes.base import PassContext
    from orchestrator.passes.openvino.compress_weights import (
        CompressWeightsOptions,
        NncfCompressWeights,
    )

    model = _matmul_ir(tmp_path / "in")
    work = tmp_path / "out"
    work.mkdir()
    ctx = PassContext(work, ["x"], lambda: [])
    options = CompressWeightsOptions(mode=mode, group_size=32, all_layers=True)
    out = NncfCompressWeights().run(model, options, ctx)
    assert out.path == work / "openvino_model.xml" and out.precision == precision
    assert {p.name for p in out.extra} == {"config.json", "compression.json"}
    import json

    record = json.loads((work / "compression.json").read_text())
    kinds = record["weight_constants_by_type"]
    assert kinds.get("u8" if mode == "int8_asym" else "i4"), kinds
