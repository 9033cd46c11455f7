"""Unit tests of the posture_cnn example: BasicMotions loader, model and training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from examples._io import save_state_dict_atomic
from examples.posture_cnn import data
from examples.posture_cnn.model import build, load
from examples.posture_cnn.train import train

HEADER = (
    "#comment\n@problemName Tiny\n@univariate false\n@dimensions 6\n"
    "@seriesLength 100\n@classLabel true Standing Running Walking Badminton\n@data\n"
)


def _line(label: str = "Running", values: int = 100, channels: int = 6) -> str:
    chan = ",".join(["0.5"] * values)
    return ":".join([chan] * channels) + f":{label}\n"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("posture") / "w.pt"
    return out, train(out, epochs=2, seed=3, width=8)


def test_load_split_shapes_and_classes() -> None:
    assert data.CLASSES == ["Standing", "Running", "Walking", "Badminton"]
    for split in ("train", "test"):
        x, y = data.load_split(split)
        assert x.shape == (40, 6, 100) and x.dtype == np.float32
        assert y.shape == (40,) and y.dtype == np.int64
        assert np.bincount(y, minlength=4).tolist() == [10, 10, 10, 10]
        assert np.isfinite(x).all()


def test_load_split_first_train_series_matches_file() -> None:
    x, y = data.load_split("train")
    with (data.DATA_DIR / "BasicMotions_TRAIN.ts").open() as handle:
        first = next(line for line in handle if line[0] not in "#@").strip().split(":")
    assert y[0] == data.CLASSES.index(first[-1])
    np.testing.assert_allclose(x[0, 0, :3], [float(v) for v in first[0].split(",")[:3]])
    np.testing.assert_allclose(x[0, 5, -1], float(first[5].split(",")[-1]), rtol=1e-6)


def test_load_split_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split("validation")


def test_parse_ts_reports_file_and_line_for_short_channel(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ts"
    bad.write_text(HEADER + _line() + _line(values=99))
    with pytest.raises(data.TsFormatError, match=r"bad\.ts:9: channel 0 has 99 values"):
        data.parse_ts(bad)


def test_parse_ts_rejects_wrong_channel_count_and_label(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ts"
    bad.write_text(HEADER + _line(channels=5))
    with pytest.raises(ValueError, match=r"bad\.ts:8: expected 6 channels"):
        data.parse_ts(bad)
    bad.write_text(HEADER + _line(label="Sleeping"))
    with pytest.raises(ValueError, match=r"bad\.ts:8: unknown class label 'Sleeping'"):
        data.parse_ts(bad)
    bad.write_text(HEADER + _line().replace("0.5", "abc", 1))
    with pytest.raises(ValueError, match=r"bad\.ts:8: channel 0"):
        data.parse_ts(bad)


def test_parse_ts_reads_valid_file(tmp_path: Path) -> None:
    good = tmp_path / "good.ts"
    good.write_text(HEADER + _line("Walking") + "\n" + _line("Standing"))
    classes, x, labels = data.parse_ts(good)
    assert classes == data.CLASSES
    assert x.shape == (2, 6, 100) and labels == ["Walking", "Standing"]


def test_channel_stats_match_train_split() -> None:
    mean, std = data.channel_stats()
    x, _ = data.load_split("train")
    assert mean.shape == (6,) and std.shape == (6,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, x.std(axis=(0, 2)), rtol=1e-4)
    z = data.normalize(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1.0, atol=1e-4)


def test_eval_set_is_normalized_test_split() -> None:
    x, y = data.eval_set()
    raw, y_test = data.load_split("test")
    assert x.shape == (40, 6, 100) and x.dtype == np.float32
    np.testing.assert_array_equal(y, y_test)
    np.testing.assert_allclose(x, data.normalize(raw))


def test_calibration_set_draws_only_from_train() -> None:
    x, y = data.calibration_set(samples=32, seed=0)
    assert x.shape == (32, 6, 100) and x.dtype == np.float32 and y.shape == (32,)
    train_rows = {r.tobytes() for r in data.normalize(data.load_split("train")[0])}
    test_rows = {r.tobytes() for r in data.eval_set()[0]}
    assert all(r.tobytes() in train_rows for r in x)
    assert not any(r.tobytes() in test_rows for r in x)
    x2, _ = data.calibration_set(samples=32, seed=0)
    np.testing.assert_array_equal(x, x2)
    assert len(data.calibration_set(samples=100)[0]) == 100


def test_preprocessing_is_plain_json() -> None:
    pre = data.preprocessing()
    assert pre["type"] == "per_channel_standardize"
    assert pre["channels"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert all(type(v) is float for v in pre["mean"] + pre["std"])
    assert json.loads(json.dumps(pre)) == pre
    np.testing.assert_allclose(pre["mean"], data.channel_stats()[0])


def test_build_output_shape() -> None:
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 6, 100)).shape == (3, 4)
    assert build(width=8, classes=5)(torch.zeros(2, 6, 100)).shape == (2, 5)


def test_train_writes_weights_and_sidecar(short_run: tuple[Path, dict]) -> None:
    path, metrics = short_run
    assert set(metrics) >= {"train_accuracy", "test_accuracy", "epochs", "seconds"}
    assert metrics["epochs"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert json.loads(Path(str(path) + ".json").read_text()) == metrics
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pt", "w.pt.json"]
    model = load(path, width=8)
    assert not model.training
    with torch.no_grad():
        assert model(torch.from_numpy(data.eval_set()[0][:2])).shape == (2, 4)


def test_train_is_deterministic(short_run: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = short_run
    train(tmp_path / "again.pt", epochs=2, seed=3, width=8)
    a = torch.load(path, weights_only=True)
    b = torch.load(tmp_path / "again.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_replaces_existing_weights_atomically(tmp_path: Path) -> None:
    target = tmp_path / "keep.pt"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError):
        train(target, epochs=-1)
    assert target.read_bytes() == b"previous"
    train(target, epochs=1, width=8)
    assert load(target, width=8) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pt", "keep.pt.json"]


def test_save_state_dict_atomic_keeps_old_file_when_save_fails(tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    save_state_dict_atomic({"a": torch.ones(2)}, target)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_state_dict_atomic({"b": lambda: None}, target)  # type: ignore[dict-item]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.filterwarnings("ignore::Warning")  # tracer notes from the TorchScript exporter
def test_build_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build(width=8).eval()
    x = torch.from_numpy(data.eval_set()[0][:1])
    path = tmp_path / "posture.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["imu"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"imu": x.numpy()})[0], expected, atol=1e-5)
