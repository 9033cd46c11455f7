"""Convert ONNX to the ONNX Runtime Mobile format (.ort) with onnxruntime's own converter.

The converter (``onnxruntime.tools.convert_onnx_models_to_ort``) also writes the
reduced-operator configuration a custom minimal ONNX Runtime build for the app
needs (``--include_ops_by_config``); it travels with the model as a companion file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Pass, PassContext, register_pass

log = logging.getLogger(__name__)

# the converter's own suffix for models that carry saved runtime optimizations
RUNTIME_OPT_SUFFIX = ".with_runtime_opt"
OPERATORS_CONFIG = "required_operators.config"
OPERATORS_AND_TYPES_CONFIG = "required_operators_and_types.config"


@dataclass
class OrtFormatOptions:
    optimization_style: str = field(default="fixed", metadata={"choices": ("fixed", "runtime")})
    # fixed: optimisations applied and frozen for the CPU execution provider;
    # runtime: QDQ fusions are saved and replayed at load, so NNAPI/CoreML/XNNPACK can take nodes
    target_platform: str = field(default="arm", metadata={"choices": ("arm", "amd64")})
    # arm enables the int8 QDQ kernels phones use (session.qdqisint8allowed)
    enable_type_reduction: bool = False  # also record element types (smaller custom build)


def operators_config_name(runtime_optimizations: bool, type_reduction: bool) -> str:
    """The file name of the reduced-operator config, following the converter's convention."""
    base = OPERATORS_AND_TYPES_CONFIG if type_reduction else OPERATORS_CONFIG
    if runtime_optimizations:
        stem, _, ext = base.rpartition(".")
        return f"{stem}{RUNTIME_OPT_SUFFIX}.{ext}"
    return base


@register_pass
class OrtFormat(Pass):
    name = "ort_format"
    description = "ONNX Runtime Mobile format (.ort) + reduced-operator build config"
    Options = OrtFormatOptions
    output_format = "ort"
    runtimes = ("onnxruntime_mobile",)
    backend = "onnxruntime"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        tools = require("onnxruntime.tools.convert_onnx_models_to_ort", "onnxruntime")
        style = {"fixed": tools.OptimizationStyle.Fixed, "runtime": tools.OptimizationStyle.Runtime}
        source_dir = ctx.workdir / "source"
        source_dir.mkdir()
        source = source_dir / "model.onnx"
        shutil.copy2(model.path, source)
        converted = ctx.workdir / "converted"
        chatter = io.StringIO()  # the converter prints progress; keep it for the debug log
        # its helper logs at INFO on a logger it pins to DEBUG; quiet it for the conversion
        tool_log = logging.getLogger("ort_format_model.utils")
        level = tool_log.level
        tool_log.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(chatter):
                tools.convert_onnx_models_to_ort(
                    source,
                    output_dir=converted,
                    optimization_styles=[style[options.optimization_style]],
                    target_platform=options.target_platform,
                    enable_type_reduction=options.enable_type_reduction,
                )
        finally:
            tool_log.setLevel(level)
        log.debug("%s", chatter.getvalue())
        runtime_opt = options.optimization_style == "runtime"
        ort_files = sorted(converted.glob("*.ort"))
        configs = sorted(converted.glob("*.config"))
        if len(ort_files) != 1 or len(configs) != 1:
            raise BuildError(
                "error: ort_format: the converter wrote "
                f"{[p.name for p in ort_files + configs]}; expected one .ort and one .config"
            )
        out = ctx.workdir / "model.ort"
        config = ctx.workdir / operators_config_name(runtime_opt, options.enable_type_reduction)
        shutil.move(ort_files[0], out)
        _rewrite_config_header(configs[0], config)
        shutil.rmtree(converted)
        shutil.rmtree(source_dir)
        return ModelFile(out, "ort", model.precision, (config,))


def _rewrite_config_header(source: Path, dest: Path) -> None:
    """Copy the operators config, replacing the build machine's paths in its header."""
    lines = source.read_text().splitlines()
    body = [line for line in lines if line and not line.startswith("#")]
    header = [
        "# Operators (and, with type reduction, element types) model.ort uses.",
        "# Build a reduced ONNX Runtime for the app with:",
        "#   ./build.sh --minimal_build --include_ops_by_config <this file> ...",
    ]
    dest.write_text("\n".join(header + body) + "\n")
