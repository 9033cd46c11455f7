"""The recipe pass library on small ONNX graphs made here: FP16, onnxslim, .ort, TensorRT Q/DQ,
and the evaluation hook accuracy-controlled quantization uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from orchestrator.core.model_file import ModelFile
from orchestrator.errors import BuildError
from orchestrator.passes.base import PassContext, registered_passes
from orchestrator.passes.common.evaluation import make_evaluation
from orchestrator.passes.onnxruntime.float16 import topological_sort

RNG = np.random.default_rng(0)


def _conv_model(path: Path, foldable: bool = False) -> Path:
    """x [1, 2, 16] -> Conv(3 out, k3, pad 1) + bias -> Relu -> (+ const*const) -> y [1, 3, 16]."""
    w = numpy_helper.from_array(RNG.standard_normal((3, 2, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.standard_normal(3).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r" if foldable else "y"]),
    ]
    inits = [w, b]
    if foldable:
        c1 = numpy_helper.from_array(np.full((1, 3, 1), 0.5, np.float32), "c1")
        c2 = numpy_helper.from_array(np.full((1, 3, 1), 4.0, np.float32), "c2")
        inits += [c1, c2]
        nodes += [
            helper.make_node("Mul", ["c1", "c2"], ["k"]),
            helper.make_node("Add", ["r", "k"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _samples(n: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.standard_normal((1, 2, 16)).astype(np.float32)} for _ in range(n)]


def _run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


def _apply(name: str, source: Path, tmp: Path, **options: object) -> ModelFile:
    cls = registered_passes()[name]
    work = tmp / name
    work.mkdir()
    ctx = PassContext(work, ["x"], lambda: _samples(16))
    return cls().run(ModelFile(source, "onnx", "fp32"), cls.Options(**options), ctx)


def test_onnx_fp16_keeps_float32_io_and_stores_float16_weights(tmp_path: Path) -> None:
    src = _conv_model(tmp_path / "m.onnx")
    out = _apply("onnx_fp16", src, tmp_path)
    assert out.precision == "fp16"
    proto = onnx.load(str(out.path))
    io = [*proto.graph.input, *proto.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {TensorProto.FLOAT}
    weights = {i.name: i.data_type for i in proto.graph.initializer}
    assert weights["w"] == TensorProto.FLOAT16
    onnx.checker.check_model(proto)  # topologically sorted, valid
    feed = _samples(1)[0]
    np.testing.assert_allclose(_run(out.path, feed), _run(src, feed), atol=2e-2)


def test_topological_sort_puts_producers_first_and_keeps_sorted_order() -> None:
    nodes = [
        helper.make_node("Relu", ["a"], ["y"], name="second"),
        helper.make_node("Neg", ["x"], ["a"], name="first"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["first", "second"]
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["first", "second"]


def test_topological_sort_reports_an_input_nothing_produces() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["ghost"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(BuildError, match="ghost"):
        topological_sort(graph)


def test_onnxslim_folds_constants_and_keeps_outputs(tmp_path: Path) -> None:
    src = _conv_model(tmp_path / "m.onnx", foldable=True)
    out = _apply("onnxslim", src, tmp_path)
    before = {n.op_type for n in onnx.load(str(src)).graph.node}
    after = [n.op_type for n in onnx.load(str(out.path)).graph.node]
    assert "Mul" in before and "Mul" not in after
    feed = _samples(1)[0]
    np.testing.assert_allclose(_run(out.path, feed), _run(src, feed), atol=1e-5)


@pytest.mark.parametrize(
    ("style", "config"),
    [
        ("fixed", "required_operators.config"),
        ("runtime", "required_operators.with_runtime_opt.config"),
    ],
)
def test_ort_format_writes_ort_model_and_operators_config(
    tmp_path: Path, style: str, config: str
) -> None:
    src = _conv_model(tmp_path / "m.onnx")
    out = _apply("ort_format", src, tmp_path, optimization_style=style)
    assert out.format == "ort" and out.path.name == "model.ort"
    assert [p.name for p in out.extra] == [config]
    ops = [line for line in out.extra[0].read_text().splitlines() if not line.startswith("#")]
    assert any("Conv" in line for line in ops)
    assert str(tmp_path) not in out.extra[0].read_text()  # no build-machine paths
    feed = _samples(1)[0]
    np.testing.assert_allclose(_run(out.path, feed), _run(src, feed), atol=1e-5)


def test_trt_quantize_qdq_is_symmetric_per_channel_with_float_bias(tmp_path: Path) -> None:
    src = _conv_model(tmp_path / "m.onnx")
    out = _apply("trt_quantize_qdq", src, tmp_path)
    assert out.precision == "int8"
    proto = onnx.load(str(out.path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq, "expected explicit Q/DQ nodes"
    for node in dq:
        assert inits.get(node.input[0], np.zeros(1, np.int8)).dtype != np.int32  # no INT32 bias
        if len(node.input) > 2:
            assert not np.any(inits[node.input[2]])  # zero point 0: symmetric
    weight_scales = [inits[n.input[1]] for n in dq if n.input[0] in inits]
    assert any(s.size == 3 for s in weight_scales)  # one scale per output channel
    assert inits["b"].dtype == np.float32
    feed = _samples(1)[0]
    ref = _run(src, feed)
    assert np.abs(_run(out.path, feed) - ref).max() < 0.1 * np.abs(ref).max() + 1e-3


def test_static_qdq_for_other_runtimes_is_not_offered_to_tensorrt() -> None:
    passes = registered_passes()
    assert "tensorrt" not in passes["ort_quantize_static"].runtimes
    assert passes["trt_quantize_qdq"].runtimes == ("tensorrt",)
    assert "onnxruntime_mobile" in passes["ort_quantize_static"].runtimes


def test_evaluation_scores_classification_against_labels_or_reference() -> None:
    samples = [{"x": np.zeros((1, 2), np.float32)} for _ in range(3)]
    logits = [np.array([[2.0, 0.0]]), np.array([[0.0, 2.0]]), np.array([[2.0, 0.0]])]
    labelled = make_evaluation("classification", samples, np.array([0, 1, 1]), [], 2)
    outputs = iter(logits)
    assert labelled.metric == "accuracy"
    assert labelled(lambda s: [next(outputs)]) == pytest.approx(2 / 3)
    reference = [[lg] for lg in logits]
    unlabelled = make_evaluation("classification", samples, None, reference, 2)
    outputs = iter(logits)
    assert unlabelled.metric == "agreement"
    metric, per_item = unlabelled.score(lambda s: [next(outputs)])
    assert metric == 1.0 and per_item == [1.0, 1.0, 1.0]
    parity = make_evaluation("classification", samples, np.array([1, 0, 1]), reference, 2)
    assert parity.against_reference().metric == "agreement"
    outputs = iter(logits)
    assert parity(lambda s: [next(outputs)]) == 0.0  # against the (disagreeing) labels
    outputs = iter(logits)
    assert parity.against_reference()(lambda s: [next(outputs)]) == 1.0


def test_evaluation_scores_segmentation_by_foreground_dice_of_chosen_items() -> None:
    labels = np.zeros((2, 4, 4, 4), np.int64)
    labels[:, :2] = 1
    samples = [{"ct": np.zeros((1, 1, 4, 4, 4), np.float32)} for _ in range(2)]
    evaluation = make_evaluation("segmentation", samples, labels, [], 2)
    perfect = np.stack([labels[0] == 0, labels[0] == 1]).astype(np.float32)[None]
    assert evaluation.score(lambda s: [perfect], [1]) == (1.0, [1.0])
    empty = np.stack([np.ones((4, 4, 4)), np.zeros((4, 4, 4))]).astype(np.float32)[None]
    assert evaluation.score(lambda s: [empty])[0] == 0.0


def test_nncf_quantize_accuracy_refuses_to_run_without_evaluation_data(tmp_path: Path) -> None:
    cls = registered_passes()["nncf_quantize_accuracy"]
    ctx = PassContext(tmp_path, ["x"], _samples)
    model = ModelFile(tmp_path / "model.xml", "openvino_ir", "fp32")
    with pytest.raises(BuildError, match="evaluation data"):
        cls().run(model, cls.Options(), ctx)


def test_nncf_quantize_accuracy_keeps_the_metric_within_max_drop(tmp_path: Path) -> None:
    import openvino as ov

    w = numpy_helper.from_array(RNG.standard_normal((4, 2, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
            helper.make_node("ReduceMean", ["c"], ["y"], axes=[2], keepdims=0),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    onnx.save(proto, str(tmp_path / "m.onnx"))
    ir = tmp_path / "m.xml"
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(ir))
    samples = _samples(24)
    reference = [[_run(tmp_path / "m.onnx", s)] for s in samples]
    labels = RNG.integers(0, 4, len(samples))  # unrelated to the model: accuracy is no guide
    evaluation = make_evaluation("classification", samples, labels, reference, 4)
    cls = registered_passes()["nncf_quantize_accuracy"]
    work = tmp_path / "work"
    work.mkdir()
    ctx = PassContext(work, ["x"], lambda: samples, evaluate=evaluation)
    options = cls.Options(max_drop=0.0, against="reference")
    out = cls().run(ModelFile(ir, "openvino_ir", "fp32"), options, ctx)
    assert out.precision == "int8"
    compiled = ov.Core().compile_model(str(out.path), "CPU")
    request = compiled.create_infer_request()
    parity = evaluation.against_reference()
    metric = parity(lambda s: [np.asarray(request.infer(s)[compiled.outputs[0]])])
    assert metric >= 1.0  # agreement with the FP32 model may not drop at all


def test_evaluation_runs_a_static_batch_in_full_chunks_and_scores_only_real_samples() -> None:
    # the class is the sign of x: samples 0, 1, 0, 1, 0 against labels that say so
    samples = [{"x": np.full((1, 1), i % 2 * 2 - 1, np.float32)} for i in range(5)]
    evaluation = make_evaluation(
        "classification", samples, np.array([0, 1, 0, 1, 0]), [], 2, 4, True
    )
    seen: list[int] = []

    def predict(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen.append(len(inputs["x"]))
        return [np.concatenate([-inputs["x"], inputs["x"]], axis=1)]

    metric, per_item = evaluation.score(predict, [0, 1, 2, 3, 4])
    assert seen == [4, 4] and per_item == [1.0] * 5 and metric == 1.0
    seen.clear()
    assert evaluation.against_reference().batch == 4
    assert evaluation.score(predict, [3])[1] == [1.0] and seen == [4]
