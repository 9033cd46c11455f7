"""A small project of a team's own models, written into a temporary folder for tests.

It holds ``conf/`` (edgeship's recipes and targets, plus the models and deployments
below) and ``yourmodels.py`` (tiny PyTorch models, loaders and a metric), and builds
with :func:`orchestrator.build.pipeline.run_build` without MLflow.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODULE = '''
import numpy as np
import torch


class TwoInputs(torch.nn.Module):
    """Sensor window + metadata in; class logits and an auxiliary score out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(6, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 + 3, 4)
        self.aux = torch.nn.Linear(3, 2)

    def forward(self, imu, meta):
        h = self.conv(imu).relu().mean(-1)
        return self.fc(torch.cat([h, meta], -1)), self.aux(meta)


def two_inputs():
    return TwoInputs()


def two_inputs_data():
    """torch tensors in a mapping, labels a tensor."""
    g = torch.Generator().manual_seed(0)
    imu, meta = torch.randn(10, 6, 100, generator=g), torch.randn(10, 3, generator=g)
    return {"imu": imu, "meta": meta}, torch.randint(0, 4, (10,), generator=g)


def static_batch_data():
    """20 samples for a model that takes exactly 16 at a time (one full batch, 4 over)."""
    g = torch.Generator().manual_seed(3)
    imu, meta = torch.randn(20, 6, 100, generator=g), torch.randn(20, 3, generator=g)
    return {"imu": imu, "meta": meta}, torch.randint(0, 4, (20,), generator=g)


def linear(inputs=5, outputs=1):
    torch.manual_seed(1)
    return torch.nn.Linear(inputs, outputs)


def regression_data():
    """A list of samples (mappings without the batch axis) and numpy targets."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)).astype("float32")
    net = linear()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy() + 0.1 * rng.standard_normal((12, 1))
    return [{"x": row} for row in x], y.astype("float32")


def multi_label_data():
    """A DataLoader of (inputs, multi-hot labels) batches."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 5, generator=g)
    with torch.no_grad():
        logits = linear(5, 3)(x)
    y = (logits + 0.3 * torch.randn(16, 3, generator=g) > 0).float()
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=5)


