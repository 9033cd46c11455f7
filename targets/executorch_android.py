"""Android phones running ExecuTorch: ``android_executorch``.

The artifact is a ``.pte`` program lowered from the torch program with the XNNPACK
partitioner (what XNNPACK cannot take runs in ExecuTorch's portable kernels). The app
loads it with ExecuTorch's Android runtime (``Module``) and runs ``forward``. Validation
here runs the very same file in ``executorch.runtime`` (XNNPACK on this CPU) and says so
in ``validation.json`` (``device_validated: false``): the build machine is not a phone.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.errors import MissingDependencyError
from targets.base import Session, Target, register_target

if TYPE_CHECKING:
    import numpy as np

METHOD = "forward"


class ExecutorchSession:
    """An ExecuTorch method behind the Session protocol: the model's inputs by position."""

    def __init__(self, method: Any, input_names: list[str] | None) -> None:
        self.method = method
        self.input_names = input_names
        self.torch = require("torch")

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        names = self.input_names or list(inputs)
        args = tuple(self.torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names)
        return [
            np.asarray(o.numpy() if hasattr(o, "numpy") else o) for o in self.method.execute(args)
        ]


@register_target
class AndroidExecutorchTarget(Target):
    family = "android_executorch"
    runtime = "executorch"
    description = "Android phones, ExecuTorch (.pte, XNNPACK delegate)"
    formats = ("pte",)
    install_hint = "pip install executorch (on the build machine; the app bundles ExecuTorch)"
    package = "org.pytorch:executorch-android"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            require("executorch.runtime", "executorch")
        except MissingDependencyError as exc:
            return str(exc)
        return None

    def runtime_version(self) -> str:
        return metadata.version("executorch")

    def load(self, model: ModelFile) -> Session:
        runtime = require("executorch.runtime", "executorch")
        if self.config.threads:
            lib = require("executorch.extension.pybindings.portable_lib", "executorch")
            lib._unsafe_reset_threadpool(int(self.config.threads))
        program = runtime.Runtime.get().load_program(str(model.path))
        method = program.load_method(METHOD)
        names = [t.name for t in self.model.inputs] if self.model is not None else None
        return ExecutorchSession(method, names)

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        return {
            "model_format": "pte",
            "method": METHOD,
            "backend": self.config.device,
            "num_threads": self.config.threads,
            "runtime_package": self.package,
            "lowered_with_executorch": self.runtime_version(),
            "validation": {
                "device_validated": False,
                "validated_with": (
                    f"executorch {self.runtime_version()} runtime ({self.config.device}) on "
                    f"{platform.machine()} (the same .pte file)"
                ),
                "reason": (
                    "the phone's ExecuTorch runtime runs on the device; latency here is the "
                    "build machine's"
                ),
            },
        }
