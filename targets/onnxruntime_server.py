"""Servers (ward, department or hospital) running ONNX Runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from targets.base import Session, Target, register_target

if TYPE_CHECKING:
    import numpy as np

PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}


class OrtSession:
    """An onnxruntime.InferenceSession behind the Session protocol."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self.output_names, inputs))


def ort_session(path: str, threads: int, provider: str = "CPUExecutionProvider") -> OrtSession:
    """An ONNX Runtime session with a fixed intra-op thread count and sequential execution."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return OrtSession(ort.InferenceSession(path, so, providers=[provider]))


@register_target
class OnnxRuntimeServerTarget(Target):
    family = "server"
    runtime = "onnxruntime"
    description = "x86-64 / arm64 servers, ONNX Runtime (CPU execution provider by default)"
    formats = ("onnx",)
    install_hint = "pip install onnxruntime"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            require("onnxruntime")
        except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
            return str(exc)
        return None

    def runtime_version(self) -> str:
        return str(require("onnxruntime").__version__)

    def provider(self) -> str:
        return PROVIDERS.get(self.config.device, self.config.device)

    def load(self, model: ModelFile) -> Session:
        return ort_session(str(model.path), self.config.threads, self.provider())

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        return {
            "execution_provider": self.provider(),
            "intra_op_num_threads": self.config.threads,
            "inter_op_num_threads": 1,
            "graph_optimization_level": "ORT_ENABLE_ALL",
        }