def auroc(outputs, labels):
    """Macro AUROC of the first output's scores against multi-hot labels (rank form)."""
    scores = np.asarray(outputs["scores"], dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    aucs = []
    for k in range(scores.shape[1]):
        pos, neg = scores[labels[:, k], k], scores[~labels[:, k], k]
        if len(pos) and len(neg):
            aucs.append(float((pos[:, None] > neg[None, :]).mean()))
    return float(np.mean(aucs))
'''

FILES = {
    "conf/model/two_inputs.yaml": """
        name: two_inputs
        task: classification
        source:
          factory: {fn: yourmodels:two_inputs}
        inputs:
          - name: imu
            shape: [batch, 6, 100]
            dynamic: {batch: {min: 1, opt: 4, max: 16}}
          - name: meta
            shape: [batch, 3]
            dynamic: {batch: {min: 1, opt: 4, max: 16}}
        outputs:
          - {name: logits, shape: [batch, 4]}
          - {name: aux, shape: [batch, 2]}
        labels: [a, b, c, d]
        data:
          eval: {fn: yourmodels:two_inputs_data}
          calibration: {fn: yourmodels:two_inputs_data}
    """,
    "conf/model/static_batch.yaml": """
        name: static_batch
        task: classification
        source:
          factory: {fn: yourmodels:two_inputs}
        inputs:
          - {name: imu, shape: [16, 6, 100]}
          - {name: meta, shape: [16, 3]}
        outputs:
          - {name: logits, shape: [16, 4]}
          - {name: aux, shape: [16, 2]}
        labels: [a, b, c, d]
        data:
          eval: {fn: yourmodels:static_batch_data}
          calibration: {fn: yourmodels:static_batch_data}
    """,
    "conf/model/regressor.yaml": """
        name: regressor
        task: regression
        source:
          factory: {fn: yourmodels:linear}
        inputs:
          - {name: x, shape: [1, 5]}
        outputs:
          - {name: y, shape: [1, 1]}
        data:
          eval: {fn: yourmodels:regression_data}
    """,
    "conf/model/tagger.yaml": """
        name: tagger
        task: classification
        multi_label: true
        threshold: 0.5
        source:
          factory: {fn: yourmodels:linear, args: {outputs: 3}}
        inputs:
          - {name: x, shape: [1, 5]}
        outputs:
          - {name: scores, shape: [1, 3]}
        labels: [fall, tremor, seizure]
        metrics:
          - {fn: "yourmodels:auroc"}
        data:
          eval: {fn: yourmodels:multi_label_data}
    """,
}

DEPLOYMENTS = {
    "two_inputs_server": ("two_inputs", "ort_fp32", "server"),
    "two_inputs_nuc": ("two_inputs", "ov_fp32", "intel_nuc"),
    "two_inputs_server_int8": ("two_inputs", "ort_int8_static", "server"),
    "two_inputs_nuc_int8": ("two_inputs", "int8_nncf", "intel_nuc"),
    "static_batch_server": ("static_batch", "ort_fp32", "server"),
    "static_batch_nuc": ("static_batch", "ov_fp32", "intel_nuc"),
    "static_batch_server_int8": ("static_batch", "ort_int8_static", "server"),
    "static_batch_nuc_int8": ("static_batch", "int8_nncf_parity", "intel_nuc"),
    "regressor_server": ("regressor", "ort_fp32", "server"),
    "tagger_server": ("tagger", "ort_fp32", "server"),
}

# parity of an INT8 artifact with the FP32 reference, on every output
INT8_GATES = ["agreement >= 0.99", "max_abs_error <= 0.05"]

GATES = {
    "two_inputs_server": [
        "agreement >= 0.99",
        "max_abs_error.aux <= 0.001",
        "p95_ms.batch16 <= 5000",
    ],
    "two_inputs_nuc": ["agreement >= 0.99", "max_abs_error.aux <= 0.001", "p95_ms.batch16 <= 5000"],
    "two_inputs_server_int8": INT8_GATES,
    "two_inputs_nuc_int8": INT8_GATES,
    "static_batch_server_int8": INT8_GATES,
    "static_batch_nuc_int8": INT8_GATES,
    "static_batch_server": ["agreement >= 0.99", "max_abs_error <= 0.001", "p95_ms <= 5000"],
    "static_batch_nuc": ["agreement >= 0.99", "max_abs_error <= 0.001", "p95_ms.batch16 <= 5000"],
    "regressor_server": ["mae_increase <= 0.001", "r2 >= 0.5", "max_abs_error <= 0.001"],
    "tagger_server": ["agreement >= 0.99", "f1_drop <= 0.01", "auroc >= 0.6", "auroc_drop <= 0.01"],
}


def make_project(folder: Path) -> Path:
    """Write the project under ``folder``; returns its root (also put on sys.path)."""
    project = folder / "project"
    shutil.copytree(ROOT / "conf", project / "conf")
    (project / "yourmodels.py").write_text(MODULE)
    for rel, text in FILES.items():
        (project / rel).write_text(textwrap.dedent(text).lstrip())
    for name, (model, recipe, target) in DEPLOYMENTS.items():
        gates = "\n".join(f"    - {g}" for g in GATES[name])
        (project / "conf/deployment" / f"{name}.yaml").write_text(
            "# @package _global_\n"
            "defaults:\n"
            f"  - override /model: {model}\n"
            f"  - override /recipe: {recipe}\n"
            f"  - override /target: {target}\n"
            "  - _self_\n\n"
            "deployment:\n"
            f"  name: {name}\n"
            "  gates:\n"
            f"{gates}\n"
            "  validation: {latency_warmup: 1, latency_runs: 3}\n"
        )
    if str(project) not in sys.path:
        sys.path.insert(0, str(project))
    return project
