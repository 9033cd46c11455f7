"""Deterministic synthetic abdominal CT phantoms with voxel labels.

Axes are ``(D, H, W)`` = (superior->inferior slices, anterior->posterior rows,
image-left->image-right columns).  Following the radiological convention the
patient's right side is on the image left (small column index), so the liver sits
at small column indices and the spleen at large ones.  Organ geometry is defined in
normalised coordinates in ``[-1, 1]`` along each axis, so a phantom covers the same
anatomy at any grid size.

Intensities are Hounsfield units of a contrast-enhanced portal-venous scan: air
-1000, subcutaneous fat -100, soft tissue 40, lung -850, liver 100, spleen 120,
kidneys 160, vertebral bone 400-1000.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CLASSES: list[str] = ["background", "liver", "spleen", "kidney_left", "kidney_right", "spine"]
NUM_CLASSES: int = len(CLASSES)

HU_AIR: float = -1000.0
HU_FAT: float = -100.0
HU_SOFT_TISSUE: float = 40.0
HU_LUNG: float = -850.0
HU_LIVER: float = 100.0
HU_SPLEEN: float = 120.0
HU_KIDNEY: float = 160.0
HU_CANCELLOUS_BONE: float = 400.0
HU_CORTICAL_BONE: float = 900.0
HU_DISC: float = 80.0
HU_AORTA: float = 180.0

# CT normalisation in the style of nnU-Net's "CTNormalization": clip to a fixed HU
# window, then standardise with fixed foreground statistics.  The constants were
# measured once on the labelled voxels of training phantoms and rounded.
PREPROCESSING: dict[str, Any] = {
    "type": "ct_clip_standardize",
    "clip_min": -1000.0,
    "clip_max": 1000.0,
    "mean": 180.0,
    "std": 170.0,
    "axes": ["D", "H", "W"],
    "layout": "NCDHW",
}


def preprocessing() -> dict[str, Any]:
    """A copy of :data:`PREPROCESSING`: the constants an application applies before inference."""
    return dict(PREPROCESSING)


def normalize(hu: np.ndarray) -> np.ndarray:
    """Clip Hounsfield units to the :data:`PREPROCESSING` window and standardise (float32)."""
    arr = np.asarray(hu, dtype=np.float32)
    lo = float(PREPROCESSING["clip_min"])
    hi = float(PREPROCESSING["clip_max"])
    mean = float(PREPROCESSING["mean"])
    std = float(PREPROCESSING["std"])
    return ((np.clip(arr, lo, hi) - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class _Grid:
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray


def _grid(shape: tuple[int, int, int]) -> _Grid:
    axes = [
        np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32)
        for n in shape
    ]
    return _Grid(z=axes[0][:, None, None], y=axes[1][None, :, None], x=axes[2][None, None, :])


def _ellipsoid(
    g: _Grid,
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
    yaw: float = 0.0,
    pitch: float = 0.0,
) -> np.ndarray:
    """Boolean mask of an ellipsoid rotated by ``yaw`` (about z) and ``pitch`` (about x)."""
    cz, cy, cx = center
    rz, ry, rx = radii
    dz, dy, dx = g.z - cz, g.y - cy, g.x - cx
    cyaw, syaw = np.cos(yaw), np.sin(yaw)
    u = cyaw * dx + syaw * dy
    v = -syaw * dx + cyaw * dy
    cp, sp = np.cos(pitch), np.sin(pitch)
    w = cp * dz + sp * v
    v2 = -sp * dz + cp * v
    return (u / rx) ** 2 + (v2 / ry) ** 2 + (w / rz) ** 2 <= 1.0


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication (float32)."""
    if sigma <= 0:
        return volume.astype(np.float32, copy=True)
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    out = volume.astype(np.float32, copy=True)
    for axis in range(out.ndim):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, weight in enumerate(k):
            acc += weight * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def _bias_field(g: _Grid, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth additive intensity inhomogeneity made of a few low-frequency cosines."""
    field = np.zeros(np.broadcast_shapes(g.z.shape, g.y.shape, g.x.shape), dtype=np.float32)
    for _ in range(3):
        fz, fy, fx = rng.uniform(0.2, 1.2, size=3)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(np.pi * (fz * g.z + fy * g.y + fx * g.x) + phase).astype(np.float32)
    return amplitude * field / 3.0


def make_volume(
    seed: int, shape: tuple[int, int, int] = (48, 48, 48)
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one abdominal CT phantom.

    Args:
        seed: Seed of the phantom; the same seed and shape give an identical volume.
        shape: ``(D, H, W)`` grid size.

    Returns:
        Float32 Hounsfield units ``[D, H, W]`` and int64 labels ``[D, H, W]`` (indices
        into :data:`CLASSES`).
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes, got {shape}")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    rng = np.random.default_rng(seed)
    g = _grid(shape)
    full = np.broadcast_shapes(g.z.shape, g.y.shape, g.x.shape)

    def jitter(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    hu = np.full(full, HU_AIR, dtype=np.float32)
    labels = np.zeros(full, dtype=np.int64)

    # Body: elliptical cross-section extruded along z, with a subcutaneous fat layer.
    body_c = (0.0 + jitter(0.03), jitter(0.03))  # (y, x)
    body_r = (0.78 + jitter(0.06), 0.94 + jitter(0.04))  # (y, x)
    fat = 0.07 + jitter(0.03)
    r2 = ((g.y - body_c[0]) / body_r[0]) ** 2 + ((g.x - body_c[1]) / body_r[1]) ** 2
    r2 = np.broadcast_to(r2, full)
    inner2 = ((g.y - body_c[0]) / (body_r[0] - fat)) ** 2 + (
        (g.x - body_c[1]) / (body_r[1] - fat)
    ) ** 2
    inner2 = np.broadcast_to(inner2, full)
    hu[r2 <= 1.0] = HU_FAT + jitter(15)
    hu[inner2 <= 1.0] = HU_SOFT_TISSUE + jitter(10)
    # Visceral fat pockets between the organs.
    for _ in range(4):
        c = (jitter(0.8), 0.1 + jitter(0.3), jitter(0.5))
        rz, ry, rx = (float(v) for v in rng.uniform(0.08, 0.18, size=3))
        rad = (rz, ry, rx)
        pocket = _ellipsoid(g, c, rad, yaw=jitter(np.pi)) & (inner2 <= 1.0)
        hu[pocket] = HU_FAT + jitter(20)

    # Lung bases in the superior slices (the organs painted below displace them).
    diaphragm = -0.55 + jitter(0.15)
    for side in (-1.0, 1.0):
        lung = _ellipsoid(
            g,
            (diaphragm - 0.55, 0.05 + jitter(0.05), side * (0.45 + jitter(0.05))),
            (0.6, 0.5 + jitter(0.05), 0.34 + jitter(0.04)),
        )
        hu[lung & (inner2 <= 0.85)] = HU_LUNG + jitter(30)

    scale = float(rng.uniform(0.88, 1.12))

    def organ(
        label: int,
        base_hu: float,
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        yaw_range: float,
    ) -> None:
        c = (center[0] + jitter(0.06), center[1] + jitter(0.05), center[2] + jitter(0.05))
        s = scale * float(rng.uniform(0.88, 1.12))
        rad = (radii[0] * s, radii[1] * s * float(rng.uniform(0.92, 1.08)), radii[2] * s)
        mask = _ellipsoid(g, c, rad, yaw=jitter(yaw_range), pitch=jitter(0.2)) & (inner2 <= 1.0)
        hu[mask] = base_hu + jitter(12)
        labels[mask] = label

    # Kidneys first (posterior, either side of the spine); the liver and spleen are
    # painted afterwards and may cover their upper poles, as in real anatomy.
    organ(3, HU_KIDNEY, (0.15, 0.34, 0.37), (0.32, 0.20, 0.17), 0.5)  # patient left
    organ(4, HU_KIDNEY, (0.25, 0.34, -0.37), (0.32, 0.20, 0.17), 0.5)  # patient right
    organ(1, HU_LIVER, (-0.35, -0.02, -0.38), (0.45, 0.42, 0.40), 0.35)
    organ(2, HU_SPLEEN, (-0.35, 0.22, 0.55), (0.30, 0.26, 0.17), 0.5)

    # Aorta: contrast-filled vessel anterior-left of the spine (unlabelled).
    ao_y, ao_x, ao_r = 0.28 + jitter(0.03), 0.1 + jitter(0.03), 0.07 + jitter(0.01)
    aorta = np.broadcast_to(((g.y - ao_y) ** 2 + (g.x - ao_x) ** 2) <= ao_r**2, full)
    hu[aorta] = HU_AORTA + jitter(20)
    labels[aorta] = 0

    # Spine: vertebral bodies (cancellous core, cortical rim) separated by discs,
    # plus a posterior arch; discs are soft tissue and unlabelled.
    sp_y, sp_x = 0.5 + jitter(0.03), jitter(0.03)
    sp_r = (0.14 + jitter(0.015), 0.15 + jitter(0.015))  # (y, x)
    period = 0.34 + jitter(0.04)
    phase = float(rng.uniform(0, period))
    disc_half = 0.035
    body2 = ((g.y - sp_y) / sp_r[0]) ** 2 + ((g.x - sp_x) / sp_r[1]) ** 2
    arch2 = ((g.y - (sp_y + sp_r[0] + 0.06)) / 0.06) ** 2 + ((g.x - sp_x) / 0.05) ** 2
    zpos = np.mod(g.z - phase, period)
    is_disc = np.abs(zpos - period / 2) <= disc_half
    vert_body = np.broadcast_to(body2 <= 1.0, full)
    bone = (vert_body | np.broadcast_to(arch2 <= 1.0, full)) & ~np.broadcast_to(is_disc, full)
    cortical = bone & np.broadcast_to(body2 >= 0.6, full)
    disc = vert_body & np.broadcast_to(is_disc, full)
    hu[disc] = HU_DISC + jitter(10)
    labels[disc] = 0
    hu[bone] = HU_CANCELLOUS_BONE + jitter(50)
    hu[cortical | (bone & ~vert_body)] = HU_CORTICAL_BONE + jitter(100)
    labels[bone] = 5

    # Acquisition effects: inhomogeneity inside the body, partial-volume blur, noise.
    body = r2 <= 1.0
    hu += np.where(body, _bias_field(g, rng, float(rng.uniform(5, 20))), 0.0).astype(np.float32)
    hu = gaussian_blur(hu, float(rng.uniform(0.5, 0.8)))
    hu += rng.normal(0.0, float(rng.uniform(10, 20)), size=full).astype(np.float32)
    return hu.astype(np.float32), labels
