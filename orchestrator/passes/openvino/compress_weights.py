"""NNCF weight compression of an OpenVINO IR: INT8 or INT4 weights, float activations.

``nncf.compress_weights`` stores the weights of MatMul and embedding layers in 8 bits (one
scale, and for ``int8_asym`` one zero point, per output channel) or 4 bits in groups of
``group_size`` values along the input dimension; the layers NNCF keeps out of 4 bits (by
default the embedding and the last layer, and a ``1 - ratio`` share of the rest) get
``backup_mode``. No calibration data: data-free compression. The decoder's state (its KV
cache) and activations stay float; the device's plugin decompresses weights on the fly.

It runs after a single export, on the exported IR (one export serves every precision),
in edgeship's own environment: NNCF and OpenVINO there are the versions the optimum-intel
tool environment pins, and compressing an IR needs neither transformers nor torch. The
model's companion files (config, tokenizer IRs, export record) travel along; the IR keeps
its name (``openvino_model.xml``) so that OpenVINO GenAI loads the folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.passes.base import Pass, PassContext, register_pass

MODES = ("int8_asym", "int8_sym", "int4_sym", "int4_asym")
INT4_ONLY = ("group_size", "ratio", "backup_mode", "all_layers")
RECORD = "compression.json"


@dataclass
class CompressWeightsOptions:
    mode: str = field(default="int8_asym", metadata={"choices": MODES})
    # weight type: int8 per output channel, int4 in groups (sym: scales only; asym: zero points)
    group_size: int = 32  # int4 only: values per group along the input dimension (-1: per channel)
    ratio: float = 1.0  # int4 only: share of the layers in 4 bits; the rest in backup_mode
    backup_mode: str = field(
        default="int8_asym", metadata={"choices": ("int8_asym", "int8_sym", "none")}
    )  # int4 only: the layers kept out of 4 bits (embedding, last layer, 1 - ratio)
    all_layers: bool = False  # int4 only: the embedding and last layer in 4 bits too


@register_pass
class NncfCompressWeights(Pass):
    name = "nncf_compress_weights"
    description = "NNCF weight compression of an OpenVINO IR: INT8 or INT4 weights (data-free)"
    Options = CompressWeightsOptions
    input_formats = ("openvino_ir",)
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    backend = "nncf"

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        mode = str(options.get("mode", "int8_asym"))
        found = []
        if not mode.startswith("int4"):
            for name in INT4_ONLY:
                if name in options:
                    found.append((name, f"applies to int4 modes only; mode is {mode}"))
            return found
        group = options.get("group_size", 32)
        if group != -1 and group < 2:
            found.append(("group_size", f"expected -1 (per channel) or 2 or more, found {group}"))
        ratio = options.get("ratio", 1.0)
        if not 0 < ratio <= 1:
            found.append(("ratio", f"expected more than 0 and at most 1, found {ratio}"))
        return found

    def output_precision(self, options: Any, current: str) -> str:
        return "int4" if options.mode.startswith("int4") else "int8"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ov = require("openvino")
        nncf = require("nncf")
        net = ov.Core().read_model(str(model.path))
        kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode[options.mode.upper()]}
        if options.mode.startswith("int4"):
            kwargs.update(
                group_size=int(options.group_size),
                ratio=float(options.ratio),
                all_layers=bool(options.all_layers),
                backup_mode=nncf.BackupMode[options.backup_mode.upper()],
            )
        with third_party_output("nncf", ("nncf",), stderr=True):
            compressed = nncf.compress_weights(net, **kwargs)
        out = ctx.workdir / model.path.name
        ov.save_model(compressed, str(out), compress_to_fp16=False)
        extra = []
        for p in model.extra:
            shutil.copy2(p, ctx.workdir / p.name)
            extra.append(ctx.workdir / p.name)
        counts: dict[str, int] = {}
        for op in compressed.get_ops():
            if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) >= 2:
                kind = op.get_output_element_type(0).get_type_name()
                counts[kind] = counts.get(kind, 0) + 1
        record = ctx.workdir / RECORD
        record.write_text(
            json.dumps(
                {
                    "tool": "nncf.compress_weights",
                    "nncf": str(getattr(nncf, "__version__", "")),
                    "openvino": str(ov.get_version()),
                    "arguments": {k: getattr(v, "value", v) for k, v in kwargs.items()},
                    "weight_constants_by_type": counts,
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        extra.append(record)
        precision = self.output_precision(options, model.precision)
        return ModelFile(out, "openvino_ir", precision, tuple(sorted(set(extra))))
