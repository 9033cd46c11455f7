"""The torch-program export (``pt2``) that torch-input recipes start from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.build.export import export_program
from orchestrator.build.reference_model import Reference
from orchestrator.core.schema import DynamicDim, ModelConfig, SourceConfig, TensorSpec
from orchestrator.errors import BuildError
from orchestrator.passes.base import TORCH_PROGRAM, Pass, export_format


def _model(shape: list[int | str]) -> ModelConfig:
    dynamic = {"batch": DynamicDim(min=1, opt=2, max=8)} if "batch" in shape else {}
    return ModelConfig(
        name="tiny",
        task="regression",
        source=SourceConfig(kind="pytorch"),
        inputs=[TensorSpec(name="x", shape=shape, dtype="float32", dynamic=dynamic)],
        outputs=[TensorSpec(name="y", shape=[shape[0], 3], dtype="float32")],
    )


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _OnnxPass(Pass):
    name = "test_onnx"
    description = "-"

    def run(self, model, options, ctx):  # type: ignore[no-untyped-def]
        return model


class _TorchPass(_OnnxPass):
    name = "test_torch"
    input_formats = (TORCH_PROGRAM,)


def test_torch_program_export_format_follows_the_first_pass() -> None:
    assert export_format(None) == "onnx"
    assert export_format(_OnnxPass) == "onnx"
    assert export_format(_TorchPass) == TORCH_PROGRAM


def test_torch_program_export_keeps_dynamic_batch_and_outputs(tmp_path: Path) -> None:
    net = _Net().eval()
    model = export_program(net, _model(["batch", 4]), tmp_path / "model.pt2")
    assert model.format == "pt2" and model.path.is_file()
    program = torch.export.load(str(model.path))
    x = torch.randn(5, 4)
    torch.testing.assert_close(program.module()(x), net(x))
    # an ExportedProgram is exported again from its module
    again = export_program(program, _model([2, 4]), tmp_path / "again.pt2")
    torch.testing.assert_close(torch.export.load(str(again.path)).module()(x[:2]), net(x[:2]))


def test_torch_program_from_onnx_or_torchscript_is_a_clear_error(tmp_path: Path) -> None:
    onnx_ref = Reference("onnx", "onnx", "model.source.path", {}, onnx_path=tmp_path / "m.onnx")
    with pytest.raises(BuildError, match=r"model.source.path: .*torch program \(pt2\).*ONNX"):
        onnx_ref.export_program(_model([1, 4]), tmp_path / "model.pt2")
    script = torch.jit.script(_Net())
    ts_ref = Reference("pytorch", "torchscript", "model.source.path", {}, script, script, False)
    with pytest.raises(BuildError, match="TorchScript"):
        ts_ref.export_program(_model([1, 4]), tmp_path / "model.pt2")
