"""Compile ONNX with Apache TVM (Relax) into a shared library for the target's CPU.

The ONNX model is imported with Relax's ONNX frontend (weights folded in as constants),
lowered with the default pipeline and compiled by ``tvm.compile`` for an LLVM target in
TVM's dict form, ``{"kind": "llvm", "mcpu": <target.device>, "num-cores": <threads>}``
(``target.device: host`` compiles for the build machine's own CPU). The library
(``model.so``) holds the Relax virtual machine's code and the weights. Beside it,
``model.tvm.json`` records the target, the TVM version and the signature; when the
model comes from ``tvm_tune``, its tuning database is applied and travels along.

TVM runs in its own tool environment (``edgeship toolenv install tvm``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.tvm_tool import METADATA, call, llvm_target
from orchestrator.passes.base import Pass, PassContext, register_pass

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


@dataclass
class TvmCompileOptions:
    timeout: int = 1800  # seconds the compilation may take


def input_specs(model: ModelFile, ctx: PassContext) -> list[dict[str, Any]]:
    """Names, static shapes and dtypes of the ONNX model's inputs (TVM compiles static shapes)."""
    import onnx

    proto = onnx.load(str(model.path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for value in proto.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        bounds = (ctx.input_bounds or {}).get(value.name)
        if bounds is not None:
            shape = [b if isinstance(b, int) else b[1] for b in bounds]
        else:
            shape = [d.dim_value for d in ttype.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        out.append({"name": value.name, "shape": shape, "dtype": dtype})
    return out


def output_names(model: ModelFile) -> list[str]:
    import onnx

    proto = onnx.load(str(model.path), load_external_data=False)
    return [o.name for o in proto.graph.output]


@register_pass
class TvmCompile(Pass):
    name = "tvm_compile"
    description = "Apache TVM Relax: ONNX -> shared library (.so) for the target's CPU (LLVM)"
    Options = TvmCompileOptions
    output_format = "tvm"
    runtimes = ("tvm",)
    backend = "onnx"  # what runs here; TVM itself runs in its tool environment

    @classmethod
    def static_shapes_reason(cls, options: Any) -> str | None:
        return "tvm_compile builds the Relax module for static input shapes"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        database = [p for p in model.extra if p.name in DATABASE_FILES]
        inputs = input_specs(model, ctx)
        out = ctx.workdir / "model.so"
        request: dict[str, Any] = {
            "onnx": str(model.path),
            "inputs": inputs,
            "target": llvm_target(ctx.device, ctx.threads),
            "output": str(out),
            "threads": ctx.threads,
        }
        extra = []
        if database:
            db_dir = ctx.workdir / "tuning"
            db_dir.mkdir()
            for p in model.extra:
                if p.name.startswith("database_") or p.name == "tuning.json":
                    shutil.copy2(p, db_dir / p.name)
            request["database"] = str(db_dir)
        result = call("compile", request, ctx.workdir, timeout=options.timeout)
        meta = ctx.workdir / METADATA
        meta.write_text(
            json.dumps(
                {
                    "format": "tvm relax executable (shared library)",
                    "entry": "main",
                    "tvm_version": result["tvm_version"],
                    "target": result["target"],
                    "inputs": inputs,
                    "outputs": output_names(model),
                    "tuned": bool(database),
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        extra.append(meta)
        if database:
            extra += sorted((ctx.workdir / "tuning").iterdir())
        return ModelFile(out, "tvm", model.precision, tuple(extra))
