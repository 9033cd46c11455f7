"""Whole-volume segmentation pipelines: the steps a model spec's ``model.pipeline`` names.

A pipeline is an ordered list of steps, each ``{"name": ..., "options": {...}}``; exactly
one of them is ``sliding_window`` (the model's inference). Steps before it prepare the
volume, steps after it turn logits into a label map. The same code runs on the build
machine (validation, ``edgeship segment``) and on devices (the runner's health check and
``segment`` command), so a bundle runs its pipeline as it was validated.

The library:

- ``clip_normalize``: clip intensities to ``[low, high]`` and standardise with ``mean`` and
  ``std`` (nnU-Net's CT normalisation);
- ``resample``: resample to ``spacing`` (mm, ``[D, H, W]``) by linear interpolation; the
  label map is resampled back to the input grid (nearest neighbour) by ``label_map``;
- ``sliding_window``: nnU-Net's sliding window over the model's static patch, ``overlap``
  between neighbours, Gaussian blending (``sigma_scale``); optimisations, each off by
  default: ``skip_outside_body`` (windows without a voxel above ``body_threshold``, in the
  input's intensity units, are not run and count as background), ``batch`` (windows per
  model call when the model takes a batch, else per group of calls), ``overlap_io`` (window
  extraction and blending in a worker thread while the model runs);
- ``argmax``: logits to labels;
- ``largest_component``: per class (``classes``; empty: every foreground class) keep the
  largest 6-connected component, the rest becomes background;
- ``label_map``: the labels on the input's grid as ``dtype``.

Standard library and numpy only, Python 3.8+.
"""

from __future__ import annotations

import math
import queue
import threading
import time

# step name -> (role, default options); the options' types are checked by the spec's schema
STEPS: dict = {
    "clip_normalize": ("pre", {"low": -1000.0, "high": 1000.0, "mean": 0.0, "std": 1.0}),
    "resample": ("pre", {"spacing": [1.0, 1.0, 1.0]}),
    "sliding_window": (
        "infer",
        {
            "overlap": 0.5,
            "sigma_scale": 0.125,
            "batch": 1,
            "skip_outside_body": False,
            "body_threshold": -500.0,
            "overlap_io": False,
        },
    ),
    "argmax": ("post", {}),
    "largest_component": ("post", {"classes": []}),
    "label_map": ("post", {"dtype": "uint8"}),
}
OPTIMISATIONS = ("batch", "skip_outside_body", "overlap_io")  # sliding_window's speed options


class PipelineError(Exception):
    """A pipeline that cannot run as declared (an unknown step, a bad option, a bad volume)."""


def _options(step: dict) -> dict:
    name = str(step.get("name"))
    if name not in STEPS:
        raise PipelineError(f"unknown pipeline step '{name}'; known: {', '.join(sorted(STEPS))}")
    opts = dict(STEPS[name][1])
    for key, value in (step.get("options") or {}).items():
        if key not in opts:
            raise PipelineError(f"pipeline step '{name}' has no option '{key}'")
        opts[key] = value
    return opts


def reference_steps(steps: list) -> list:
    """``steps`` with every optimisation of ``sliding_window`` off: the reference pipeline."""
    out = []
    for step in steps:
        step = {"name": step.get("name"), "options": dict(step.get("options") or {})}
        if step["name"] == "sliding_window":
            for key in OPTIMISATIONS:
                step["options"][key] = STEPS["sliding_window"][1][key]
        out.append(step)
    return out


# -- sliding window ------------------------------------------------------------------------------


def compute_steps(size: tuple, patch: tuple, step_fraction: float) -> list:
    """Window start offsets per axis, as nnU-Net's ``compute_steps_for_sliding_window``."""
    if not 0 < step_fraction <= 1:
        raise PipelineError(f"overlap must be in [0, 1), got {1 - step_fraction}")
    out = []
    for s, p in zip(size, patch):
        n = math.ceil((s - p) / (p * step_fraction)) + 1
        if n == 1:
            out.append([0])
            continue
        actual = (s - p) / (n - 1)
        out.append([round(actual * i) for i in range(n)])
    return out


