"""3-D U-Net with the layout of nnU-Net's ``PlainConvUNet``.

This is the architecture of TotalSegmentator's ``3d_fullres`` models: an encoder of
stages made of Conv3d(k=3) -> InstanceNorm3d -> LeakyReLU blocks that downsample with
strided convolutions, and a decoder that upsamples with transposed convolutions,
concatenates the encoder skip and applies further conv blocks.  Only the
full-resolution logits are returned (no deep-supervision outputs), so the network
exports to ONNX as a single-output graph with static shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "features_per_stage": (8, 16, 32, 64),
        "strides": (1, 2, 2, 2),
        "n_conv_per_stage": 2,
        "n_conv_per_stage_decoder": 2,
        "patch": (32, 32, 32),
        "num_classes": 6,
    },
    # Full-size configuration of TotalSegmentator's 3d_fullres networks (1.5 mm models).
    # The output width follows the organs part of the "total" task (24 labels plus
    # background); pass ``num_classes`` to build() to change it.
    "totalsegmentator": {
        "features_per_stage": (32, 64, 128, 256, 320, 320),
        "strides": (1, 2, 2, 2, 2, 2),
        "n_conv_per_stage": 2,
        "n_conv_per_stage_decoder": 2,
        "patch": (128, 128, 128),
        "num_classes": 25,
    },
}


def _as_list(value: int | Sequence[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    out = [int(v) for v in value]
    if len(out) != n:
        raise ValueError(f"{name} needs {n} entries, got {len(out)}")
    return out


class ConvNormAct(nn.Sequential):
    """Conv3d(k=3, pad=1) -> InstanceNorm3d(affine, eps=1e-5) -> LeakyReLU(0.01)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=True),
            nn.InstanceNorm3d(c_out, eps=1e-5, affine=True),
            nn.LeakyReLU(negative_slope=0.01, inplace=True),
        )


class StackedConvBlocks(nn.Sequential):
    """``n`` :class:`ConvNormAct` blocks; only the first one applies ``stride``."""

    def __init__(self, n: int, c_in: int, c_out: int, stride: int = 1) -> None:
        if n < 1:
            raise ValueError(f"a stage needs at least one conv, got {n}")
        blocks = [ConvNormAct(c_in, c_out, stride)]
        blocks += [ConvNormAct(c_out, c_out) for _ in range(n - 1)]
        super().__init__(*blocks)


class PlainConvUNet3d(nn.Module):
    """nnU-Net ``PlainConvUNet`` for 3-D volumes.

    Args:
        in_channels: Input image channels.
        num_classes: Output logit channels (including background).
        features_per_stage: Channel width of each encoder stage.
        strides: Downsampling stride of the first conv of each stage (1 for stage 0).
        n_conv_per_stage: Conv blocks per encoder stage (int or one per stage).
        n_conv_per_stage_decoder: Conv blocks per decoder stage (int or one per
            decoder stage, ``n_stages - 1`` entries).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features_per_stage: Sequence[int],
        strides: Sequence[int],
        n_conv_per_stage: int | Sequence[int] = 2,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
    ) -> None:
        super().__init__()
        n_stages = len(features_per_stage)
        if n_stages < 2:
            raise ValueError("a U-Net needs at least two stages")
        if len(strides) != n_stages:
            raise ValueError(f"strides needs {n_stages} entries, got {len(strides)}")
        self.features_per_stage = [int(f) for f in features_per_stage]
        self.strides = [int(s) for s in strides]
        self.num_classes = int(num_classes)
        enc_convs = _as_list(n_conv_per_stage, n_stages, "n_conv_per_stage")
        dec_convs = _as_list(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")

        self.encoder = nn.ModuleList()
        c_in = in_channels
        for feats, stride, n in zip(self.features_per_stage, self.strides, enc_convs, strict=True):
            self.encoder.append(StackedConvBlocks(n, c_in, feats, stride))
            c_in = feats

        self.transpconvs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for s in range(1, n_stages):
            below = self.features_per_stage[-s]
            skip = self.features_per_stage[-(s + 1)]
            stride = self.strides[-s]
            self.transpconvs.append(
                nn.ConvTranspose3d(below, skip, kernel_size=stride, stride=stride, bias=True)
            )
            self.decoder.append(StackedConvBlocks(dec_convs[s - 1], 2 * skip, skip))
        self.seg_layer = nn.Conv3d(self.features_per_stage[0], num_classes, kernel_size=1)

    @property
    def total_stride(self) -> int:
        """Product of all stage strides; input sizes must be divisible by it."""
        out = 1
        for s in self.strides:
            out *= s
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_channels, D, H, W]`` to full-resolution logits ``[B, C, D, H, W]``."""
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips[-1]
        for i, (up, stage) in enumerate(zip(self.transpconvs, self.decoder, strict=True)):
            x = up(x)
            x = torch.cat((x, skips[-(i + 2)]), dim=1)
            x = stage(x)
        return self.seg_layer(x)


def preset_config(preset: str) -> dict[str, Any]:
    """A copy of the named entry of :data:`PRESETS`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return dict(PRESETS[preset])


def build(
    in_channels: int = 1,
    num_classes: int | None = None,
    preset: str = "small",
    **overrides: Any,
) -> PlainConvUNet3d:
    """Create an untrained :class:`PlainConvUNet3d` from a preset.

    Args:
        in_channels: Input channels.
        num_classes: Output classes; defaults to the preset's ``num_classes``.
        preset: A key of :data:`PRESETS`.
        **overrides: Replace ``features_per_stage``, ``strides``, ``n_conv_per_stage``
            or ``n_conv_per_stage_decoder``.  ``patch`` is accepted and ignored (it
            describes the input, not the network).
    """
    cfg = preset_config(preset)
    cfg.pop("patch")
    default_classes = cfg.pop("num_classes")
    overrides.pop("patch", None)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"unknown U-Net arguments: {sorted(unknown)}")
    cfg.update(overrides)
    classes = default_classes if num_classes is None else num_classes
    return PlainConvUNet3d(in_channels=in_channels, num_classes=classes, **cfg)


def load(weights: str | Path, **kwargs: Any) -> PlainConvUNet3d:
    """Build the network with ``kwargs`` (see :func:`build`), load weights, switch to eval."""
    model = build(**kwargs)
    state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    logger.debug("loaded ct_seg weights from %s", weights)
    return model
