"""The whole-volume pipeline's step library (orchestrator/device/agent/pipeline.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from examples.ct_seg.data import sliding_window_predict
from examples.ct_seg.phantoms import make_volume, normalize
from orchestrator.core.schema import PIPELINE_STEPS
from orchestrator.device.agent import pipeline as P

PATCH = (16, 16, 16)
CT = {"low": -1000.0, "high": 1000.0, "mean": 180.0, "std": 170.0}


def _predict(tiles: np.ndarray) -> np.ndarray:
    """A deterministic stand-in network: 3 classes from intensity bands, smooth in space."""
    x = tiles[:, 0]
    z = np.linspace(-1, 1, x.shape[1], dtype=np.float32)[None, :, None, None]
    logits = np.stack([-x, x - 0.5 + 0.3 * z, 1.0 - 2.0 * np.abs(x - 1.5)], axis=1)
    return logits.astype(np.float32)


def _steps(**window: object) -> list[dict]:
    return [
        {"name": "clip_normalize", "options": CT},
        {"name": "sliding_window", "options": {"overlap": 0.5, **window}},
        {"name": "argmax"},
        {"name": "label_map", "options": {"dtype": "uint8"}},
    ]


def test_pipeline_steps_schema_matches_the_device_library() -> None:
    assert set(PIPELINE_STEPS) == set(P.STEPS)
    for name, (role, schema) in PIPELINE_STEPS.items():
        device_role, defaults = P.STEPS[name]
        assert role == device_role
        fields = {f.name: f for f in dataclasses.fields(schema)}
        assert set(fields) == set(defaults), name
        for key, value in defaults.items():
            f = fields[key]
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            assert default == value, f"{name}.{key}"


def test_pipeline_reference_equals_the_examples_sliding_window() -> None:
    hu, _ = make_volume(3, (24, 30, 28))
    labels, info = P.run_pipeline(_steps(), hu, _predict, PATCH, None, 3)
    want = sliding_window_predict(normalize(hu), PATCH, _predict, overlap=0.5)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, want)
    assert info["windows"] == 18 and info["skipped"] == 0


@pytest.mark.parametrize(
    "option", [{"batch": 3}, {"overlap_io": True}, {"batch": 2, "overlap_io": True}]
)
def test_pipeline_optimisation_gives_the_reference_labels(option: dict) -> None:
    hu, _ = make_volume(4, (24, 30, 28))
    want, _ = P.run_pipeline(_steps(), hu, _predict, PATCH, None, 3)
    got, info = P.run_pipeline(_steps(**option), hu, _predict, PATCH, None, 3)
    np.testing.assert_array_equal(got, want)
    assert info["calls"] == -(-info["windows"] // option.get("batch", 1))


def test_pipeline_skip_outside_body_skips_air_windows_only() -> None:
    hu, _ = make_volume(5, (20, 20, 20))
    volume = np.full((20, 60, 20), -1000.0, dtype=np.float32)
    volume[:, 20:40] = hu  # air on both sides of the body
    want, _ = P.run_pipeline(_steps(), volume, _predict, PATCH, None, 3)
    got, info = P.run_pipeline(
        _steps(skip_outside_body=True, body_threshold=-500.0), volume, _predict, PATCH, None, 3
    )
    assert info["skipped"] > 0
    assert min(P.dice_scores(got, want, 3)) > 0.98


def test_pipeline_resample_returns_labels_on_the_input_grid() -> None:
    hu, _ = make_volume(6, (30, 40, 40))
    steps = _steps()
    steps.insert(1, {"name": "resample", "options": {"spacing": [1.5, 2.0, 2.0]}})
    labels, info = P.run_pipeline(steps, hu, _predict, PATCH, [1.0, 1.0, 1.0], 3)
    assert info["grid"] == [20, 20, 20]
    assert labels.shape == hu.shape


def test_pipeline_largest_component_numpy_fallback_matches_scipy(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 14, 10)) > 0.6).astype(np.int64) * 2
    labels[rng.random(labels.shape) > 0.9] = 1
    with_scipy = P.largest_component(labels, [])
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    np.testing.assert_array_equal(P.largest_component(labels, []), with_scipy)


def test_pipeline_refuses_two_inference_steps_and_postprocessing_first() -> None:
    with pytest.raises(P.PipelineError, match="exactly one sliding_window"):
        P.check_steps([{"name": "sliding_window"}, {"name": "sliding_window"}])
    with pytest.raises(P.PipelineError, match="wrong side"):
        P.check_steps([{"name": "argmax"}, {"name": "sliding_window"}])
    with pytest.raises(P.PipelineError, match="no option 'size'"):
        P.check_steps([{"name": "sliding_window", "options": {"size": 3}}])


def test_pipeline_reference_steps_turn_every_optimisation_off() -> None:
    ref = P.reference_steps(_steps(batch=4, skip_outside_body=True, overlap_io=True))
    window = ref[1]["options"]
    assert window["batch"] == 1 and window["skip_outside_body"] is False
    assert window["overlap_io"] is False and window["overlap"] == 0.5
