"""Import heavy SDKs where they are used, with an actionable error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from orchestrator.errors import MissingDependencyError

# import name -> the command that installs it
INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install openvino",
    "nncf": "pip install nncf",
    "onnx": "pip install onnx",
    "onnxslim": "pip install onnxslim",
    "torch": "pip install torch==2.13.0",
    "mlflow": "pip install mlflow",
    "tensorrt": "pip install tensorrt (needs an NVIDIA GPU and driver; on Jetson use JetPack's)",
    # LiteRT and ExecuTorch toolchains (the edgeship[litert] and edgeship[executorch] extras)
    "litert_torch": "pip install 'edgeship[litert]' (litert-torch, ai-edge-litert)",
    "ai_edge_litert": "pip install 'edgeship[litert]' (ai-edge-litert)",
    "ai_edge_quantizer": "pip install 'edgeship[litert]' (ai-edge-quantizer, with litert-torch)",
    "executorch": "pip install 'edgeship[executorch]' (executorch)",
    "torchao": "pip install 'edgeship[executorch]' (torchao comes with executorch)",
}


def require(module: str, package: str | None = None) -> ModuleType:
    """Import ``module``; when missing, raise MissingDependencyError saying how to install it."""
    top = package or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            top, INSTALL.get(top, f"pip install {top}"), reason=str(exc)
        ) from exc
