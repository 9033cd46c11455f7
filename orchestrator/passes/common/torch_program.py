"""Reading, tracing again and writing the torch.export programs (``pt2``) that torch-input
passes take: the program's own example inputs and dynamic dimensions, kept from one pass
to the next."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import Inputs


def load_program(model: ModelFile) -> Any:
    """The ExportedProgram of a ``pt2`` model file."""
    torch = require("torch")
    try:
        return torch.export.load(str(model.path))
    except Exception as exc:
        raise BuildError(
            f"error: {model.path.name}: not a torch.export archive (torch.export.save): "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc


def example_args(program: Any) -> tuple[Any, ...]:
    """The program's example inputs (contiguous tensors, as exported)."""
    args, _ = program.example_inputs
    return tuple(a.contiguous() for a in args)


def dynamic_shapes(program: Any) -> tuple[dict[int, Any] | None, ...] | None:
    """``dynamic_shapes`` that export the program's module again with the same dynamic
    dimensions: one ``torch.export.Dim`` per symbol, shared by every input that has it,
    bounded as the program's range constraints say."""
    torch = require("torch")
    dims: dict[str, Any] = {}
    out: list[dict[int, Any] | None] = []
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        axes: dict[int, Any] = {}
        for i, d in enumerate(node.meta["val"].shape):
            if isinstance(d, torch.SymInt):
                expr = d.node.expr
                name = str(expr)
                if name not in dims:
                    bounds = program.range_constraints.get(expr)
                    lo = int(bounds.lower) if bounds is not None else 1
                    hi = int(bounds.upper) if bounds is not None else None
                    dims[name] = torch.export.Dim(f"d_{name}", min=lo, max=hi)
                axes[i] = dims[name]
        out.append(axes or None)
    return tuple(out) if any(out) else None


def export_again(module: Any, program: Any) -> Any:
    """torch.export of ``module`` (a rewrite of ``program``'s) at the program's example
    inputs and dynamic dimensions."""
    torch = require("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(
            module, example_args(program), dynamic_shapes=dynamic_shapes(program), strict=False
        )


def save_program(program: Any, out: Path, precision: str = "fp32") -> ModelFile:
    """Write a program as ``out`` (``torch.export.save``)."""
    torch = require("torch")
    torch.export.save(program, str(out))
    return ModelFile(out, "pt2", precision)


def torch_batches(batches: list[Inputs], input_names: list[str]) -> list[tuple[Any, ...]]:
    """Calibration batches as tuples of torch tensors in graph input order."""
    torch = require("torch")
    return [tuple(torch.from_numpy(b[n]).contiguous() for n in input_names) for b in batches]
