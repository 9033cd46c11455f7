"""A user's edgeship project in a temporary folder: conf/ (edgeship's recipes and targets
plus a tiny model and deployment) and the team's own package, under a unique name."""

from __future__ import annotations

import shutil
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MODEL_CODE = """\
import numpy as np
import torch
from torch import nn


def build(channels=6, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        nn.Flatten(), nn.Linear(8, classes),
    )


def eval_set(samples=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 6, 20)).astype(np.float32)
    return x, rng.integers(0, 3, samples)


def broken_factory():
    raise ValueError("the layer sizes do not add up")


def train(weights, seed=0):
    torch.save(build().state_dict(), weights)
"""


class UserProject:
    """``root`` holds conf/ and the package ``pkg`` (a name unique to this project)."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "project"
        self.pkg = f"teamcode_{uuid.uuid4().hex[:10]}"
        conf = self.root / "conf"
        for group in ("recipe", "target"):
            shutil.copytree(ROOT / "conf" / group, conf / group)
        shutil.copy(ROOT / "conf" / "config.yaml", conf / "config.yaml")
        (conf / "model").mkdir()
        (conf / "deployment").mkdir()
        (self.root / "models").mkdir()
        pkg = self.root / self.pkg
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "model.py").write_text(MODEL_CODE)
        self.model(
            "tiny",
            source=f"""
            kind: pytorch
            factory: {{fn: {self.pkg}.model:build}}
            weights: models/tiny.pt
            train: {{fn: {self.pkg}.model:train}}""",
        )
        (conf / "deployment" / "tiny_server.yaml").write_text(
            textwrap.dedent("""\
                # @package _global_
                defaults:
                  - override /model: tiny
                  - override /recipe: ort_fp32
                  - override /target: server
                  - _self_
                deployment:
                  name: tiny_server
                  gates: [agreement >= 0.99, max_abs_error <= 0.001]
                  validation: {latency_warmup: 1, latency_runs: 3}
                """)
        )
        sys.path.insert(0, str(self.root))

    def model(self, name: str, source: str) -> None:
        """Write conf/model/<name>.yaml with the given ``source:`` body (YAML, indented)."""
        body = textwrap.indent(textwrap.dedent(source).strip("\n"), "  ")
        text = (
            textwrap.dedent(f"""\
            name: {name}
            task: classification
            inputs: [{{name: x, shape: [1, 6, 20], dtype: float32}}]
            outputs: [{{name: logits, shape: [1, 3], dtype: float32}}]
            labels: [a, b, c]
            data:
              eval: {{fn: {self.pkg}.model:eval_set}}
            source:
            """)
            + body
            + "\n"
        )
        (self.root / "conf" / "model" / f"{name}.yaml").write_text(text)

    def net(self) -> Any:
        import importlib

        return importlib.import_module(f"{self.pkg}.model").build().eval()

    def close(self) -> None:
        if str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        for name in [m for m in sys.modules if m.split(".")[0] == self.pkg]:
            del sys.modules[name]
