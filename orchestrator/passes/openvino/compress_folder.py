"""NNCF weight compression of every OpenVINO model in a model folder (data-free).

Takes an OpenVINO IR model whose files form a folder (an OpenVINO GenAI folder: Whisper's
encoder and decoder, an LLM's ``openvino_model.xml``, with their tokenizer IRs, configs
and tokenizer files) and writes the same folder with the weights of every model IR
compressed by ``nncf.compress_weights``: INT8 per output channel (``int8_sym`` or
``int8_asym``) or INT4 in groups (``int4_sym`` / ``int4_asym``, ``group_size``, a
``ratio`` of the layers in INT4 and the rest in INT8). Activations, the KV cache and the
tokenizer / detokenizer IRs (``*tokenizer*.xml``, string operations) are left as they
are; every other file is copied unchanged.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass

MODES = ("int8_sym", "int8_asym", "int4_sym", "int4_asym")
RECORD = "compression.json"


@dataclass
class CompressFolderOptions:
    mode: str = field(default="int8_sym", metadata={"choices": MODES})  # weight format
    group_size: int = 128  # int4: weights per scale (-1: per output channel)
    ratio: float = 1.0  # int4: share of the layers in INT4 (the rest INT8), in (0, 1]


def is_model_ir(name: str) -> bool:
    """An IR with weights to compress (tokenizer and detokenizer IRs are not)."""
    return name.endswith(".xml") and "tokenizer" not in name


@register_pass
class NncfCompressFolder(Pass):
    name = "nncf_compress_folder"
    description = "NNCF weight compression (INT8 / INT4, data-free) of every model IR in a folder"
    Options = CompressFolderOptions
    input_formats = ("openvino_ir",)
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    backend = "nncf"

    def output_precision(self, options: Any, current: str) -> str:
        return "int4" if options.mode.startswith("int4") else "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ov = require("openvino")
        nncf = require("nncf")
        if options.mode.startswith("int4") and not 0.0 < options.ratio <= 1.0:
            raise BuildError(
                f"error: nncf_compress_folder: ratio must be in (0, 1], found {options.ratio}"
            )
        out = ctx.workdir / "openvino"
        out.mkdir()
        files = model.files()
        models = [p for p in files if is_model_ir(p.name)]
        if not models:
            raise BuildError(
                f"error: nncf_compress_folder: no model IR among {[p.name for p in files]}"
            )
        kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode(options.mode)}
        if options.mode.startswith("int4"):
            kwargs.update(group_size=options.group_size, ratio=options.ratio)
        core = ov.Core()
        record: dict[str, Any] = {"mode": options.mode, "models": {}}
        for xml in models:
            compressed = nncf.compress_weights(core.read_model(str(xml)), **kwargs)
            ov.save_model(compressed, str(out / xml.name), compress_to_fp16=False)
            record["models"][xml.name] = {
                "before_bytes": xml.with_suffix(".bin").stat().st_size,
                "after_bytes": (out / xml.name).with_suffix(".bin").stat().st_size,
            }
        if options.mode.startswith("int4"):
            record.update(group_size=options.group_size, ratio=options.ratio)
        record["nncf"] = getattr(nncf, "__version__", None)
        skip = {p.name for p in models} | {p.with_suffix(".bin").name for p in models}
        for p in files:
            if p.name not in skip and p.name != RECORD:
                shutil.copy2(p, out / p.name)
        (out / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        primary = out / model.path.name
        extra = tuple(
            sorted(
                p
                for p in out.iterdir()
                if p.is_file() and p not in (primary, primary.with_suffix(".bin"))
            )
        )
        return ModelFile(
            primary, "openvino_ir", self.output_precision(options, model.precision), extra
        )
