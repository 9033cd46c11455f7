"""Export a Hugging Face folder to OpenVINO IR with optimum-intel, stateful, with its tokenizer.

The recipe's first pass of a ``text-generation`` model for OpenVINO: it takes the model
folder (``model.source.path``, format ``huggingface``) and writes ``openvino_model.xml``
(+ ``.bin``), one stateful decoder (optimum-intel's ``text-generation-with-past``: the KV
cache is the model's internal state, ``input_ids``, ``attention_mask``, ``position_ids`` and
``beam_idx`` in, ``logits`` out), weights at FP32 (no compression at export: NNCF
``compress_weights`` is a pass after it, so one export serves every precision), and the
tokenizer converted by openvino_tokenizers (``openvino_tokenizer.xml``,
``openvino_detokenizer.xml``). The folder's config, generation config and tokenizer files
travel beside it, so the artifact is a folder OpenVINO GenAI's ``LLMPipeline`` loads.

optimum-intel runs in its own tool environment (``edgeship toolenv install optimum-intel``);
the pass records the exporter's versions and that environment's lock in ``export.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import optimum_intel_worker, toolenv
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import HF_FOLDER, Pass, PassContext, register_pass
from orchestrator.passes.optimum.export_onnx import folder_companions, write_export_record

TOOL = "optimum-intel"
WORKER = Path(optimum_intel_worker.__file__).resolve()
MODEL_XML = optimum_intel_worker.MODEL_XML
TOKENIZER_FILES = (
    optimum_intel_worker.TOKENIZER_XML,
    optimum_intel_worker.DETOKENIZER_XML,
)


@dataclass
class OptimumOpenVinoOptions:
    task: str = field(
        default="text-generation-with-past",
        metadata={"choices": ("text-generation-with-past",)},
    )  # a stateful decoder: the KV cache is the model's state (what LLMPipeline runs)
    weight_format: str = field(default="fp32", metadata={"choices": ("fp32",)})
    # weights as exported; compression is the nncf_compress_weights pass after this one
    tokenizer: bool = True  # convert the tokenizer with openvino_tokenizers (LLMPipeline needs it)
    timeout: int = 1800  # seconds the export may take


def call(request: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``optimum_intel_worker.py export`` on ``request`` in the tool environment."""
    req = workdir / "optimum-intel-export.request.json"
    res = workdir / "optimum-intel-export.result.json"
    req.write_text(json.dumps(request, indent=1, sort_keys=True))
    try:
        proc = toolenv.run_worker(TOOL, WORKER, ["export", str(req), str(res)], timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"error: the optimum-intel export ran past {timeout:.0f} s") from exc
    if proc.returncode != 0 or not res.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BuildError(
            f"error: the optimum-intel export failed in its tool environment "
            f"({toolenv.env_dir(TOOL)}, exit {proc.returncode}):\n{tail}"
        )
    result: dict[str, Any] = json.loads(res.read_text())
    for path in (req, res):
        path.unlink()
    return result


@register_pass
class OptimumExportOpenVino(Pass):
    name = "optimum_intel_export_openvino"
    description = (
        "optimum-intel: Hugging Face folder -> stateful OpenVINO IR decoder + OpenVINO "
        "tokenizers (tool env)"
    )
    Options = OptimumOpenVinoOptions
    input_formats = (HF_FOLDER,)
    output_format = "openvino_ir"
    runtimes = ("openvino",)
    backend = "openvino"  # what runs here; optimum-intel itself runs in its tool environment
    tool_environment = TOOL

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        folder = model.path
        out = ctx.workdir / "openvino"
        result = call(
            {
                "folder": str(folder),
                "output": str(out),
                "task": options.task,
                "weight_format": options.weight_format,
                "stateful": True,
                "tokenizer": options.tokenizer,
                "threads": ctx.threads,
            },
            ctx.workdir,
            options.timeout,
        )
        graph = out / MODEL_XML
        wanted = (MODEL_XML, "openvino_model.bin", *(TOKENIZER_FILES if options.tokenizer else ()))
        missing = [n for n in wanted if not (out / n).is_file()]
        if missing:
            raise BuildError(
                f"error: the optimum-intel export wrote no {', '.join(missing)} in {out}"
            )
        if not result.get("stateful"):
            raise BuildError(
                f"error: the optimum-intel export of {folder} is not stateful (no KV-cache "
                "state variables); LLMPipeline and the device's decoding loop need it"
            )
        for p in folder_companions(folder):
            if not (out / p.name).exists():
                shutil.copy2(p, out / p.name)
        write_export_record(
            out,
            TOOL,
            {
                "exporter": "optimum-intel",
                "task": options.task,
                "stateful": True,
                "weight_format": options.weight_format,
                "inputs": result.get("inputs"),
                "outputs": result.get("outputs"),
                "state_variables": result.get("state_variables"),
                "constants_by_type": result.get("constants_by_type"),
                "tokenizer": list(TOKENIZER_FILES) if options.tokenizer else [],
                "seconds": round(float(result.get("seconds", 0.0)), 2),
                "versions": result.get("versions"),
            },
        )
        extra = [
            p
            for p in sorted(out.iterdir())
            if p.is_file() and p.name not in (MODEL_XML, "openvino_model.bin")
        ]
        return ModelFile(graph, "openvino_ir", "fp32", tuple(extra))
