"""What a phone's runtime cannot run is refused when the model is built, naming the operator
and the pass that avoids it; a torch-input recipe for an ONNX model is a spec error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import PassContext
from orchestrator.spec.rules import check_passes


class _Up(torch.nn.Module):
    """A 3-D convolution and a transposed one: the U-Net's two kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.up = torch.nn.ConvTranspose3d(2, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(x))


def _program(tmp_path: Path) -> ModelFile:
    program = torch.export.export(_Up().eval(), (torch.randn(1, 1, 4, 4, 4),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    return ModelFile(path, "pt2")


def _ctx(tmp_path: Path, name: str) -> PassContext:
    (tmp_path / name).mkdir()
    return PassContext(tmp_path / name, ["x"], lambda: [])


def test_refusal_litert_names_the_stablehlo_operator_and_the_rewrite(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    from orchestrator.passes.litert.convert import LitertConvert

    with pytest.raises(BuildError) as info:
        LitertConvert().run(_program(tmp_path), LitertConvert.Options(), _ctx(tmp_path, "a"))
    text = str(info.value)
    assert (
        "litert_convert: model.tflite has operators LiteRT cannot run on a phone "
        "(STABLEHLO_CONVOLUTION); put the pass 'conv3d_to_2d' first in the recipe\n" in text
    )
    assert "STABLEHLO_CONVOLUTION" in text and "'conv3d_to_2d'" in text


def test_refusal_litert_quantized_conv3d_has_no_kernel() -> None:
    from orchestrator.passes.litert.ops import Op, unsupported

    assert unsupported([Op("CONV_3D", "FLOAT32"), Op("CONV_2D", "INT8")]) == []
    found = unsupported([Op("CONV_3D", "INT8"), Op("STABLEHLO_ADD", "FLOAT32")])
    assert found[0].startswith("CONV_3D on INT8 tensors")
    assert found[1].startswith("STABLEHLO_ADD")


def test_refusal_executorch_names_the_5d_convolution_and_the_rewrite(tmp_path: Path) -> None:
    pytest.importorskip("executorch")
    from orchestrator.passes.executorch.lower import ExecutorchLower
    from orchestrator.passes.pytorch.conv3d_to_2d import Conv3dTo2d

    model = _program(tmp_path)
    with pytest.raises(BuildError) as info:
        ExecutorchLower().run(model, ExecutorchLower.Options(), _ctx(tmp_path, "a"))
    text = str(info.value)
    assert (
        "executorch_lower: ExecuTorch cannot run this program well on a phone "
        "(2 convolution(s) on 5-D inputs); put the pass 'conv3d_to_2d' first in the recipe\n"
        in text
    )
    assert (
        "2 convolution(s) on 5-D inputs" in text
        and "[1, 1, 4, 4, 4]" in text
        and "'conv3d_to_2d'" in text
    )
    # with the rewrite first, it lowers (every convolution delegated)
    rewritten = Conv3dTo2d().run(model, Conv3dTo2d.Options(), _ctx(tmp_path, "b"))
    pte = ExecutorchLower().run(rewritten, ExecutorchLower.Options(), _ctx(tmp_path, "c"))
    assert pte.format == "pte" and pte.path.stat().st_size > 0


def test_refusal_torch_recipe_for_an_onnx_model_is_a_spec_error() -> None:
    problems: list[tuple[str, str]] = []
    spec = {
        "model": {"source": {"kind": "onnx", "path": "m.onnx"}},
        "target": {"family": "android_litert", "precisions": ["fp32"], "name": "android_litert"},
    }
    check_passes(
        spec,
        [{"name": "litert_convert"}],
        lambda key, message: problems.append((key, message)),
        "conf/model/m.yaml",
    )
    assert len(problems) == 1
    key, message = problems[0]
    assert key == "recipe.passes[0].name"
    assert (
        "takes a torch program (pt2), but model.source.kind is onnx in conf/model/m.yaml" in message
    )
