"""Small 1-D CNN that classifies a normalised ``[B, 6, 100]`` sensor window."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

INPUT_SHAPE: tuple[int, int] = (6, 100)


class PostureCNN(nn.Module):
    """Three Conv1d-BatchNorm-ReLU blocks, global average pooling and a linear head."""

    def __init__(self, channels: int = 6, classes: int = 4, width: int = 32) -> None:
        super().__init__()
        widths = [width, width * 2, width * 2]
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(widths):
            layers += [
                nn.Conv1d(
                    c_in, c_out, kernel_size=5, stride=1 if i == 0 else 2, padding=2, bias=False
                ),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, channels, T]`` inputs to ``[B, classes]`` logits."""
        h = self.features(x)
        return self.head(h.mean(dim=-1))


def build(channels: int = 6, classes: int = 4, width: int = 32) -> nn.Module:
    """Create an untrained :class:`PostureCNN`."""
    return PostureCNN(channels=channels, classes=classes, width=width)


def load(weights: str | Path, **model_args: int) -> nn.Module:
    """Build the network, load a saved ``state_dict`` and switch it to eval mode."""
    model = build(**model_args)
    state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    logger.debug("loaded posture_cnn weights from %s", weights)
    return model
