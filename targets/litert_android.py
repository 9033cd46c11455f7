"""Android phones running LiteRT (TensorFlow Lite): ``android_litert``.

The artifact is a ``.tflite`` flatbuffer made by litert-torch from the torch program
(and quantized by ai-edge-quantizer). The app runs it with the LiteRT interpreter and
the delegate ``target.device`` names (XNNPACK, LiteRT's default CPU path; GPU or NNAPI
on the phone). Validation here runs the very same file in ``ai_edge_litert``'s
interpreter (XNNPACK on this CPU, or the built-in kernels for ``device: CPU``) and says
so in ``validation.json`` (``device_validated: false``): the build machine is not a phone.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import MissingDependencyError
from targets.base import Session, Target, register_target

if TYPE_CHECKING:
    import numpy as np


def by_position(names: list[str]) -> list[str]:
    """litert-torch names signature tensors ``args_0, args_1, ...`` / ``output_0, ...``:
    in argument order, not text order (``args_10`` after ``args_9``)."""

    def index(name: str) -> tuple[int, str]:
        tail = name.rsplit("_", 1)[-1]
        return (int(tail), name) if tail.isdigit() else (1 << 30, name)

    return sorted(names, key=index)


class LitertSession:
    """A LiteRT signature runner behind the Session protocol: the model's inputs by position."""

    def __init__(self, interpreter: Any, input_names: list[str] | None) -> None:
        signatures = interpreter.get_signature_list()
        self.key = next(iter(signatures))
        self.runner = interpreter.get_signature_runner(self.key)
        self.args = by_position(list(signatures[self.key]["inputs"]))
        self.outputs = by_position(list(signatures[self.key]["outputs"]))
        self.input_names = input_names

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        names = self.input_names or list(inputs)
        feed = {a: np.ascontiguousarray(inputs[n]) for a, n in zip(self.args, names, strict=True)}
        out = self.runner(**feed)
        return [np.asarray(out[o]) for o in self.outputs]


@register_target
class AndroidLitertTarget(Target):
    family = "android_litert"
    runtime = "litert"
    description = "Android phones, LiteRT / TensorFlow Lite (.tflite, XNNPACK / GPU / NNAPI)"
    formats = ("tflite",)
    install_hint = (
        "pip install ai-edge-litert litert-torch (on the build machine; the app bundles LiteRT)"
    )
    # device (target.device) -> the delegate the app applies, and what validates it here
    delegates: ClassVar[dict[str, str]] = {
        "XNNPACK": "XNNPACK",
        "CPU": "none (built-in kernels)",
        "GPU": "GPU",
        "NNAPI": "NNAPI",
    }
    package = "com.google.ai.edge.litert:litert"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            require("ai_edge_litert.interpreter", "ai_edge_litert")
        except MissingDependencyError as exc:
            return str(exc)
        return None

    @classmethod
    def static_shapes_reason(cls, device: str) -> str | None:
        if device in ("GPU", "NNAPI"):
            return f"LiteRT's {device} delegate takes only fixed input shapes"
        return None

    def runtime_version(self) -> str:
        return metadata.version("ai-edge-litert")

    def load(self, model: ModelFile) -> Session:
        interpreter = require("ai_edge_litert.interpreter", "ai_edge_litert")
        kwargs: dict[str, Any] = {"num_threads": self.config.threads or None}
        if self.config.device == "CPU":
            kwargs["experimental_op_resolver_type"] = (
                interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        it = interpreter.Interpreter(model_path=str(model.path), **kwargs)
        it.allocate_tensors()
        names = [t.name for t in self.model.inputs] if self.model is not None else None
        return LitertSession(it, names)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        interpreter = require("ai_edge_litert.interpreter", "ai_edge_litert")
        it = interpreter.Interpreter(model_path=str(model.path))
        signatures = it.get_signature_list()
        key = next(iter(signatures))
        delegate = self.delegates.get(self.config.device, self.config.device)
        here = "XNNPACK" if self.config.device != "CPU" else "built-in kernels"
        return {
            "model_format": "tflite",
            "signature": key,
            "signature_inputs": by_position(list(signatures[key]["inputs"])),
            "signature_outputs": by_position(list(signatures[key]["outputs"])),
            "delegate": delegate,
            "num_threads": self.config.threads,
            "runtime_package": self.package,
            "converted_with": {
                "ai_edge_litert": self.runtime_version(),
                "litert_torch": _version("litert-torch"),
            },
            "validation": {
                "device_validated": False,
                "validated_with": (
                    f"ai-edge-litert {self.runtime_version()} interpreter ({here}) on "
                    f"{platform.machine()} (the same .tflite file)"
                ),
                "reason": (
                    f"the phone's LiteRT ({delegate}) runs on the device; latency here is "
                    "the build machine's"
                ),
            },
        }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
