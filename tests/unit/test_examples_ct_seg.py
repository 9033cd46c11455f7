"""Unit tests of the ct_seg example: phantoms, U-Net, sliding window, Dice and training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from examples._io import save_state_dict_atomic
from examples.ct_seg import data, phantoms
from examples.ct_seg.train import dice_ce_loss, train
from examples.ct_seg.unet import PRESETS, PlainConvUNet3d, build, load

TINY: dict[str, Any] = {"features_per_stage": (4, 8), "strides": (1, 2)}
SMALL_PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def tiny_model() -> PlainConvUNet3d:
    torch.manual_seed(0)
    return build(**TINY).eval()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct") / "w.pt"
    return out, train(out, steps=2, seed=5, patch=SMALL_PATCH, **TINY)


def _torch_predict(model: nn.Module):
    @torch.no_grad()
    def predict(tile: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(tile)).numpy()

    return predict


def test_make_volume_is_deterministic() -> None:
    a_hu, a_lab = phantoms.make_volume(7, (24, 32, 28))
    b_hu, b_lab = phantoms.make_volume(7, (24, 32, 28))
    assert a_hu.shape == a_lab.shape == (24, 32, 28)
    assert a_hu.dtype == np.float32 and a_lab.dtype == np.int64
    np.testing.assert_array_equal(a_hu, b_hu)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_hu, _ = phantoms.make_volume(8, (24, 32, 28))
    assert not np.array_equal(a_hu, c_hu)


def test_make_volume_has_plausible_intensities_and_anatomy() -> None:
    hu, lab = phantoms.make_volume(3, (48, 48, 48))
    assert set(np.unique(lab).tolist()) == set(range(len(phantoms.CLASSES)))
    assert hu[0, 0, 0] < -900  # air in the corner
    medians = {c: float(np.median(hu[lab == i])) for i, c in enumerate(phantoms.CLASSES)}
    assert 70 < medians["liver"] < 130 and 90 < medians["spleen"] < 150
    assert 120 < medians["kidney_left"] < 200 and medians["spine"] > 300
    cols = {c: float(np.nonzero(lab == i)[2].mean()) for i, c in enumerate(phantoms.CLASSES)}
    rows = {c: float(np.nonzero(lab == i)[1].mean()) for i, c in enumerate(phantoms.CLASSES)}
    assert cols["liver"] < 24 < cols["spleen"]  # patient right on the image left
    assert cols["kidney_right"] < 24 < cols["kidney_left"]
    assert rows["spine"] > rows["kidney_left"] > rows["liver"]  # posterior is larger rows


def test_normalize_clips_and_standardises() -> None:
    pre = phantoms.PREPROCESSING
    out = phantoms.normalize(np.array([-5000.0, pre["mean"], 5000.0]))
    assert out.dtype == np.float32
    lo = (pre["clip_min"] - pre["mean"]) / pre["std"]
    hi = (pre["clip_max"] - pre["mean"]) / pre["std"]
    np.testing.assert_allclose(out, [lo, 0.0, hi], rtol=1e-6)


def test_preprocessing_returns_plain_constants() -> None:
    pre = phantoms.preprocessing()
    assert pre == phantoms.PREPROCESSING and pre is not phantoms.PREPROCESSING
    assert json.loads(json.dumps(pre)) == pre


def test_eval_set_shapes_and_disjoint_seeds() -> None:
    x, y = data.eval_set(samples=2, patch=SMALL_PATCH)
    assert x.shape == (2, 1, *SMALL_PATCH) and x.dtype == np.float32
    assert y.shape == (2, *SMALL_PATCH) and y.dtype == np.int64
    hu, lab = phantoms.make_volume(data.EVAL_SEED, SMALL_PATCH)
    np.testing.assert_array_equal(x[0, 0], phantoms.normalize(hu))
    np.testing.assert_array_equal(y[0], lab)
    assert data.eval_set()[0].shape[2:] == tuple(PRESETS["small"]["patch"])
    with pytest.raises(ValueError):
        data.eval_set(samples=2, seed=data.TRAIN_SEED_START - 1)


def test_calibration_set_seeds_disjoint_from_eval_and_train() -> None:
    x, y = data.calibration_set(samples=2, patch=SMALL_PATCH)
    assert x.shape == (2, 1, *SMALL_PATCH) and y.shape == (2, *SMALL_PATCH)
    cal = set(range(data.CALIBRATION_SEED, data.CALIBRATION_SEED + 8))
    ev = set(range(data.EVAL_SEED, data.EVAL_SEED + 4))
    assert not cal & ev
    assert int(data.train_seeds(0, 1000).min()) >= data.TRAIN_SEED_START
    with pytest.raises(ValueError, match="overlap"):
        data.calibration_set(samples=2, seed=data.EVAL_SEED)


def test_build_small_output_shape(tiny_model: PlainConvUNet3d) -> None:
    with torch.no_grad():
        out = tiny_model(torch.zeros(2, 1, *SMALL_PATCH))
    assert out.shape == (2, len(phantoms.CLASSES), *SMALL_PATCH)
    model = build()
    assert model.features_per_stage == [8, 16, 32, 64] and model.total_stride == 8
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 16, 24, 32)).shape == (1, 6, 16, 24, 32)


def test_build_totalsegmentator_preset_widths() -> None:
    model = build(preset="totalsegmentator", num_classes=25)
    enc = [m for stage in model.encoder for m in stage.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in enc[::2]] == [32, 64, 128, 256, 320, 320]
    assert [c.stride[0] for c in enc[::2]] == [1, 2, 2, 2, 2, 2]
    assert all(c.kernel_size == (3, 3, 3) for c in enc)
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(n.affine and n.eps == 1e-5 for n in norms)
    ups = [(t.in_channels, t.out_channels, t.stride) for t in model.transpconvs]
    assert ups[0] == (320, 320, (2, 2, 2)) and ups[-1] == (64, 32, (2, 2, 2))
    assert model.seg_layer.out_channels == 25 and model.total_stride == 32
    assert PRESETS["totalsegmentator"]["patch"] == (128, 128, 128)


def test_build_rejects_unknown_preset_and_argument() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        build(preset="huge")
    with pytest.raises(TypeError):
        build(depth=3)


def test_sliding_window_matches_direct_prediction(tiny_model: PlainConvUNet3d) -> None:
    x, _ = data.eval_set(samples=1, patch=SMALL_PATCH)
    with torch.no_grad():
        direct = tiny_model(torch.from_numpy(x)).argmax(1)[0].numpy()
    pred = data.sliding_window_predict(x[0], SMALL_PATCH, _torch_predict(tiny_model))
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(pred, direct)


def test_sliding_window_pads_small_and_tiles_large_volumes(tiny_model: PlainConvUNet3d) -> None:
    calls: list[tuple[int, ...]] = []
    inner = _torch_predict(tiny_model)

    def predict(tile: np.ndarray) -> np.ndarray:
        calls.append(tile.shape)
        return inner(tile)

    small = np.zeros((1, 10, 16, 12), dtype=np.float32)
    assert data.sliding_window_predict(small, SMALL_PATCH, predict).shape == (10, 16, 12)
    assert calls == [(1, 1, 16, 16, 16)]
    calls.clear()
    big = np.random.default_rng(0).normal(size=(1, 16, 24, 32)).astype(np.float32)
    assert data.sliding_window_predict(big, SMALL_PATCH, predict).shape == (16, 24, 32)
    assert len(calls) == 1 * 2 * 3


def test_sliding_window_constant_logits_reproduce_argmax() -> None:
    def predict(tile: np.ndarray) -> np.ndarray:
        out = np.zeros((1, 3, *tile.shape[2:]), dtype=np.float32)
        out[0, 2] = tile[0, 0]  # class 2 where the input is positive
        return out

    vol = np.where(np.arange(20)[:, None, None] < 9, 1.0, -1.0) * np.ones((20, 20, 20))
    pred = data.sliding_window_predict(vol[None], (8, 8, 8), predict, overlap=0.5)
    np.testing.assert_array_equal(pred, np.where(vol > 0, 2, 0))


def test_compute_steps_matches_nnunet() -> None:
    assert data.compute_steps((48, 48, 48), (48, 48, 48), 0.5) == [[0], [0], [0]]
    assert data.compute_steps((100, 64, 65), (64, 64, 64), 0.5) == [[0, 18, 36], [0], [0, 1]]
    g = data.gaussian_importance((8, 8, 8))
    assert g.max() == 1.0 and g.min() > 0 and g[4, 4, 4] == 1.0


def test_dice_per_class_edge_cases() -> None:
    ref = np.zeros((4, 4, 4), dtype=np.int64)
    ref[:2] = 1
    assert data.dice_per_class(ref, ref, 3) == {0: 1.0, 1: 1.0, 2: 1.0}
    pred = np.zeros_like(ref)
    scores = data.dice_per_class(pred, ref, 3)
    assert scores[1] == 0.0 and scores[2] == 1.0
    assert scores[0] == pytest.approx(2 * 32 / (64 + 32))
    half = ref.copy()
    half[1] = 0
    assert data.dice_per_class(half, ref, 2)[1] == pytest.approx(2 * 16 / (16 + 32))
    assert data.mean_foreground_dice({0: 0.0, 1: 1.0, 2: 0.5}) == 0.75
    with pytest.raises(ValueError):
        data.dice_per_class(ref, ref[:2], 2)


def test_dice_ce_loss_is_low_for_perfect_logits() -> None:
    target = torch.from_numpy(phantoms.make_volume(0, (8, 8, 8))[1])[None]
    perfect = torch.nn.functional.one_hot(target, 6).movedim(-1, 1).float() * 50
    assert float(dice_ce_loss(perfect, target)) < 1e-3
    assert float(dice_ce_loss(torch.zeros_like(perfect), target)) > 1.0


def test_train_writes_weights_and_sidecar(short_run: tuple[Path, dict]) -> None:
    path, metrics = short_run
    assert metrics["steps"] == 2 and metrics["patch"] == list(SMALL_PATCH)
    assert 0.0 <= metrics["dice_vs_labels_mean"] <= 1.0
    assert {f"dice_{c}" for c in phantoms.CLASSES[1:]} <= set(metrics)
    assert json.loads(Path(str(path) + ".json").read_text()) == metrics
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pt", "w.pt.json"]
    model = load(path, **TINY)
    assert not model.training


def test_train_is_deterministic(short_run: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = short_run
    train(tmp_path / "b.pt", steps=2, seed=5, patch=SMALL_PATCH, evaluate_after=False, **TINY)
    a = torch.load(path, weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_rejects_patch_not_divisible_by_stride(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible"):
        train(tmp_path / "x.pt", steps=1, patch=(20, 20, 20))
    assert list(tmp_path.iterdir()) == []


def test_save_state_dict_atomic_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    save_state_dict_atomic({"a": torch.ones(2)}, target)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_state_dict_atomic({"a": torch.zeros(2), "b": lambda: None}, target)  # type: ignore[dict-item]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


@pytest.mark.filterwarnings("ignore::Warning")  # tracer notes from the TorchScript exporter
def test_unet_exports_to_onnx_with_static_shape(
    tiny_model: PlainConvUNet3d, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.from_numpy(data.eval_set(samples=1, patch=SMALL_PATCH)[0])
    path = tmp_path / "unet.onnx"
    torch.onnx.export(tiny_model, (x,), str(path), dynamo=False, input_names=["ct"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 1, *SMALL_PATCH]

    def predict(tile: np.ndarray) -> np.ndarray:
        return session.run(None, {"ct": tile})[0]

    with torch.no_grad():
        expected = tiny_model(x).numpy()
    np.testing.assert_allclose(predict(x.numpy()), expected, atol=1e-4)
    np.testing.assert_array_equal(
        data.sliding_window_predict(x.numpy()[0], SMALL_PATCH, predict), expected.argmax(1)[0]
    )
