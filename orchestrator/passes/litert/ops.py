"""The operators of a LiteRT (``.tflite``) model, and the ones a phone's interpreter lacks.

The operator list comes from the flatbuffer itself (``ai_edge_litert``'s schema), so
a model that would fail to load on a phone is refused when it is built, with the
operator named and the pass that avoids it:

- ``STABLEHLO_*`` operators: what litert-torch emits for an op it has no TFLite
  lowering for (``ConvTranspose3d`` becomes ``STABLEHLO_CONVOLUTION``); the
  interpreter has kernels for only a few of them;
- ``CONV_3D`` / ``CONV_3D_TRANSPOSE`` on INT8 tensors: TFLite has only float kernels.

The rewrite ``conv3d_to_2d`` turns 3-D convolutions into 2-D ones before conversion.
A model that passes is then loaded in the interpreter here (tensors allocated), as the
app will load it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError

FIX = "conv3d_to_2d"  # the pass that rewrites 3-D convolutions as 2-D ones
FLOAT_ONLY = ("CONV_3D", "CONV_3D_TRANSPOSE")  # TFLite has no quantized kernel for these
QUANTIZED = ("INT8", "UINT8", "INT16", "INT4")


@dataclass(frozen=True)
class Op:
    """One operator of the model: its name and its first input's element type."""

    name: str  # BuiltinOperator name, or the custom code
    input_type: str  # TensorType name of its first input ("" when it has none)


def model_ops(path: Path) -> list[Op]:
    """Every operator of every subgraph of a ``.tflite`` file, in order."""
    schema = require("ai_edge_litert.schema_py_generated", "ai_edge_litert")
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    buf = path.read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if number == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(builtin.get(number, f"BUILTIN_{number}"))
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for j in range(graph.OperatorsLength()):
            op = graph.Operators(j)
            first = op.Inputs(0) if op.InputsLength() else -1
            kind = types.get(graph.Tensors(first).Type(), "?") if first >= 0 else ""
            ops.append(Op(codes[op.OpcodeIndex()], kind))
    return ops


def op_counts(ops: list[Op]) -> dict[str, int]:
    """How many of each operator (its name, with ``/INT8`` for a quantized input)."""
    counts = Counter(
        f"{o.name}/{o.input_type}" if o.input_type in QUANTIZED else o.name for o in ops
    )
    return dict(sorted(counts.items()))


def unsupported(ops: list[Op]) -> list[str]:
    """The operators a phone's LiteRT interpreter cannot run, each with why."""
    found: dict[str, str] = {}
    for o in ops:
        if o.name.startswith("STABLEHLO_"):
            found.setdefault(
                o.name, f"{o.name}: a StableHLO operator, which the LiteRT interpreter lacks"
            )
        elif o.name in FLOAT_ONLY and o.input_type in QUANTIZED:
            found.setdefault(
                f"{o.name}/{o.input_type}",
                f"{o.name} on {o.input_type} tensors: TFLite has only float kernels for it",
            )
    return list(found.values())


def check_runnable(path: Path, pass_name: str) -> list[Op]:
    """The model's operators; a BuildError naming each one the interpreter cannot run."""
    ops = model_ops(path)
    bad = unsupported(ops)
    if bad:
        names = ", ".join(b.split(":")[0].split(" on ")[0] for b in bad)
        raise BuildError(
            f"error: {pass_name}: {path.name} has operators LiteRT cannot run on a phone "
            f"({names}); put the pass '{FIX}' first in the recipe\n"
            + "\n".join(f"  {b}" for b in bad)
            + "\n3-D convolutions convert to these (ConvTranspose3d to "
            "STABLEHLO_CONVOLUTION; CONV_3D has float kernels only); "
            f"'{FIX}' rewrites them exactly as 2-D convolutions"
        )
    _check_loads(path, pass_name)
    return ops


def _check_loads(path: Path, pass_name: str) -> None:
    """Load the model in LiteRT's interpreter and allocate its tensors, as the app will."""
    interpreter = require("ai_edge_litert.interpreter", "ai_edge_litert")
    try:
        interpreter.Interpreter(model_path=str(path)).allocate_tensors()
    except Exception as exc:
        raise BuildError(
            f"error: {pass_name}: {path.name} does not load in LiteRT's interpreter: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
