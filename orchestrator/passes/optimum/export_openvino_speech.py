"""Export a Hugging Face Whisper folder to OpenVINO IR with optimum-intel, for OpenVINO
GenAI's ``WhisperPipeline``.

The recipe's first pass of a ``speech-recognition`` model: it takes the model folder
(``model.source.path``, format ``huggingface``) and writes the folder ``WhisperPipeline``
loads: ``openvino_encoder_model.xml`` (log-mel features -> encoder states),
``openvino_decoder_model.xml`` (one decoder for the prompt and every step, its KV cache
held as the model's state), ``openvino_tokenizer.xml`` and ``openvino_detokenizer.xml``
(openvino_tokenizers' conversion of the folder's tokenizer), and the folder's config,
generation config, feature extractor and tokenizer files. Weights stay FP32 at export;
weight compression is a pass after it (``nncf_compress_folder``).

optimum-intel runs in its own tool environment (``edgeship toolenv install optimum-intel``);
the pass records that environment's lock in ``export.json``, which travels with the model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import openvino_speech_worker, toolenv
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass
from orchestrator.passes.optimum.export_onnx import folder_companions, write_export_record

TOOL = "optimum-intel"
WORKER = Path(openvino_speech_worker.__file__).resolve()
ENCODER, DECODER = openvino_speech_worker.MODELS


@dataclass
class OptimumExportOpenvinoSpeechOptions:
    task: str = field(
        default="automatic-speech-recognition-with-past",
        metadata={"choices": ("automatic-speech-recognition-with-past",)},
    )  # with-past: the decoder keeps its KV cache (as OpenVINO state)
    timeout: int = 1800  # seconds the export may take


def encoder_frames(folder: Path) -> int:
    """The encoder's input length: the folder's feature extractor's ``nb_max_frames``."""
    path = folder / "preprocessor_config.json"
    try:
        config = json.loads(path.read_text())
        return int(config["nb_max_frames"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(
            f"error: {path}: a Whisper folder needs its feature extractor's settings "
            f"(nb_max_frames): {exc}"
        ) from exc


def call(request: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``openvino_speech_worker.py export`` on ``request`` in the tool environment."""
    req = workdir / "ov-export.request.json"
    res = workdir / "ov-export.result.json"
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


def folder_model(out: Path, precision: str) -> ModelFile:
    """The exported folder as a model: the encoder IR first, every other file beside it."""
    primary = out / ENCODER
    extra = tuple(
        sorted(
            p
            for p in out.iterdir()
            if p.is_file() and p not in (primary, primary.with_suffix(".bin"))
        )
    )
    return ModelFile(primary, "openvino_ir", precision, extra)


@register_pass
class OptimumExportOpenvinoSpeech(Pass):
    name = "optimum_export_openvino_speech"
    description = "optimum-intel: Whisper folder -> OpenVINO IR for WhisperPipeline (tool env)"
    Options = OptimumExportOpenvinoSpeechOptions
    input_formats = ("huggingface",)
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
                "frames": encoder_frames(folder),
                "weight_format": "fp32",
                "threads": ctx.threads,
            },
            ctx.workdir,
            options.timeout,
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
                "weight_format": "fp32",
                "graphs": result.get("graphs"),
                "seconds": round(float(result.get("seconds", 0.0)), 2),
                "versions": result.get("versions"),
            },
        )
        return folder_model(out, "fp32")
