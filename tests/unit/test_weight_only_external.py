"""ort_weight_only writes the weights beside the graph (model.onnx.data) by default: the same
outputs as a single-file graph, the data file readable like the graph and carried along."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.model_file import ModelFile
from orchestrator.passes.base import PassContext
from orchestrator.passes.onnxruntime.weight_only import OrtWeightOnly, WeightOnlyOptions

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _matmul_model(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("external", [True, False])
def test_weight_only_graph_with_and_without_external_data(tmp_path: Path, external: bool) -> None:
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    _matmul_model(src)
    (src.parent / "config.json").write_text("{}")
    work = tmp_path / "out"
    work.mkdir()
    ctx = PassContext(workdir=work, input_names=["x"], calibration=list, threads=1)
    options = WeightOnlyOptions(bits=8, external_data=external)
    out = OrtWeightOnly().run(
        ModelFile(src, "onnx", "fp32", (src.parent / "config.json",)), options, ctx
    )
    names = {p.name for p in out.extra}
    data = work / "model.onnx.data"
    if external:
        assert names == {"model.onnx.data", "config.json"} and data.is_file()
        assert data.stat().st_mode & 0o777 == 0o644
        assert out.path.stat().st_size < data.stat().st_size  # the weights are outside
    else:
        assert names == {"config.json"} and not data.exists()
    proto = onnx.load(str(out.path), load_external_data=False)
    assert [n.op_type for n in proto.graph.node] == ["MatMulNBits"]
    x = np.random.default_rng(1).standard_normal((1, 128)).astype(np.float32)
    got, want = _run(out.path, x), _run(src, x)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # 8-bit blocks: close
