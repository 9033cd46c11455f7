"""conv3d_to_2d: 3-D convolutions rewritten as 2-D ones give the same outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import PassContext
from orchestrator.passes.pytorch.conv3d_to_2d import Conv3dTo2d, rewrite_module

ATOL = 1e-5


class _Wrap(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _rewritten(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, Any]:
    gm = torch.export.export(net.eval(), (x,)).module()
    count = rewrite_module(gm)
    return count, torch.export.export(gm, (x,))


def _conv_targets(program: Any) -> list[str]:
    return [
        str(n.target)
        for n in program.graph.nodes
        if n.op == "call_function" and "conv" in str(n.target)
    ]


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, groups, bias",
    [
        (3, 1, 1, 1, 1, True),  # the U-Net's block
        (3, 2, 1, 1, 1, True),  # its strided downsampling
        ((3, 1, 3), (2, 1, 1), (1, 0, 1), 1, 1, True),  # anisotropic
        (1, 1, 0, 1, 1, False),
        (3, 1, 0, 2, 1, True),  # dilated
        (3, 1, 1, 1, 2, False),  # grouped
        ((2, 3, 3), (3, 2, 1), (0, 1, 2), (1, 1, 2), 1, True),
    ],
)
def test_conv3d_to_2d_conv3d_parity(
    kernel: Any, stride: Any, padding: Any, dilation: Any, groups: int, bias: bool
) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 6, kernel, stride, padding, dilation, groups, bias)
    net = _Wrap(conv)
    x = torch.randn(2, 4, 9, 10, 11)
    count, program = _rewritten(net, x)
    assert count == 1
    assert _conv_targets(program) and all("conv2d" in t for t in _conv_targets(program))
    torch.testing.assert_close(program.module()(x), net(x), atol=ATOL, rtol=0)
    # every depth tap's weights are a constant of their own, never sliced in forward
    k_d = conv.weight.shape[2]
    taps = [n for n in program.graph_signature.buffers if "conv3d_to_2d" in n and "_w" in n]
    assert len(taps) == k_d


@pytest.mark.parametrize("kernel", [2, (2, 2, 1), (1, 3, 2)])
def test_conv3d_to_2d_transposed_parity(kernel: Any) -> None:
    torch.manual_seed(1)
    net = _Wrap(torch.nn.ConvTranspose3d(8, 5, kernel, stride=kernel))
    x = torch.randn(2, 8, 4, 5, 6)
    count, program = _rewritten(net, x)
    assert count == 1
    assert _conv_targets(program) == ["aten.conv2d.default"]
    torch.testing.assert_close(program.module()(x), net(x), atol=ATOL, rtol=0)


def test_conv3d_to_2d_unet_parity() -> None:
    from examples.ct_seg.unet import build

    torch.manual_seed(2)
    net = build(in_channels=1, num_classes=6, preset="small").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    count, program = _rewritten(net, x)
    assert count == 18  # 15 convolutions and 3 transposed ones
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x), atol=1e-4, rtol=0)


def test_conv3d_to_2d_refuses_a_transposed_conv_it_cannot_rewrite_naming_it() -> None:
    net = _Wrap(torch.nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1))
    gm = torch.export.export(net, (torch.randn(1, 4, 4, 4, 4),)).module()
    with pytest.raises(BuildError) as info:
        rewrite_module(gm)
    text = str(info.value)
    assert "conv3d_to_2d" in text and "module layer" in text
    assert "kernel equals its stride" in text and "found kernel [3, 3, 3], stride [2, 2, 2]" in text


def test_conv3d_to_2d_pass_keeps_the_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ConvTranspose3d(4, 2, 2, stride=2)
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=4)
    program = torch.export.export(net, (torch.randn(2, 1, 4, 4, 4),), dynamic_shapes=({0: batch},))
    src = tmp_path / "in.pt2"
    torch.export.save(program, str(src))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ctx = PassContext(out_dir, ["x"], lambda: [])
    result = Conv3dTo2d().run(ModelFile(src, "pt2"), Conv3dTo2d.Options(), ctx)
    rewritten = torch.export.load(str(result.path))
    for n in (1, 3):
        x = torch.randn(n, 1, 4, 4, 4)
        torch.testing.assert_close(rewritten.module()(x), net(x), atol=ATOL, rtol=0)
