"""The interface every target family implements, and the target registry.

A target family is one module under the top-level ``targets`` package that
subclasses :class:`Target` and decorates it with :func:`register_target`, plus
one YAML under ``conf/target/``. The orchestrator never imports a target by
name: it discovers every module in ``targets`` and looks families up here.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from orchestrator.core.model_file import ModelFile
from orchestrator.core.schema import ModelConfig, TargetConfig

if TYPE_CHECKING:  # annotations only: numpy stays out of commands that read specs
    import numpy as np


class Session(Protocol):
    """A loaded model that runs inference."""

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs in the graph's output order."""
        ...


class Target(ABC):
    """A device family: which runtime executes the artifact, and how."""

    family: ClassVar[str]  # registered family name used by conf/target/*.yaml
    runtime: ClassVar[str]  # "onnxruntime" | "openvino" | "tensorrt" | ...
    description: ClassVar[str]  # one line for `edgeship list`
    formats: ClassVar[tuple[str, ...]]  # artifact formats this target loads
    install_hint: ClassVar[str]  # how to install the runtime when it is missing
    # managed tool environments (orchestrator/core/toolenv.py) the runtime lives in, if any
    tool_environments: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TargetConfig, model: ModelConfig | None = None) -> None:
        self.config = config
        self.model = model  # the model spec (its declared shapes), when the caller has it

    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None when the runtime can run here; otherwise why not."""

    @abstractmethod
    def runtime_version(self) -> str:
        """Version of the runtime this machine has."""

    @abstractmethod
    def load(self, model: ModelFile) -> Session:
        """Load an artifact for inference with this target's settings (threads, precision)."""

    @classmethod
    def static_shapes_reason(cls, device: str) -> str | None:
        """Why this target on ``device`` runs only static input shapes (None: dynamic ones run).

        The spec rules refuse a dynamic dimension on such a target before any work.
        """
        return None

    def runtime_settings(self, model: ModelFile) -> dict[str, Any]:
        """Runtime options a device needs to load the artifact the way it was validated."""
        return {}

    def capabilities(self) -> dict[str, Any]:
        """What this target supports, for `edgeship list` and the runtime config."""
        return {
            "family": self.family,
            "runtime": self.runtime,
            "formats": list(self.formats),
            "precisions": list(self.config.precisions),
            "device": self.config.device,
        }


_TARGETS: dict[str, type[Target]] = {}
_discovered = False


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator adding a target family to the registry."""
    if cls.family in _TARGETS and _TARGETS[cls.family] is not cls:
        raise RuntimeError(f"two targets are registered as '{cls.family}'")
    _TARGETS[cls.family] = cls
    return cls


def registered_targets() -> dict[str, type[Target]]:
    """Every registered target family (discovering the ``targets`` package on first use)."""
    global _discovered
    if not _discovered:
        import targets as pkg

        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            importlib.import_module(info.name)
        _discovered = True
    return dict(_TARGETS)


def get_target(config: TargetConfig, model: ModelConfig | None = None) -> Target:
    """Instantiate the target family named by ``config.family`` (for ``model``'s shapes)."""
    return registered_targets()[config.family](config, model)
