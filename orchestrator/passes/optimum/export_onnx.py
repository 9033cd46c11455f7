"""Export a Hugging Face folder to ONNX with optimum-onnx, with the KV cache.

The recipe's first pass of a ``text-generation`` model: it takes the model folder
(``model.source.path``, format ``huggingface``) and writes ``model.onnx``, one decoder
graph for the prompt and every decoding step (``input_ids``, ``attention_mask``,
``position_ids`` and ``past_key_values.<layer>.key|value`` in; ``logits`` and
``present.<layer>.key|value`` out; batch and sequence dynamic). The folder's config,
generation config and tokenizer files (tokenizer, its configuration, the chat template)
travel beside it, so the artifact is a whole model folder a runtime can load.

optimum-onnx runs in its own tool environment (``edgeship toolenv install optimum-onnx``);
the pass records that environment's lock (every distribution and version) in
``export.json``, which travels with the model and lands in the build's evidence.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import optimum_worker, toolenv
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass

TOOL = "optimum-onnx"
WORKER = Path(optimum_worker.__file__).resolve()
EXPORT_RECORD = "export.json"


def write_export_record(out: Path, tool: str, fields: dict[str, Any]) -> Path:
    """``export.json`` beside an exported folder: what the exporter did (``fields``) and the
    tool environment it ran in (requirements, what pip installed without dependencies, the
    lock: every distribution, ``pip freeze``), which is part of the build's provenance."""
    env = toolenv.info(tool) or {}
    block = {
        "name": tool,
        "digest": env.get("digest"),
        "requirements": env.get("requirements"),
        "lock": env.get("lock"),
    }
    if env.get("no_deps"):
        block["no_deps"] = env["no_deps"]
    path = out / EXPORT_RECORD
    path.write_text(json.dumps({**fields, "toolenv": block}, indent=1, sort_keys=True) + "\n")
    return path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".data")
WRITTEN_BY_EXPORT = ("config.json", "generation_config.json")


@dataclass
class OptimumExportOptions:
    task: str = field(
        default="text-generation-with-past",
        metadata={"choices": ("text-generation-with-past", "text-generation")},
    )  # with-past: the graph takes and returns the KV cache
    opset: int = 18  # ONNX opset of the export
    timeout: int = 1800  # seconds the export may take


def folder_companions(folder: Path) -> list[Path]:
    """The files of a model folder a runtime needs besides the graph and its config:
    tokenizer, its configuration, special tokens, chat template (no weights)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.endswith(WEIGHT_SUFFIXES)
        and p.name not in WRITTEN_BY_EXPORT
        and not p.name.startswith(".")
    )


def call(request: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``optimum_worker.py export`` on ``request`` in the tool environment."""
    req = workdir / "optimum-export.request.json"
    res = workdir / "optimum-export.result.json"
    req.write_text(json.dumps(request, indent=1, sort_keys=True))
    try:
        proc = toolenv.run_worker(TOOL, WORKER, ["export", str(req), str(res)], timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"error: the optimum-onnx export ran past {timeout:.0f} s") from exc
    if proc.returncode != 0 or not res.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BuildError(
            f"error: the optimum-onnx export failed in its tool environment "
            f"({toolenv.env_dir(TOOL)}, exit {proc.returncode}):\n{tail}"
        )
    result: dict[str, Any] = json.loads(res.read_text())
    for path in (req, res):
        path.unlink()
    return result


@register_pass
class OptimumExportOnnx(Pass):
    name = "optimum_export_onnx"
    description = "optimum-onnx: Hugging Face folder -> ONNX decoder with KV cache (tool env)"
    Options = OptimumExportOptions
    input_formats = ("huggingface",)
    output_format = "onnx"
    runtimes = ("onnxruntime",)
    backend = "onnx"  # what runs here; optimum itself runs in its tool environment
    tool_environment = TOOL

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        folder = model.path
        out = ctx.workdir / "onnx"
        result = call(
            {
                "folder": str(folder),
                "output": str(out),
                "task": options.task,
                "opset": options.opset,
                "threads": ctx.threads,
            },
            ctx.workdir,
            options.timeout,
        )
        graph = out / "model.onnx"
        if not graph.is_file():
            raise BuildError(f"error: the optimum-onnx export wrote no model.onnx in {out}")
        extra = [p for p in sorted(out.iterdir()) if p.is_file() and p != graph]
        for p in folder_companions(folder):
            if not (out / p.name).exists():
                shutil.copy2(p, out / p.name)
                extra.append(out / p.name)
        record = write_export_record(
            out,
            TOOL,
            {
                "exporter": "optimum-onnx",
                "task": options.task,
                "opset": result.get("opset"),
                "inputs": result.get("inputs"),
                "outputs": result.get("outputs"),
                "seconds": round(float(result.get("seconds", 0.0)), 2),
                "versions": result.get("versions"),
            },
        )
        extra.append(record)
        return ModelFile(graph, "onnx", "fp32", tuple(sorted(set(extra))))
