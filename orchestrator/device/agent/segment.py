"""A bundle's whole-volume pipeline on a volume file: NIfTI (``.nii``, ``.nii.gz``) or NumPy.

The bundle's runtime.json carries the pipeline (steps and options, the model's patch,
input and classes; see :mod:`.pipeline`), so a device segments a volume exactly as
validation did. NIfTI files are read and written with nibabel (``pip install nibabel``):
the label map is written on the input's grid with the input's affine. NIfTI's voxel
order ``(i, j, k)`` becomes the pipeline's ``[D, H, W] = (k, j, i)`` and back.

Standard library, numpy and the runtime (nibabel for NIfTI), Python 3.8+.
"""

from __future__ import annotations

import os
import time

from . import pipeline as steps_lib
from .files import read_json
from .runners import RunnerError, load

NIFTI = (".nii", ".nii.gz")


class SegmentError(RunnerError):
    """A volume the pipeline cannot take, a bundle without a pipeline."""


def _nibabel():
    try:
        import nibabel
    except ImportError as exc:
        raise SegmentError("reading NIfTI needs nibabel: pip install nibabel") from exc
    return nibabel


def read_volume(path: str) -> tuple:
    """(volume ``[D, H, W]`` float32, spacing in mm ``[D, H, W]`` or None, the NIfTI image or
    None)."""
    import numpy as np

    if path.endswith(NIFTI):
        image = _nibabel().load(path)
        data = np.asarray(image.get_fdata(dtype=np.float32))
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise SegmentError(f"{path}: expected a 3-D image, found shape {list(data.shape)}")
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        return np.ascontiguousarray(data.transpose(2, 1, 0)), zooms[::-1], image
    if path.endswith(".npz"):
        with np.load(path) as npz:
            volume = np.asarray(npz["volume"], dtype=np.float32)
            spacing = [float(s) for s in npz["spacing"]] if "spacing" in npz.files else None
        return volume, spacing, None
    if path.endswith(".npy"):
        return np.asarray(np.load(path), dtype=np.float32), None, None
    raise SegmentError(f"{path}: expected a .nii, .nii.gz, .npz or .npy volume")


def write_labels(path: str, labels, like=None) -> None:
    """The label map to ``path``: NIfTI with ``like``'s affine (and header), or .npy/.npz."""
    import numpy as np

    if path.endswith(NIFTI):
        nib = _nibabel()
        data = np.ascontiguousarray(np.asarray(labels).transpose(2, 1, 0))
        affine = like.affine if like is not None else np.eye(4)
        header = like.header.copy() if like is not None else None
        image = nib.Nifti1Image(data, affine, header)
        image.set_data_dtype(data.dtype)
        image.header.set_intent("label")
        image.header["scl_slope"] = 1
        image.header["scl_inter"] = 0
        nib.save(image, path)
        return
    if path.endswith(".npz"):
        np.savez_compressed(path, labels=np.asarray(labels))
        return
    np.save(path, np.asarray(labels))


def bundle_pipeline(runtime: dict) -> dict:
    pipe = runtime.get("pipeline")
    if not isinstance(pipe, dict):
        raise SegmentError(
            f"deployment {runtime.get('deployment')} ships no pipeline (model.pipeline)"
        )
    return pipe


def runner_segment(runner, pipe: dict, volume, spacing=None) -> tuple:
    """(label map, timings and counts) of ``volume`` through a loaded runner."""
    predict = steps_lib.runner_predict(runner, str(pipe["input"]), pipe.get("batch"))
    try:
        return steps_lib.run_pipeline(
            list(pipe["steps"]),
            volume,
            predict,
            tuple(int(d) for d in pipe["patch"]),
            spacing,
            int(pipe.get("classes") or 2),
        )
    except steps_lib.PipelineError as exc:
        raise SegmentError(str(exc)) from exc


def segment_file(
    folder: str, source: str, dest: str, cache: str | None = None, runtime: dict | None = None
) -> dict:
    """Segment the volume file ``source`` with the bundle (or artifact) folder ``folder``
    and write the label map to ``dest``; a JSON-able report."""
    import numpy as np

    runtime = runtime if runtime is not None else read_json(os.path.join(folder, "runtime.json"))
    pipe = bundle_pipeline(runtime)
    start = time.perf_counter()
    volume, spacing, image = read_volume(source)
    read_s = time.perf_counter() - start
    runner = load(folder, runtime, cache)
    labels, info = runner_segment(runner, pipe, volume, spacing)
    start = time.perf_counter()
    write_labels(dest, labels, image)
    names = list(pipe.get("labels") or [])
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=len(names))
    return {
        "result": "ok",
        "deployment": runtime.get("deployment"),
        "input": source,
        "output": dest,
        "shape": list(volume.shape),
        "spacing": spacing,
        "voxels": {(names[c] if c < len(names) else str(c)): int(n) for c, n in enumerate(counts)},
        "read_s": round(read_s, 4),
        "write_s": round(time.perf_counter() - start, 4),
        "pipeline": info,
        "runtime": runner.describe(),
    }


def pipeline_smoke(folder: str, runner, runtime: dict, smoke: dict) -> dict | None:
    """The bundle's pipeline smoke test (a whole volume against the label map the build
    gave it), or None when the bundle ships no pipeline."""
    import numpy as np

    check = smoke.get("pipeline")
    pipe = runtime.get("pipeline")
    if not isinstance(check, dict) or not isinstance(pipe, dict):
        return None
    smoke_dir = os.path.join(folder, "smoke")
    with np.load(os.path.join(smoke_dir, str(check.get("input", "volume.npz")))) as npz:
        volume = np.asarray(npz["volume"], dtype=np.float32)
    with np.load(os.path.join(smoke_dir, str(check.get("expected", "volume_expected.npz")))) as npz:
        expected = np.asarray(npz["labels"])
    labels, info = runner_segment(runner, pipe, volume, check.get("spacing"))
    dice = steps_lib.dice_scores(labels, expected, int(pipe.get("classes") or 2))
    mean = float(np.mean(dice)) if dice else 1.0
    needed = float(check.get("min_dice", 0.99))
    return {
        "passed": mean >= needed,
        "dice": round(mean, 6),
        "min_dice": needed,
        "windows": info.get("windows"),
        "seconds": round(float(info["total_s"]), 4),
        "failure": None if mean >= needed else f"pipeline: Dice {mean:.4f} < {needed:.4f}",
    }
