"""conv3d_to_2d: 3-D convolutions rewritten exactly as 2-D ones, for runtimes without 5-D
convolution kernels (LiteRT's interpreter, ExecuTorch's XNNPACK delegate).

- A ``Conv3d`` becomes a sum of ``Conv2d`` over depth slices: the input's depth folds
  into the batch, each of the kernel's ``kD`` depth taps is one 2-D convolution over the
  depth positions it touches, and the taps add up. Each tap's weights are a constant of
  their own (sliced once here, never inside ``forward``: a runtime delegates a
  convolution only when its weights are constants).
- A ``ConvTranspose3d`` whose kernel equals its stride (no padding, no output padding,
  no dilation, one group; U-Net upsampling) becomes a 1x1 ``Conv2d`` producing every
  kernel position as channels, plus reshapes and 4-D transposes that put each position
  in its place. Any other transposed 3-D convolution is an error naming it.

The rewrite is exact up to float summation order. It works on the torch.export
program's graph (``aten.conv3d``, ``aten.conv_transpose3d`` and 5-D
``aten.convolution``), so any torch-input recipe can put it first, whatever the source.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import BuildError
from orchestrator.passes.base import TORCH_PROGRAM, Pass, PassContext, register_pass
from orchestrator.passes.common.torch_program import export_again, load_program, save_program

log = logging.getLogger(__name__)


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"{name} {value} is not 3-D")
    return values[0], values[1], values[2]


def conv3d_by_depth(
    x: Any,
    bias: Any,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    dilation: tuple[int, int, int],
    groups: int,
    *taps: Any,
) -> Any:
    """``conv3d(x, w, bias, ...)`` as a sum of ``conv2d`` over depth, ``taps[k] = w[:, :, k]``."""
    torch = require("torch")
    f = torch.nn.functional
    n, c, d, h, w = x.shape
    sd, sh, sw = stride
    pd, ph, pw = padding
    dd, dh, dw = dilation
    depth = d + 2 * pd
    out_d = (depth - dd * (len(taps) - 1) - 1) // sd + 1
    x = x.permute(0, 2, 1, 3, 4)  # n, d, c, h, w
    if pd:
        # zero slices joined on, not a pad: XNNPACK refuses a quantized pad of this axis
        zeros = x.new_zeros((n, pd, c, h, w))
        x = torch.cat([zeros, x, zeros], dim=1)
    out = None
    for k, tap in enumerate(taps):
        start = k * dd
        xs = (
            x[:, start : start + (out_d - 1) * sd + 1 : sd]
            if sd > 1
            else x[:, start : start + out_d]
        )
        xs = xs.reshape(n * out_d, c, h, w)
        y = f.conv2d(xs, tap, bias if k == 0 else None, (sh, sw), (ph, pw), (dh, dw), groups)
        out = y if out is None else out + y
    assert out is not None
    _, o, ho, wo = out.shape
    return out.reshape(n, out_d, o, ho, wo).permute(0, 2, 1, 3, 4)


def conv_transpose3d_by_1x1(x: Any, weight: Any, bias: Any, kernel: tuple[int, int, int]) -> Any:
    """``conv_transpose3d`` with kernel == stride as a 1x1 ``conv2d`` and reshapes.

    ``weight`` is the transposed convolution's ``(C, O, kD, kH, kW)`` weight laid out as
    ``(kD*kH*kW*O, C, 1, 1)``, ``bias`` its bias repeated ``kD*kH*kW`` times (or None).
    Every transpose is 4-D, which every runtime has.
    """
    torch = require("torch")
    n, c, d, h, w = x.shape
    kd, kh, kw = kernel
    o = weight.shape[0] // (kd * kh * kw)
    y = torch.nn.functional.conv2d(x.reshape(n, c, d * h, w), weight, bias)
    # y is (n, kd, kh, kw, o, d, h, w); move kw after w, then kh after h, then kd after d
    y = y.reshape(n * kd * kh, kw, o * d * h, w).permute(0, 2, 3, 1)
    y = y.reshape(n * kd, kh, o * d * h, w * kw).permute(0, 2, 1, 3)
    y = y.reshape(n, kd, o * d, h * kh * w * kw).permute(0, 2, 1, 3)
    return y.reshape(n, o, d * kd, h * kh, w * kw)


@dataclass
class _Conv:
    """A 3-D convolution found in the graph, its arguments normalised."""

    weight: Any  # the get_attr node of its weight
    bias: Any  # the get_attr node of its bias, or None
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    dilation: tuple[int, int, int]
    transposed: bool
    output_padding: tuple[int, int, int]
    groups: int


def _parse(node: Any, aten: Any) -> _Conv | None:
    """The 3-D convolution ``node`` is, or None when it is none."""
    args = list(node.args) + [None] * 9
    kw = node.kwargs
    if node.target == aten.conv3d.default:
        x, w, b = args[0], args[1], kw.get("bias", args[2])
        stride, padding, dilation = (
            kw.get(k, args[i]) for i, k in ((3, "stride"), (4, "padding"), (5, "dilation"))
        )
        groups = kw.get("groups", args[6])
        return _Conv(
            w,
            b,
            _triple(stride or 1, "stride"),
            _triple(padding or 0, "padding"),
            _triple(dilation or 1, "dilation"),
            False,
            (0, 0, 0),
            int(groups or 1),
        )
    if node.target == aten.conv3d.padding:
        raise ValueError("padding given as a string ('same'/'valid'); give it as numbers")
    if node.target == aten.conv_transpose3d.input:
        x, w, b = args[0], args[1], kw.get("bias", args[2])
        stride = kw.get("stride", args[3])
        padding = kw.get("padding", args[4])
        out_pad = kw.get("output_padding", args[5])
        groups = kw.get("groups", args[6])
        dilation = kw.get("dilation", args[7])
        return _Conv(
            w,
            b,
            _triple(stride or 1, "stride"),
            _triple(padding or 0, "padding"),
            _triple(dilation or 1, "dilation"),
            True,
            _triple(out_pad or 0, "output_padding"),
            int(groups or 1),
        )
    if node.target == aten.convolution.default:
        x, w, b, stride, padding, dilation, transposed, out_pad, groups = node.args[:9]
        val = x.meta.get("val") if hasattr(x, "meta") else None
        if val is None or val.dim() != 5:
            return None
        return _Conv(
            w,
            b,
            _triple(stride, "stride"),
            _triple(padding, "padding"),
            _triple(dilation, "dilation"),
            bool(transposed),
            _triple(out_pad, "output_padding"),
            int(groups),
        )
    return None


def _constant(gm: Any, node: Any, what: str, where: str) -> Any:
    """The tensor a get_attr node names; a weight computed in forward is an error."""
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise BuildError(
            f"error: conv3d_to_2d: the {what} of {where} is computed in forward "
            f"({getattr(node, 'op', type(node).__name__)} {getattr(node, 'name', '')}); the "
            "rewrite needs it as a constant (a parameter or buffer)"
        )
    return operator.attrgetter(node.target)(gm).detach()


def _describe(node: Any) -> str:
    """A graph node for an error: its name and the module path it came from."""
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()), ("",))[0] if stack else ""
    return f"node '{node.name}'" + (f" (module {path})" if path else "")


def rewrite_module(gm: Any) -> int:
    """Rewrite every 3-D convolution of a GraphModule in place; returns how many."""
    torch = require("torch")
    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        where = _describe(node)
        try:
            conv = _parse(node, aten)
        except ValueError as exc:
            raise BuildError(f"error: conv3d_to_2d: {where}: {exc}") from exc
        if conv is None:
            continue
        weight = _constant(gm, conv.weight, "weight", where)
        bias = _constant(gm, conv.bias, "bias", where)
        x = node.args[0]
        prefix = f"_conv3d_to_2d_{count}"
        with gm.graph.inserting_before(node):
            if not conv.transposed:
                taps = []
                for k in range(weight.shape[2]):
                    gm.register_buffer(f"{prefix}_w{k}", weight[:, :, k].contiguous().clone())
                    taps.append(gm.graph.get_attr(f"{prefix}_w{k}"))
                b = None
                if bias is not None:
                    gm.register_buffer(f"{prefix}_b", bias.clone())
                    b = gm.graph.get_attr(f"{prefix}_b")
                new = gm.graph.call_function(
                    conv3d_by_depth,
                    (x, b, conv.stride, conv.padding, conv.dilation, conv.groups, *taps),
                )
            else:
                kernel = tuple(int(k) for k in weight.shape[2:])
                if (
                    kernel != conv.stride
                    or conv.padding != (0, 0, 0)
                    or conv.output_padding != (0, 0, 0)
                    or conv.dilation != (1, 1, 1)
                    or conv.groups != 1
                ):
                    raise BuildError(
                        f"error: conv3d_to_2d: {where}: a transposed 3-D convolution is "
                        "rewritten only when its kernel equals its stride, without padding, "
                        "output padding or dilation, in one group; found kernel "
                        f"{list(kernel)}, stride {list(conv.stride)}, padding "
                        f"{list(conv.padding)}, output_padding {list(conv.output_padding)}, "
                        f"dilation {list(conv.dilation)}, groups {conv.groups}"
                    )
                k = kernel[0] * kernel[1] * kernel[2]
                w2 = weight.permute(2, 3, 4, 1, 0).reshape(
                    k * weight.shape[1], weight.shape[0], 1, 1
                )
                gm.register_buffer(f"{prefix}_w", w2.contiguous().clone())
                b = None
                if bias is not None:
                    gm.register_buffer(f"{prefix}_b", bias.repeat(k).contiguous().clone())
                    b = gm.graph.get_attr(f"{prefix}_b")
                new = gm.graph.call_function(
                    conv_transpose3d_by_1x1, (x, gm.graph.get_attr(f"{prefix}_w"), b, kernel)
                )
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count


@register_pass
class Conv3dTo2d(Pass):
    name = "conv3d_to_2d"
    description = (
        "exact rewrite of 3-D convolutions as 2-D ones (Conv3d: sum over depth taps; "
        "ConvTranspose3d with kernel == stride: 1x1 conv + reshapes)"
    )
    input_formats = (TORCH_PROGRAM,)
    output_format = TORCH_PROGRAM
    runtimes = ("litert", "executorch", "coreml")
    backend = "torch"

    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        program = load_program(model)
        gm = program.module()
        count = rewrite_module(gm)
        log.info("conv3d_to_2d: %d 3-D convolution(s) rewritten", count)
        if count == 0:
            return save_program(program, ctx.workdir / "model.pt2", model.precision)
        try:
            rewritten = export_again(gm, program)
        except Exception as exc:
            raise BuildError(
                f"error: conv3d_to_2d: the rewritten program does not export: {exc}"
            ) from exc
        return save_program(rewritten, ctx.workdir / "model.pt2", model.precision)
