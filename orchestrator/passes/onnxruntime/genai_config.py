"""Describe an exported decoder for ONNX Runtime GenAI: ``genai_config.json`` beside it.

ONNX Runtime GenAI (``onnxruntime_genai.Model``) loads a folder whose
``genai_config.json`` names the decoder graph, its inputs and outputs (the KV cache's
names as ``%d`` patterns), its sizes and the search settings. This pass writes that file
for the graph optimum-onnx exports (``past_key_values.%d.key|value`` in,
``present.%d.key|value`` out, ``position_ids`` when the graph takes it), from the model's
``config.json``, so the same artifact runs with ONNX Runtime's own KV-cache loop or with
ONNX Runtime GenAI's generator on a device that has it. The graph and its companion
files are carried over unchanged; search is greedy, as validated.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass

CONFIG = "genai_config.json"


@dataclass
class GenaiConfigOptions:
    context_length: int = 0  # tokens the generator serves (0: config's max_position_embeddings)


def genai_config(hf: dict[str, Any], inputs: list[str], context_length: int) -> dict[str, Any]:
    """The ``genai_config.json`` of an optimum-exported decoder with a KV cache."""
    missing = [
        k
        for k in ("model_type", "hidden_size", "num_attention_heads", "num_hidden_layers")
        if k not in hf
    ]
    if missing:
        raise BuildError(f"error: config.json lacks {', '.join(missing)}")
    heads = int(hf["num_attention_heads"])
    head_size = int(hf.get("head_dim") or int(hf["hidden_size"]) // heads)
    names = {"input_ids": "input_ids"}
    for optional in ("attention_mask", "position_ids"):
        if optional in inputs:
            names[optional] = optional
    names["past_key_names"] = "past_key_values.%d.key"
    names["past_value_names"] = "past_key_values.%d.value"
    context = int(context_length or hf.get("max_position_embeddings") or 2048)

    def token(key: str, default: int) -> int:
        value = hf.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return default if value is None else int(value)

    return {
        "model": {
            "type": str(hf["model_type"]),
            "bos_token_id": token("bos_token_id", token("eos_token_id", 0)),
            "eos_token_id": token("eos_token_id", 0),
            "pad_token_id": token("pad_token_id", 0),
            "vocab_size": int(hf.get("vocab_size", 0)),
            "context_length": context,
            "decoder": {
                "filename": "model.onnx",
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "hidden_size": int(hf["hidden_size"]),
                "head_size": head_size,
                "num_attention_heads": heads,
                "num_key_value_heads": int(hf.get("num_key_value_heads") or heads),
                "num_hidden_layers": int(hf["num_hidden_layers"]),
                "inputs": names,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "max_length": context,
            "min_length": 0,
            "past_present_share_buffer": False,  # optimum's graph returns a grown cache
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


@register_pass
class OrtGenaiConfig(Pass):
    name = "ortgenai_config"
    description = "genai_config.json beside a KV-cache decoder: ONNX Runtime GenAI can load it"
    Options = GenaiConfigOptions
    runtimes = ("onnxruntime",)
    backend = "onnx"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        import onnx

        by_name = {p.name: p for p in model.extra}
        if "config.json" not in by_name:
            raise BuildError(
                "error: ortgenai_config needs the model's config.json beside the graph "
                "(the output of optimum_export_onnx)"
            )
        hf = json.loads(by_name["config.json"].read_text())
        proto = onnx.load(str(model.path), load_external_data=False)
        inits = {i.name for i in proto.graph.initializer}
        inputs = [v.name for v in proto.graph.input if v.name not in inits]
        if not any(n.startswith("past_key_values.") for n in inputs):
            raise BuildError("error: ortgenai_config: the graph has no KV-cache inputs")
        out = ctx.workdir / "model.onnx"
        shutil.copy2(model.path, out)
        extra: list[Path] = []
        for p in model.extra:
            if p.name != CONFIG:
                shutil.copy2(p, ctx.workdir / p.name)
                extra.append(ctx.workdir / p.name)
        config = ctx.workdir / CONFIG
        config.write_text(
            json.dumps(genai_config(hf, inputs, options.context_length), indent=1) + "\n"
        )
        extra.append(config)
        return ModelFile(out, "onnx", model.precision, tuple(sorted(extra)))