def gaussian_importance(patch: tuple, sigma_scale: float = 0.125):
    """Gaussian importance map of ``patch`` size (max 1, strictly positive), as nnU-Net."""
    import numpy as np

    axes = []
    for p in patch:
        sigma = max(p * sigma_scale, 1e-3)
        t = np.arange(p, dtype=np.float64)
        axes.append(np.exp(-0.5 * ((t - p // 2) / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    g[g <= 0] = g[g > 0].min()
    return np.maximum(g, np.finfo(np.float32).tiny).astype(np.float32)


def sliding_window(volume, patch: tuple, predict, opts: dict, raw=None, classes: int = 2) -> tuple:
    """Gaussian-blended logits ``[C, D, H, W]`` of a ``[D, H, W]`` volume, and the run's counts.

    ``predict`` maps float32 ``[B, 1, *patch]`` to logits ``[B, C, *patch]``. ``raw`` is the
    volume in input intensity units (for ``skip_outside_body``); defaults to ``volume``.
    """
    import numpy as np

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise PipelineError(f"sliding_window takes a [D, H, W] volume, got shape {vol.shape}")
    overlap = float(opts["overlap"])
    if not 0 <= overlap < 1:
        raise PipelineError(f"sliding_window.overlap must be in [0, 1), got {overlap}")
    spatial = vol.shape
    pads = [
        ((max(p - s, 0)) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch)
    ]
    body = None
    if opts["skip_outside_body"]:
        src = vol if raw is None else np.asarray(raw, dtype=np.float32)
        body = src > float(opts["body_threshold"])
        if any(a or b for a, b in pads):
            body = np.pad(body, pads, mode="constant", constant_values=False)
    if any(a or b for a, b in pads):
        vol = np.pad(vol, pads, mode="constant", constant_values=float(vol.min()))
    padded = vol.shape
    starts = compute_steps(padded, patch, 1.0 - overlap)
    weight = gaussian_importance(patch, float(opts["sigma_scale"]))
    windows = []
    skipped = 0
    for sd in starts[0]:
        for sh in starts[1]:
            for sw in starts[2]:
                sl = (slice(sd, sd + patch[0]), slice(sh, sh + patch[1]), slice(sw, sw + patch[2]))
                if body is not None and not body[sl].any():
                    skipped += 1
                    continue
                windows.append(sl)
    batch = max(1, int(opts["batch"]))
    groups = [windows[i : i + batch] for i in range(0, len(windows), batch)]
    state: dict = {"acc": None, "weights": np.zeros(padded, dtype=np.float32)}

    def tiles(group: list):
        return np.ascontiguousarray(np.stack([vol[sl][None] for sl in group]).astype(np.float32))

    def blend(group: list, out) -> None:
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 5 or out.shape[0] != len(group) or tuple(out.shape[2:]) != tuple(patch):
            raise PipelineError(
                f"the model returned shape {list(out.shape)}, expected [{len(group)}, C, "
                f"{', '.join(map(str, patch))}]"
            )
        if state["acc"] is None:
            state["acc"] = np.zeros((out.shape[1], *tuple(padded)), dtype=np.float32)
        acc = state["acc"]
        for k, sl in enumerate(group):
            acc[(slice(None), *sl)] += out[k] * weight
            state["weights"][sl] += weight

    if opts["overlap_io"] and len(groups) > 1:
        _overlapped(groups, tiles, predict, blend)
    else:
        for group in groups:
            blend(group, predict(tiles(group)))
    acc, weights = state["acc"], state["weights"]
    if acc is None:  # every window lies outside the body: all background
        acc = np.zeros((max(1, classes), *tuple(padded)), dtype=np.float32)
    covered = weights > 0
    logits = np.where(covered, acc / np.where(covered, weights, 1.0), 0.0).astype(np.float32)
    if not covered.all():  # voxels only skipped windows cover: background
        logits[0][~covered] = 1.0
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial))
    counts = {"windows": len(windows), "skipped": skipped, "calls": len(groups)}
    return np.ascontiguousarray(logits[(slice(None), *crop)]), counts


def _overlapped(groups: list, tiles, predict, blend) -> None:
    """Extraction of the next windows and blending of the last outputs in a worker thread
    while the model runs (runtimes release the GIL while they compute)."""
    todo: queue.Queue = queue.Queue(maxsize=2)
    failure: list = []

    def worker() -> None:
        try:
            while True:
                item = todo.get()
                if item is None:
                    return
                blend(*item)
        except BaseException as exc:  # re-raised by the caller
            failure.append(exc)
            while todo.get() is not None:
                pass

    thread = threading.Thread(target=worker, name="pipeline-blend", daemon=True)
    thread.start()
    try:
        ahead = tiles(groups[0])
        for i, group in enumerate(groups):
            current = ahead
            out = predict(current)
            if i + 1 < len(groups):
                ahead = tiles(groups[i + 1])
            todo.put((group, out))
            if failure:
                break
    finally:
        todo.put(None)
        thread.join()
    if failure:
        raise failure[0]


# -- pre- and post-processing ------------------------------------------------------------------


def resample_linear(volume, shape: tuple):
    """``volume`` resampled to ``shape`` by separable linear interpolation (voxel centres)."""
    import numpy as np

    out = np.asarray(volume, dtype=np.float32)
    for axis, n in enumerate(shape):
        size = out.shape[axis]
        if size == n:
            continue
        x = (np.arange(n, dtype=np.float64) + 0.5) * (size / n) - 0.5
        x = np.clip(x, 0, size - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        w = (x - lo).astype(np.float32)
        view = [1] * out.ndim
        view[axis] = n
        w = w.reshape(view)
        out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
    return out.astype(np.float32)


def resample_nearest(labels, shape: tuple):
    """``labels`` resampled to ``shape`` by nearest neighbour (voxel centres)."""
    import numpy as np

    out = np.asarray(labels)
    for axis, n in enumerate(shape):
        size = out.shape[axis]
        if size == n:
            continue
        idx = np.clip(np.floor((np.arange(n) + 0.5) * (size / n)).astype(np.int64), 0, size - 1)
        out = np.take(out, idx, axis=axis)
    return out


def components(mask):
    """6-connected components of a boolean ``[D, H, W]`` mask: (labels, count); scipy's
    ``ndimage.label`` where installed, else the same labelling by min-label propagation."""
    import numpy as np

    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        labels, count = ndimage.label(mask)
        return labels, int(count)
    big = np.iinfo(np.int64).max
    lab = np.where(mask, np.arange(mask.size, dtype=np.int64).reshape(mask.shape), big)
    while True:
        prev = lab
        lab = lab.copy()
        for axis in range(3):
            for shift in (1, -1):
                moved = np.roll(prev, shift, axis=axis)
                edge = [slice(None)] * 3
                edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
                moved[tuple(edge)] = big
                lab = np.minimum(lab, moved)
        lab = np.where(mask, lab, big)
        if np.array_equal(lab, prev):
            break
    roots = np.unique(lab[mask])
    out = np.zeros(mask.shape, dtype=np.int32)
    out[mask] = np.searchsorted(roots, lab[mask]) + 1
    return out, len(roots)


def largest_component(labels, classes: list):
    """Per class in ``classes`` (empty: every class above 0), only its largest component."""
    import numpy as np

    out = np.array(labels, copy=True)
    todo = [int(c) for c in classes] or [int(c) for c in np.unique(out) if c > 0]
    for c in todo:
        mask = out == c
        if not mask.any():
            continue
        comp, count = components(mask)
        if count <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        out[mask & (comp != int(np.argmax(sizes)) + 1)] = 0
    return out


# -- the pipeline ---------------------------------------------------------------------------------


def check_steps(steps: list) -> None:
    """Raise :class:`PipelineError` unless ``steps`` is a runnable pipeline."""
    names = [str(s.get("name")) for s in steps]
    for s in steps:
        _options(s)
    if names.count("sliding_window") != 1:
        raise PipelineError("a pipeline has exactly one sliding_window step")
    infer = names.index("sliding_window")
    for i, n in enumerate(names):
        role = STEPS[n][0]
        if (role == "pre" and i > infer) or (role == "post" and i < infer):
            raise PipelineError(f"step '{n}' ({role}-processing) is on the wrong side of inference")


def run_pipeline(
    steps: list, volume, predict, patch: tuple, spacing=None, classes: int = 2
) -> tuple:
    """Segment a ``[D, H, W]`` volume: (label map, timings and counts).

    ``predict`` maps float32 ``[B, 1, *patch]`` to logits ``[B, C, *patch]``; ``spacing`` is
    the volume's voxel size in mm (``[D, H, W]``; None: the ``resample`` step's own, so it
    leaves the grid as it is); ``classes`` the model's number of classes.
    """
    import numpy as np

    check_steps(steps)
    start = time.perf_counter()
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise PipelineError(f"a pipeline takes a [D, H, W] volume, got shape {list(vol.shape)}")
    shape = vol.shape
    raw = vol
    # the body mask is taken in input units: kept through resampling only when it is used
    skip = any(
        s.get("name") == "sliding_window" and _options(s)["skip_outside_body"] for s in steps
    )
    info: dict = {"shape": list(shape)}
    seconds: dict = {}
    for step in steps:
        name = str(step["name"])
        opts = _options(step)
        t0 = time.perf_counter()
        if name == "clip_normalize":
            std = float(opts["std"]) or 1.0
            vol = (
                np.clip(vol, float(opts["low"]), float(opts["high"])) - float(opts["mean"])
            ) / std
            vol = vol.astype(np.float32)
        elif name == "resample":
            target = [float(s) for s in opts["spacing"]]
            have = [float(s) for s in (spacing or target)]
            grid = tuple(max(1, round(n * h / t)) for n, h, t in zip(vol.shape, have, target))
            if grid != vol.shape:
                vol = resample_linear(vol, grid)
                raw = resample_linear(raw, grid) if skip else vol
            info["grid"] = list(grid)
        elif name == "sliding_window":
            vol, counts = sliding_window(vol, tuple(patch), predict, opts, raw, classes)
            info.update(counts)
        elif name == "argmax":
            vol = np.asarray(vol).argmax(axis=0)
        elif name == "largest_component":
            vol = largest_component(vol, list(opts["classes"]))
        elif name == "label_map":
            if vol.ndim == 4:
                vol = vol.argmax(axis=0)
            vol = resample_nearest(vol, shape).astype(str(opts["dtype"]))
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    if np.asarray(vol).ndim == 4:  # no post-processing step: labels by argmax
        vol = np.asarray(vol).argmax(axis=0)
    if tuple(np.asarray(vol).shape) != tuple(shape):
        vol = resample_nearest(vol, shape)
    info["seconds"] = {k: round(v, 6) for k, v in seconds.items()}
    info["total_s"] = time.perf_counter() - start
    return vol, info


def dice_scores(pred, ref, classes: int) -> list:
    """Dice of every class ``1 .. classes - 1`` (1.0 where a class is absent from both)."""
    import numpy as np

    a, b = np.asarray(pred), np.asarray(ref)
    out = []
    for c in range(1, classes):
        pa, rb = a == c, b == c
        denom = int(pa.sum()) + int(rb.sum())
        out.append(1.0 if denom == 0 else 2.0 * int((pa & rb).sum()) / denom)
    return out


def runner_predict(runner, input_name: str, batch_dim):
    """A ``predict`` for :func:`run_pipeline` over a device runner: windows go to the model
    ``batch_dim`` at a time (an int: the model's static batch; None: any number)."""
    import numpy as np

    def predict(tiles):
        if batch_dim is None or len(tiles) == batch_dim:
            return runner.run({input_name: tiles})[0]
        outs = []
        for i in range(0, len(tiles), int(batch_dim)):
            part = tiles[i : i + int(batch_dim)]
            short = int(batch_dim) - len(part)
            if short:
                part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
            outs.append(np.asarray(runner.run({input_name: part})[0])[: len(part) - short])
        return np.concatenate(outs)

    return predict
