"""The reference model a build compares against, whatever its source: what it runs, how
it is exported, where it came from (see :mod:`orchestrator.build.sources`)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.build import reference as ref
from orchestrator.build.export import export_program, export_torch, import_onnx
from orchestrator.build.usercode import call_user
from orchestrator.core.model_file import ModelFile, sha256_file
from orchestrator.core.schema import ModelConfig
from orchestrator.errors import BuildError
from orchestrator.passes.base import Inputs


@dataclass
class Reference:
    """A loaded reference model: runs the evaluation samples, exports to ONNX, says where
    it came from. ``close()`` removes anything downloaded for it."""

    kind: str  # the spec's model.source.kind
    format: str  # state_dict, factory, torchscript, torch_export, onnx, mlflow:<flavour>
    key: str  # the spec key that names the model (for errors)
    lineage: dict[str, Any]
    module: Any = None  # a torch module (pytorch sources and the pytorch flavour)
    exportable: Any = None  # what torch.onnx.export takes (the module or an ExportedProgram)
    dynamo: bool = True  # False: TorchScript, exported by the TorchScript-based exporter
    onnx_path: Path | None = None  # onnx sources: the original file
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def run(self, samples: list[Inputs], model: ModelConfig) -> list[list[np.ndarray]]:
        """The reference's outputs for every sample (FP32, CPU)."""
        input_names = [t.name for t in model.inputs]
        if self.onnx_path is not None:
            return _run_onnx(self.onnx_path, samples, [t.name for t in model.outputs])
        return call_user(
            ref.run_reference,
            self.key,
            "the model's forward",
            self.module,
            samples,
            input_names,
        )

    def export(self, model: ModelConfig, out: Path) -> ModelFile:
        """Write the single-file ONNX model the recipe's passes start from."""
        if self.onnx_path is not None:
            return import_onnx(self.onnx_path, model, out, self.key)
        return export_torch(self.exportable, model, out, dynamo=self.dynamo)

    def export_program(self, model: ModelConfig, out: Path) -> ModelFile:
        """Write the torch.export program (``.pt2``) a recipe whose first pass takes a torch
        program starts from; an ONNX or TorchScript reference has none."""
        if self.onnx_path is not None:
            raise BuildError(
                f"error: {self.key}: the recipe's first pass takes a torch program (pt2), but "
                f"the reference model is ONNX ({self.format}), which cannot become one; use "
                "a PyTorch source (a factory, a .pt2 archive, an MLflow pytorch flavour) or a "
                "recipe that starts from ONNX"
            )
        if not self.dynamo:
            raise BuildError(
                f"error: {self.key}: the recipe's first pass takes a torch program (pt2), but "
                f"the reference model is TorchScript ({self.format}), which torch.export "
                "cannot trace; save the model with torch.export.save (.pt2) or name its "
                "factory and weights"
            )
        return export_program(self.exportable, model, out)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _run_onnx(path: Path, samples: list[Inputs], output_names: list[str]) -> list[list[np.ndarray]]:
    from orchestrator.core.runtime_imports import require

    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [list(session.run(output_names, dict(s))) for s in samples]


def tree_sha256(folder: Path) -> str:
    """One hash over every file of a folder (relative paths and contents)."""
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(p.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(sha256_file(p).encode())
    return digest.hexdigest()
