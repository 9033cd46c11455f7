"""Phones running ONNX Runtime Mobile: Android (``android_phone``) and iOS (``ios_phone``).

Both load the same artifact: an ``.ort`` model (ONNX Runtime's mobile format) with
the reduced-operator config a custom minimal ONNX Runtime build for the app
needs. They differ in the execution provider the app registers first (XNNPACK
or NNAPI on Android, CoreML on iOS), which lands in ``runtime.json`` together with
the session options the app must set.

A phone is not on the build machine: validation runs the very same ``.ort`` file
in ONNX Runtime's CPU execution provider here (the full runtime reads the mobile
format), and says so in ``validation.json`` (``device_validated: false``).
"""

from __future__ import annotations

import platform
from typing import Any, ClassVar

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import MissingDependencyError
from targets.base import Session, Target, register_target
from targets.onnxruntime_server import OrtSession

# onnxruntime's converter marks models with saved runtime optimizations by this infix
RUNTIME_OPT_SUFFIX = ".with_runtime_opt"


def has_saved_runtime_optimizations(model: ModelFile) -> bool:
    """Whether an .ort model was converted with the "runtime" optimization style.

    The operators config beside the model says so (the converter's naming convention).
    """
    beside = model.path.parent.glob(f"*{RUNTIME_OPT_SUFFIX}.config")
    return any(RUNTIME_OPT_SUFFIX in p.name for p in [*model.extra, *beside])


def _config_entries(model: ModelFile) -> dict[str, str]:
    """Session config entries an app sets to load the model as it was validated."""
    entries = {"session.load_model_format": "ORT"}
    if has_saved_runtime_optimizations(model):
        # replay the QDQ fusions saved at conversion (the bundle is signed, so trusted)
        entries["session.enable_saved_runtime_optimizations"] = "1"
    return entries


class OrtMobileTarget(Target):
    """What the phone families share: the .ort artifact, its loading and its settings."""

    runtime = "onnxruntime_mobile"
    formats = ("ort",)
    install_hint = "pip install onnxruntime (on the build machine; the app bundles ORT Mobile)"
    # device (target.device) -> execution providers the app registers, in order
    providers: ClassVar[dict[str, list[str]]] = {"CPU": ["CPU"]}
    # execution provider -> its provider options in the app
    provider_options: ClassVar[dict[str, dict[str, str]]] = {}
    package: ClassVar[str]  # the prebuilt ONNX Runtime package an app would otherwise use

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            require("onnxruntime")
        except MissingDependencyError as exc:  # pragma: no cover - onnxruntime is a dependency
            return str(exc)
        return None

    def runtime_version(self) -> str:
        return str(require("onnxruntime").__version__)

    def execution_providers(self) -> list[str]:
        return list(self.providers.get(self.config.device, [self.config.device, "CPU"]))

    def load(self, model: ModelFile) -> Session:
        ort = require("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.config.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        for key, value in _config_entries(model).items():
            so.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
        return OrtSession(session)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        eps = self.execution_providers()
        configs = [p.name for p in model.extra if p.suffix == ".config"]
        return {
            "model_format": "ort",
            "execution_providers": eps,
            "provider_options": {
                ep: self.provider_options[ep] for ep in eps if ep in self.provider_options
            },
            "intra_op_num_threads": self.config.threads,
            "session_config_entries": _config_entries(model),
            "operators_config": f"model/{configs[0]}" if configs else None,
            "runtime_package": self.package,
            "converted_with_onnxruntime": self.runtime_version(),
            "validation": {
                "device_validated": False,
                "validated_with": (
                    f"onnxruntime {self.runtime_version()} CPUExecutionProvider on "
                    f"{platform.machine()} (the same .ort file)"
                ),
                "reason": (
                    f"the phone's ONNX Runtime Mobile ({', '.join(eps)}) runs on the device; "
                    "latency here is the build machine's"
                ),
            },
        }


@register_target
class AndroidPhoneTarget(OrtMobileTarget):
    family = "android_phone"
    description = "Android phones, ONNX Runtime Mobile (.ort, XNNPACK / NNAPI / CPU)"
    providers: ClassVar[dict[str, list[str]]] = {
        "CPU": ["CPU"],
        "XNNPACK": ["XNNPACK", "CPU"],
        "NNAPI": ["NNAPI", "CPU"],
    }
    package = "com.microsoft.onnxruntime:onnxruntime-android"

    @classmethod
    def static_shapes_reason(cls, device: str) -> str | None:
        if device == "NNAPI":
            return "ONNX Runtime's NNAPI execution provider takes only fixed input shapes"
        return None

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        settings = super().runtime_settings(model)
        if "XNNPACK" in settings["execution_providers"]:
            # XNNPACK brings its own thread pool; ORT's intra-op pool then stays at one thread
            threads = self.config.threads or 0
            settings["provider_options"]["XNNPACK"] = {"intra_op_num_threads": str(threads)}
            settings["intra_op_num_threads"] = 1
        return settings


@register_target
class IosPhoneTarget(OrtMobileTarget):
    family = "ios_phone"
    description = "iPhones, ONNX Runtime Mobile (.ort, CoreML / CPU)"
    providers: ClassVar[dict[str, list[str]]] = {"CPU": ["CPU"], "CoreML": ["CoreML", "CPU"]}
    provider_options: ClassVar[dict[str, dict[str, str]]] = {
        "CoreML": {
            "ModelFormat": "MLProgram",
            "MLComputeUnits": "ALL",
            "RequireStaticInputShapes": "1",
        }
    }
    package = "onnxruntime-objc (CocoaPods)"

    @classmethod
    def static_shapes_reason(cls, device: str) -> str | None:
        if device == "CoreML":
            return "the CoreML execution provider runs with RequireStaticInputShapes=1"
        return None
