"""executorch_lower: a torch.export program to an ExecuTorch ``.pte`` with the XNNPACK
partitioner (``to_edge_transform_and_lower``), FP32.

What XNNPACK does not take stays in ExecuTorch's portable kernels. A convolution left
there is refused here, naming it: the portable convolution runs only 1-D and 2-D inputs
(a 5-D one fails on the phone with error 0x12), and a 2-D one left undelegated (weights
computed in ``forward``) runs about a hundred times slower. ``conv3d_to_2d`` before this
pass turns 3-D convolutions into delegated 2-D ones. The written program is then loaded in
ExecuTorch's runtime, so a delegate that cannot compile it fails the build.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.quiet import third_party_output
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import TORCH_PROGRAM, Pass, PassContext, register_pass
from orchestrator.passes.common.torch_program import load_program

log = logging.getLogger(__name__)

FIX = "conv3d_to_2d"
CONVOLUTIONS = ("convolution", "conv1d", "conv2d", "conv3d", "conv_transpose")


def portable_ops(edge_program: Any) -> list[tuple[str, str, list[int]]]:
    """The operators left outside any delegate: (op name, node name, first input's shape)."""
    out = []
    for node in edge_program.graph.nodes:
        if (
            node.op != "call_function"
            or node.target.__class__.__name__ == "builtin_function_or_method"
        ):
            continue
        name = str(getattr(node.target, "__name__", node.target))
        if name == "executorch_call_delegate":
            continue
        first = node.args[0] if node.args else None
        val = getattr(first, "meta", {}).get("val") if first is not None else None
        shape = [int(d) if str(d).isdigit() else -1 for d in getattr(val, "shape", [])]
        out.append((name, node.name, shape))
    return out


def _nodes(found: list[tuple[str, str, list[int]]]) -> str:
    shown = ", ".join(f"'{node}' {shape}" for _, node, shape in found[:3])
    return shown + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def check_delegated(
    edge_program: Any, pass_name: str, allow_portable_convolutions: bool
) -> dict[str, int]:
    """Refuse convolutions left to the portable kernels; returns the portable ops' counts."""
    left = portable_ops(edge_program)
    convs = [entry for entry in left if any(c in entry[0] for c in CONVOLUTIONS)]
    five_d = [entry for entry in convs if len(entry[2]) == 5]
    slow = [] if allow_portable_convolutions else [e for e in convs if len(e[2]) != 5]
    bad = []
    if five_d:
        bad.append(
            f"{len(five_d)} convolution(s) on 5-D inputs ({five_d[0][0]} at {_nodes(five_d)}): "
            "ExecuTorch has no 3-D convolution kernel (the phone fails with error 0x12)"
        )
    if slow:
        bad.append(
            f"{len(slow)} convolution(s) not delegated to XNNPACK ({slow[0][0]} at "
            f"{_nodes(slow)}): weights computed in forward, or a form XNNPACK lacks; the "
            "portable kernel runs them about a hundred times slower"
        )
    if bad:
        what = "; ".join(b.split(" (")[0] for b in bad)
        raise BuildError(
            f"error: {pass_name}: ExecuTorch cannot run this program well on a phone ({what}); "
            f"put the pass '{FIX}' first in the recipe\n"
            + "\n".join(f"  {b}" for b in bad)
            + f"\n'{FIX}' rewrites 3-D convolutions exactly as delegated 2-D ones with "
            "constant weights" + ("; or set allow_portable_convolutions: true" if slow else "")
        )
    return dict(sorted(Counter(op for op, _, _ in left).items()))


def lower(
    program: Any, out: Path, pass_name: str, allow_portable_convolutions: bool
) -> dict[str, int]:
    """Lower an ExportedProgram with the XNNPACK partitioner and write the ``.pte``."""
    exir = require("executorch.exir", "executorch")
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    with third_party_output("executorch", ("executorch",)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()])
        portable = check_delegated(edge.exported_program(), pass_name, allow_portable_convolutions)
        et = edge.to_executorch()
    out.write_bytes(et.buffer)
    check_loads(out, pass_name)
    return portable


def check_loads(path: Path, pass_name: str, method: str = "forward") -> None:
    """Load the program and its method in ExecuTorch's runtime, as the phone will: a delegate
    that cannot compile its graph fails here, not on the phone."""
    runtime = require("executorch.runtime", "executorch")
    try:
        runtime.Runtime.get().load_program(str(path)).load_method(method)
    except Exception as exc:
        raise BuildError(
            f"error: {pass_name}: {path.name} does not load in ExecuTorch's runtime "
            f"({str(exc).strip() or type(exc).__name__}); the runtime's log above names the "
            "node its XNNPACK delegate refused"
        ) from exc


@dataclass
class LowerOptions:
    allow_portable_convolutions: bool = False  # keep 1-D/2-D convolutions XNNPACK did not take


@register_pass
class ExecutorchLower(Pass):
    name = "executorch_lower"
    description = "ExecuTorch .pte from the torch program, XNNPACK partitioner (FP32)"
    Options = LowerOptions
    input_formats = (TORCH_PROGRAM,)
    output_format = "pte"
    runtimes = ("executorch",)
    backend = "executorch"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        program = load_program(model)
        out = ctx.workdir / "model.pte"
        portable = lower(program, out, self.name, options.allow_portable_convolutions)
        log.info("executorch_lower: operators outside XNNPACK %s", portable)
        return ModelFile(out, "pte", "fp32")
