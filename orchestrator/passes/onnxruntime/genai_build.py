"""Build a decoder with ONNX Runtime GenAI's own model builder, in its tool environment.

A first pass of a ``text-generation`` recipe, the alternative to ``optimum_export_onnx``
(+ ``ort_weight_only`` + ``ortgenai_config``): it takes the Hugging Face folder and runs
``python -m onnxruntime_genai.models.builder -i FOLDER -o OUT -p PRECISION -e cpu`` with the
interpreter of the ``ort-genai`` tool environment (onnxruntime-genai 0.18 needs ONNX
Runtime 1.32; edgeship's environment has 1.31). The builder writes the whole folder a
runtime loads: ``model.onnx`` (+ ``model.onnx.data``, its weights), ``genai_config.json``
and the tokenizer files. Its graph is one decoder with ``input_ids``, ``attention_mask``
and ``past_key_values.<layer>.key|value`` in and ``logits``,
``present.<layer>.key|value`` out (attention as ``GroupQueryAttention``; positions come
from the attention mask), which the device's KV-cache loop drives like optimum's graph.

The folder's own tokenizer files, chat template and configs are carried beside the graph
(they replace the builder's copies: they are what the reference was tokenised with), and
``export.json`` records the builder's command, time, the graph's inputs and outputs and the
tool environment's lock (every distribution, ``pip freeze``), as the optimum passes do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import toolenv
from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import HF_FOLDER, Pass, PassContext, register_pass
from orchestrator.passes.optimum.export_onnx import folder_companions, write_export_record

TOOL = "ort-genai"
PASS = "ortgenai_build"
CONFIG = "genai_config.json"
PRECISIONS = ("fp32", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # the builder's int4_block_size values
ALGORITHMS = ("default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed")
FOLDER_CONFIGS = ("config.json", "generation_config.json")  # carried beside the graph too


@dataclass
class GenaiBuildOptions:
    precision: str = field(
        default="fp32", metadata={"choices": PRECISIONS}
    )  # the builder's -p: weights in fp32, or int8/int4 MatMulNBits blocks (fp32 activations)
    block_size: int = 32  # int4/int8 only: values per quantization block (16, 32, 64, 128, 256)
    accuracy_level: int = 4  # int4/int8 only: MatMulNBits compute type: 1 fp32 .. 4 int8
    algorithm: str = field(
        default="default", metadata={"choices": ALGORITHMS}
    )  # int4/int8 only: the builder's algo_config (*_last: the lm_head MatMul in int8)
    context_length: int = 0  # tokens the generator serves (0: the builder's, from config.json)
    timeout: int = 1800  # seconds the builder may take


def builder_command(folder: Path, out: Path, cache: Path, options: Any) -> list[str]:
    """The builder's arguments after ``python`` (``-m onnxruntime_genai.models.builder``)."""
    argv = [
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(folder),
        "-o",
        str(out),
        "-p",
        str(options.precision),
        "-e",
        "cpu",
        "-c",
        str(cache),
    ]
    if options.precision != "fp32":
        argv += [
            "--extra_options",
            f"block_size={int(options.block_size)}",
            f"accuracy_level={int(options.accuracy_level)}",
        ]
        if options.algorithm != "default":
            argv.append(f"algo_config={options.algorithm}")
    return argv


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 12) -> str:
    text = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _graph_io(path: Path) -> tuple[list[str], list[str], int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return (
        [v.name for v in proto.graph.input if v.name not in inits],
        [v.name for v in proto.graph.output],
        opset,
    )


@register_pass
class OrtGenaiBuild(Pass):
    name = PASS
    description = "onnxruntime-genai model builder: Hugging Face folder -> GenAI folder (tool env)"
    Options = GenaiBuildOptions
    input_formats = (HF_FOLDER,)
    output_format = "onnx"
    runtimes = ("onnxruntime",)
    backend = "onnx"  # what runs here; the builder itself runs in its tool environment
    tool_environment = TOOL

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        precision = str(options.get("precision", "fp32"))
        found = []
        if precision == "fp32":
            for name in ("block_size", "accuracy_level", "algorithm"):
                if name in options:
                    found.append((name, "applies to int8 and int4 only; precision is fp32"))
            return found
        block = options.get("block_size", 32)
        if block not in BLOCK_SIZES:
            expected = ", ".join(map(str, BLOCK_SIZES))
            found.append(("block_size", f"expected one of {expected}, found {block}"))
        level = options.get("accuracy_level", 4)
        if not 1 <= level <= 4:
            found.append(("accuracy_level", f"expected 1 to 4, found {level}"))
        if options.get("context_length", 0) < 0:
            found.append(("context_length", "expected 0 (the model's) or more"))
        return found

    def output_precision(self, options: Any, current: str) -> str:
        return str(options.precision)

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        folder = model.path
        out = ctx.workdir / "genai"
        cache = ctx.workdir / "genai-cache"
        argv = builder_command(folder, out, cache, options)
        start = time.perf_counter()
        try:
            proc = toolenv.run_python(
                TOOL, argv, timeout=options.timeout, env={"HF_HUB_OFFLINE": "1"}
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(
                f"error: {PASS}: onnxruntime-genai's model builder ran past "
                f"{options.timeout} s (options.timeout) on {folder}"
            ) from exc
        seconds = time.perf_counter() - start
        graph = out / "model.onnx"
        if proc.returncode != 0 or not graph.is_file():
            what = f"exit {proc.returncode}" if proc.returncode != 0 else f"no model.onnx in {out}"
            raise BuildError(
                f"error: {PASS}: onnxruntime-genai's model builder failed on {folder} "
                f"(-p {options.precision} -e cpu; {what}) in the {TOOL} tool environment "
                f"({toolenv.env_dir(TOOL)}):\n{_tail(proc)}"
            )
        if not (out / CONFIG).is_file():
            raise BuildError(f"error: {PASS}: the model builder wrote no {CONFIG} in {out}")
        shutil.rmtree(cache, ignore_errors=True)
        # the folder's tokenizer and configs: what the reference was tokenised with
        carried = [*folder_companions(folder), *(folder / n for n in FOLDER_CONFIGS)]
        for p in carried:
            if p.is_file():
                shutil.copy2(p, out / p.name)
        config = json.loads((out / CONFIG).read_text())
        if options.context_length:
            config["model"]["context_length"] = int(options.context_length)
            config["search"]["max_length"] = int(options.context_length)
            (out / CONFIG).write_text(json.dumps(config, indent=4) + "\n")
        inputs, outputs, opset = _graph_io(graph)
        env = toolenv.info(TOOL) or {}
        lock = [str(x) for x in env.get("lock") or []]
        write_export_record(
            out,
            TOOL,
            {
                "exporter": "onnxruntime-genai model builder",
                # the staging folders replaced by OUT and CACHE: the same for every build
                "command": [
                    "python",
                    *(
                        {str(out): "OUT", str(cache): "CACHE"}.get(a, a)
                        for a in builder_command(folder, out, cache, options)
                    ),
                ],
                "precision": options.precision,
                "opset": opset,
                "inputs": inputs,
                "outputs": outputs,
                "seconds": round(seconds, 2),
                "versions": {
                    "onnxruntime-genai": env.get("version"),
                    **{
                        line.split("==")[0]: line.split("==")[1]
                        for line in lock
                        if line.split("==")[0]
                        in ("onnxruntime", "onnx-ir", "onnx", "transformers", "torch")
                    },
                },
            },
        )
        extra = sorted(p for p in out.iterdir() if p.is_file() and p != graph)
        return ModelFile(graph, "onnx", str(options.precision), tuple(extra))
