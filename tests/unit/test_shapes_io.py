"""Shapes, batching, loaders, user metrics and TensorRT profiles, without building."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.build.batching import calibration_batches, chunks, padding, run_batched
from orchestrator.build.loaders import normalise
from orchestrator.build.metrics_user import user_metrics
from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import DynamicDim, MetricRef, ModelConfig, TargetConfig, TensorSpec
from orchestrator.core.shapes import declared_batches, input_shapes, profiles
from orchestrator.errors import BuildError
from orchestrator.passes.base import calibration_rows, first_rows
from targets.tensorrt_jetson import JetsonOrinTarget


def _model(batch: int | str = "batch", time: int | str = 100) -> ModelConfig:
    dyn = {"batch": DynamicDim(1, 8, 32)} if batch == "batch" else {}
    if time == "time":
        dyn["time"] = DynamicDim(50, 100, 400)
    return ModelConfig(
        name="m",
        task="classification",
        inputs=[
            TensorSpec("imu", [batch, 6, time], "float32", dyn),
            TensorSpec(
                "meta", [batch, 3], "float32", {"batch": DynamicDim(1, 8, 32)} if dyn else {}
            ),
        ],
        outputs=[TensorSpec("logits", [batch, 4])],
    )


def test_declared_batches_are_min_opt_max_of_a_dynamic_batch_or_the_static_size() -> None:
    assert declared_batches(_model()) == [1, 8, 32]
    assert declared_batches(_model(batch=16)) == [16]
    assert declared_batches(_model(), [4, 4, 2]) == [4, 2]
    assert input_shapes(_model(time="time"), "opt", 32) == {"imu": [32, 6, 100], "meta": [32, 3]}


def test_tensorrt_profile_comes_from_min_opt_max_of_every_dynamic_input() -> None:
    assert profiles(_model(time="time")) == {
        "imu": {"min": [1, 6, 50], "opt": [8, 6, 100], "max": [32, 6, 400]},
        "meta": {"min": [1, 3], "opt": [8, 3], "max": [32, 3]},
    }
    assert profiles(_model(batch=1)) == {}


def test_jetson_engine_settings_write_the_declared_profile(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["imu"], ["r"], axes=[2], keepdims=0),
            helper.make_node("Concat", ["r", "meta"], ["logits"], axis=1),
        ],
        "g",
        [
            helper.make_tensor_value_info("imu", TensorProto.FLOAT, ["batch", 6, "time"]),
            helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["batch", 3]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 9])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    config = TargetConfig(name="jetson", family="jetson_orin", device="GPU")
    target = JetsonOrinTarget(config, _model(time="time"))
    settings = target.engine_settings(ModelFile(path, "onnx", "fp16"))
    assert settings.profiles == profiles(_model(time="time"))
    # without the spec (an ONNX source) a dynamic dim beyond the batch has no range
    with pytest.raises(BuildError, match="dynamic dimensions"):
        JetsonOrinTarget(config).engine_settings(ModelFile(path, "onnx", "fp16"))


def test_dla_runs_only_static_shapes() -> None:
    assert JetsonOrinTarget.static_shapes_reason("DLA0")
    assert JetsonOrinTarget.static_shapes_reason("GPU") is None


def test_run_batched_chunks_pads_a_static_batch_and_splits_outputs_per_sample() -> None:
    samples = [{"x": np.full((1, 2), i, dtype=np.float32)} for i in range(5)]
    seen: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen.append(len(inputs["x"]))
        return [inputs["x"] * 2]

    out = run_batched(run, samples, 4, pad=True)
    assert seen == [4, 4] and len(out) == 5
    assert [float(o[0][0, 0]) for o in out] == [0, 2, 4, 6, 8]
    seen.clear()
    run_batched(run, samples, 4, pad=False)
    assert seen == [4, 1]
    assert [len(c["x"]) for c, _ in chunks(samples, 3, pad=True)] == [3, 3]
    assert padding(samples, 4, pad=True) == 3 and padding(samples, 4, pad=False) == 0
    assert padding(samples, 5, pad=True) == 0
    model = _model(batch=4)
    assert [len(c["imu"]) for c in calibration_batches(model, [_imu(i) for i in range(6)])] == [
        4,
        4,
    ]


def test_calibration_batches_fill_static_batches_and_stack_dynamic_ones_to_the_max() -> None:
    samples = [_imu(i) for i in range(6)]
    static = calibration_batches(_model(batch=4), samples)
    assert [b["imu"][:, 0, 0].tolist() for b in static] == [[0, 1, 2, 3], [4, 5, 0, 1]]
    dynamic = calibration_batches(_model(), [_imu(i) for i in range(40)])  # max 32
    assert [len(b["imu"]) for b in dynamic] == [32, 8]
    assert [len(b["meta"]) for b in dynamic] == [32, 8]
    assert calibration_rows(dynamic) == 40
    assert [len(b["imu"]) for b in first_rows(dynamic, 10)] == [32]
    assert len(first_rows(dynamic, 33)) == 2 and first_rows(dynamic, 0) == dynamic


def _imu(i: int) -> dict[str, np.ndarray]:
    return {"imu": np.full((1, 6, 100), i, np.float32), "meta": np.zeros((1, 3), np.float32)}


NAMES = ["imu", "meta"]
RANKS = {"imu": 3, "meta": 2}


def test_loader_may_return_torch_tensors() -> None:
    samples, labels = normalise(
        ({"imu": torch.ones(3, 6, 100), "meta": torch.zeros(3, 3)}, torch.tensor([0, 1, 2])),
        NAMES,
        "model.data.eval",
    )
    assert len(samples) == 3 and samples[0]["imu"].shape == (1, 6, 100)
    assert isinstance(labels, np.ndarray) and labels.tolist() == [0, 1, 2]


def test_loader_may_return_a_list_of_samples_with_or_without_batch_axis() -> None:
    raw = [
        {"imu": np.zeros((6, 100), np.float32), "meta": np.zeros(3, np.float32)},
        {"imu": np.zeros((1, 6, 120), np.float32), "meta": torch.zeros(1, 3)},
    ]
    samples, labels = normalise((raw, [1, 0]), NAMES, "model.data.eval", RANKS)
    assert [s["imu"].shape for s in samples] == [(1, 6, 100), (1, 6, 120)]
    assert labels is not None and labels.tolist() == [1, 0]
    with pytest.raises(BuildError, match=r"model.data.eval\[0\]: input 'imu'"):
        normalise([{"imu": np.zeros(100), "meta": np.zeros(3)}], NAMES, "model.data.eval", RANKS)


def test_loader_may_return_a_dataloader_of_batches() -> None:
    ds = torch.utils.data.TensorDataset(torch.randn(7, 5), torch.arange(7))
    samples, labels = normalise(torch.utils.data.DataLoader(ds, batch_size=3), ["x"], "k")
    assert len(samples) == 7 and samples[6]["x"].shape == (1, 5)
    assert labels is not None and labels.tolist() == list(range(7))


def test_loader_of_the_wrong_kind_names_the_key_and_what_it_found() -> None:
    with pytest.raises(BuildError, match=r"model.data.eval: expected an array.*found int"):
        normalise(3, ["x"], "model.data.eval")
    with pytest.raises(BuildError, match="3 samples but 2 labels"):
        normalise((np.zeros((3, 5)), [0, 1]), ["x"], "model.data.eval")


def metric_pair(outputs, labels, scale=1.0):  # type: ignore[no-untyped-def]
    return {"mean_out": float(outputs["y"].mean()) * scale, "n": len(labels)}


def test_user_metrics_report_artifact_reference_and_drop() -> None:
    ref = MetricRef(fn=f"{__name__}:metric_pair", args={"scale": 2.0}, names=["mean_out", "n"])
    got = user_metrics([ref], {"y": np.ones(4)}, {"y": np.full(4, 1.5)}, np.zeros(4))
    assert got["mean_out"] == 2.0 and got["reference_mean_out"] == 3.0
    assert got["mean_out_drop"] == 1.0 and got["n"] == 4
    wrong = MetricRef(fn=f"{__name__}:metric_pair", names=["auroc"])
    with pytest.raises(BuildError, match="expected values named auroc"):
        user_metrics([wrong], {"y": np.ones(4)}, {"y": np.ones(4)}, np.zeros(4))
