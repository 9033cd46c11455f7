"""Convert the reference's torch.export program to a Core ML ML program (``.mlpackage``).

coremltools converts the program (decomposed to the ATen dialect) for a minimum
deployment target (``iOS17`` by default) with FP16 or FP32 compute precision; inputs and
outputs are float32 and named as the model spec names them. The package is read back
and checked as Linux allows (:mod:`orchestrator.core.coreml_package`): spec version,
operations the deployment target's Core ML has, inputs and outputs. Beside it:
``model.coreml.json`` (precision and the inspection) and ``model.source.pt2``, the
program it was converted from, which validation on a machine without Core ML runs at the
same precision.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core import coreml_package as cm
from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import TORCH_PROGRAM, Pass, PassContext, register_pass


@dataclass
class CoremlConvertOptions:
    compute_precision: str = field(default="fp16", metadata={"choices": ("fp16", "fp32")})
    minimum_deployment_target: str = field(
        default="iOS17", metadata={"choices": ("iOS16", "iOS17", "iOS18")}
    )


def check_package(
    package: Path, target: str, inputs: list[tuple[str, list[int]]], output_names: list[str]
) -> dict[str, Any]:
    """Inspect ``package``; a BuildError lists every refusal."""
    info = cm.inspect(package)
    outputs = [(n, o.get("shape", [])) for n, o in zip(output_names, info["outputs"], strict=False)]
    if len(info["outputs"]) != len(output_names):
        outputs = [(n, []) for n in output_names]
    found = cm.problems(info, target, inputs, outputs)
    if found:
        raise BuildError(f"error: {package.name}: " + "; ".join(found))
    return info


def write_summary(workdir: Path, summary: dict[str, Any]) -> Path:
    path = workdir / cm.SUMMARY
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return path


@register_pass
class CoremlConvert(Pass):
    name = "coreml_convert"
    description = "Core ML ML program (.mlpackage) from the torch.export program, FP16 or FP32"
    Options = CoremlConvertOptions
    input_formats = (TORCH_PROGRAM,)
    output_format = "mlpackage"
    runtimes = ("coreml",)
    backend = "coremltools"

    @classmethod
    def static_shapes_reason(cls, options: Any) -> str | None:
        return "coreml_convert converts for the declared static input shapes"

    def output_precision(self, options: Any, current: str) -> str:
        return "fp16" if options.compute_precision == "fp16" else current

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        ct = cm.coremltools()
        torch = require("torch")
        np = require("numpy")
        program = torch.export.load(str(model.path))
        output_names = list(ctx.output_names)
        shapes = program_input_shapes(program, ctx.input_names)
        inputs = [ct.TensorType(name=n, shape=s, dtype=np.float32) for n, s in shapes]
        precision = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}
        try:
            with third_party_output("coremltools", ("coremltools",), stderr=True):
                mlmodel = ct.convert(
                    program.run_decompositions({}),
                    convert_to="mlprogram",
                    inputs=inputs,
                    outputs=[ct.TensorType(name=n, dtype=np.float32) for n in output_names],
                    minimum_deployment_target=cm.deployment_target(
                        options.minimum_deployment_target
                    ),
                    compute_precision=precision[options.compute_precision],
                    skip_model_load=True,
                )
        except Exception as exc:
            raise BuildError(f"error: coremltools could not convert the program: {exc}") from exc
        out = ctx.workdir / "model.mlpackage"
        mlmodel.save(str(out))
        info = check_package(out, options.minimum_deployment_target, shapes, output_names)
        source = ctx.workdir / cm.SOURCE_PROGRAM
        shutil.copy2(model.path, source)
        summary = write_summary(
            ctx.workdir,
            {
                "compute_precision": options.compute_precision,
                "minimum_deployment_target": options.minimum_deployment_target,
                "weights": {"dtype": "fp16" if options.compute_precision == "fp16" else "fp32"},
                "input_names": list(ctx.input_names),
                "output_names": output_names,
                "coremltools_version": ct.__version__,
                "inspection": info,
            },
        )
        return ModelFile(
            out, "mlpackage", self.output_precision(options, model.precision), (summary, source)
        )


def program_input_shapes(program: Any, names: list[str]) -> list[tuple[str, list[int]]]:
    """The model's input names with the static shapes the program was traced at."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = list(program.graph_signature.user_inputs)
    out = []
    for name, node_name in zip(names, user, strict=True):
        value = placeholders[node_name].meta["val"]
        out.append((name, [int(d) for d in value.shape]))
    return out
