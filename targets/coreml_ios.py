"""iPhones running Core ML models (``ios_coreml``): an ML program package (``.mlpackage``).

The app loads ``model/model.mlpackage`` with Core ML (``MLModel``; compute units in
``runtime.json``). Core ML predicts only on Apple's systems: on macOS the build machine
runs the package itself (``MLModel.predict``). Elsewhere the package is checked as far as
coremltools allows when the passes write it (spec version, operations of the deployment
target, inputs and outputs), and the numbers come from the PyTorch program it was
converted from, run at the package's precision (FP16 weights and activations, INT8
weights as their dequantized values): ``validation.json`` says so
(``device_validated: false``, ``validated_with``), and a fleet's macOS lab device
validates the package for real (``deployment.validate_on.where: lab``).
"""

from __future__ import annotations

import platform
from typing import Any

from orchestrator.core import coreml_package as cm
from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import MissingDependencyError
from targets.base import Session, Target, register_target

COMPUTE_UNITS = {
    "ALL": "all",
    "CPU_AND_NE": "cpuAndNeuralEngine",
    "CPU_AND_GPU": "cpuAndGPU",
    "CPU": "cpuOnly",
}


def predicts_here() -> bool:
    """Whether Core ML can run a model on this machine (macOS only)."""
    return platform.system() == "Darwin"


@register_target
class IosCoremlTarget(Target):
    family = "ios_coreml"
    runtime = "coreml"
    description = "iPhones, Core ML (ML program .mlpackage, FP16 or INT8 weights)"
    formats = ("mlpackage",)
    install_hint = "pip install coremltools (predictions need macOS)"
    contract_recipe = "coreml_fp16"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            cm.coremltools()
            require("torch")
        except MissingDependencyError as exc:
            return str(exc)
        return None

    @classmethod
    def static_shapes_reason(cls, device: str) -> str | None:
        return "the Core ML package is converted for the declared static input shapes"

    def runtime_version(self) -> str:
        return str(cm.coremltools().__version__)

    def load(self, model: ModelFile) -> Session:
        if predicts_here():
            summary = cm.read_summary(model.path)
            outputs = list(summary.get("output_names") or [])
            if not outputs and self.model is not None:
                outputs = [t.name for t in self.model.outputs]
            return cm.CoreMLSession(model.path, outputs)
        # one thread: the stand-in's latency is not the phone's, and float16 kernels on a
        # shared CPU stall for hundreds of milliseconds when their threads wait on each other
        return cm.StandInSession(model.path, threads=1)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        summary = cm.read_summary(model.path)
        info = summary.get("inspection") or {}
        settings: dict[str, Any] = {
            "model_format": "mlpackage",
            "compute_units": COMPUTE_UNITS.get(self.config.device, self.config.device),
            "minimum_deployment_target": summary.get("minimum_deployment_target"),
            "compute_precision": summary.get("compute_precision"),
            "weights": summary.get("weights"),
            "operations": info.get("operations"),
            "specification_version": info.get("specification_version"),
            "converted_with_coremltools": summary.get("coremltools_version"),
        }
        if not predicts_here():
            precision = summary.get("compute_precision", "fp32")
            weights = (summary.get("weights") or {}).get("dtype", precision)
            settings["validation"] = {
                "device_validated": False,
                "coreml_predicted": False,
                "validated_with": (
                    f"PyTorch {require('torch').__version__}, the torch.export program the "
                    f"package was converted from, at {precision} compute with {weights} "
                    f"weights, on {platform.system()} {platform.machine()}"
                ),
                "reason": "Core ML predicts only on macOS and iOS (Model prediction is only "
                "supported on macOS); the package's spec, operations, inputs and outputs were "
                "checked with coremltools, and latency here is PyTorch's",
            }
        return settings
