"""The interface every optimisation pass implements, and the pass registry.

A pass is one file under ``orchestrator/passes/<backend>/`` that subclasses
:class:`Pass` and decorates it with :func:`register_pass`. Its options are a
dataclass (``Options``) that a recipe's ``options:`` mapping is checked against.
Passes are discovered by walking this package, so adding one needs no other edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.core.model_file import ModelFile

if TYPE_CHECKING:  # numpy stays out of the start-up of commands that only read specs
    import numpy as np

    Inputs = dict[str, np.ndarray]
else:
    Inputs = dict

# the format of a torch.export program (``torch.export.save``): a recipe whose first pass
# takes it starts from the reference model exported by torch.export instead of ONNX
TORCH_PROGRAM = "pt2"
# a Hugging Face model folder (save_pretrained): a recipe whose first pass takes it starts from
# the folder of model.source.path itself (the export with a KV cache is that pass)
HF_FOLDER = "huggingface"


@dataclass
class NoOptions:
    """A pass without options."""


@dataclass
class PassContext:
    """What a pass may use besides its input model."""

    workdir: Path  # an empty directory the pass writes its output into
    input_names: list[str]  # graph input names, in order
    calibration: Callable[[], list[Inputs]]
    # calibration data, lazily loaded, in batches the model takes (a static batch's size, else
    # up to the dynamic batch's max; see calibration_rows and first_rows)
    threads: int = 0  # CPU threads the pass may use (0 = library default)
    evaluate: Callable[[Any], float] | None = None  # metric of a candidate model (accuracy control)
    input_bounds: dict[str, list[int | tuple[int, int]]] | None = None
    # input name -> each dim as an int, or (min, max) for a dynamic one; None: all static
    device: str = ""  # the target's device (target.device), for passes that compile for it
    output_names: list[str] = field(default_factory=list)  # model.outputs' names, in order


def calibration_rows(batches: list[Inputs]) -> int:
    """How many samples calibration batches hold (rows of the first input, summed)."""
    return sum(len(next(iter(b.values()))) for b in batches if b)


def first_rows(batches: list[Inputs], samples: int) -> list[Inputs]:
    """The first calibration batches that hold at least ``samples`` samples (all when 0)."""
    if samples <= 0:
        return batches
    out: list[Inputs] = []
    for b in batches:
        if calibration_rows(out) >= samples:
            break
        out.append(b)
    return out


class Pass(ABC):
    """One optimisation or conversion step of a recipe."""

    name: ClassVar[str]  # registered name used in recipes
    description: ClassVar[str]  # one line for `edgeship list`
    Options: ClassVar[type] = NoOptions  # dataclass of the pass's options
    input_formats: ClassVar[tuple[str, ...]] = ("onnx",)  # formats it accepts (TORCH_PROGRAM too)
    output_format: ClassVar[str] = "onnx"  # format it produces
    runtimes: ClassVar[tuple[str, ...]] = ("onnxruntime", "openvino", "tensorrt")  # who runs it
    needs_calibration: ClassVar[bool] = False  # requires model.data.calibration
    backend: ClassVar[str] = "onnx"  # library the pass uses; its import is checked at build
    tool_environment: ClassVar[str] = ""  # the managed tool environment it runs in (checked too)

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(option, what is wrong) for each value of ``options`` (a recipe's mapping, types
        already checked) this pass refuses; the spec rules report them before any work."""
        return []

    @classmethod
    def static_shapes_reason(cls, options: Mapping[str, Any]) -> str | None:
        """Why this pass with ``options`` needs static input shapes (None: dynamic ones work).

        The spec rules refuse a dynamic dimension in a recipe with such a pass before any work.
        """
        return None

    def output_precision(self, options: Any, current: str) -> str:
        """Precision of the output model given the input model's precision."""
        return current

    @abstractmethod
    def run(self, model: ModelFile, options: Any, ctx: PassContext) -> ModelFile:
        """Transform ``model`` and return the new model (written under ``ctx.workdir``)."""


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry under ``cls.name``."""
    if cls.name in _PASSES and _PASSES[cls.name] is not cls:
        raise RuntimeError(f"two passes are registered as '{cls.name}'")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    _PASSES[cls.name] = cls
    return cls


_discovered = False


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name (discovering the passes package on first use)."""
    global _discovered
    if not _discovered:
        import orchestrator.passes as pkg

        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            importlib.import_module(info.name)
        _discovered = True
    return dict(_PASSES)


def export_format(first: type[Pass] | None) -> str:
    """The format a recipe starts from, given its first pass: ONNX, unless that pass takes
    only a torch.export program (``pt2``); a recipe without passes starts from ONNX."""
    if first is None or "onnx" in first.input_formats or not first.input_formats:
        return "onnx"
    return first.input_formats[0]


def make_options(cls: type[Pass], raw: dict[str, Any]) -> Any:
    """Build the pass's Options dataclass from an already type-checked mapping."""
    return cls.Options(**raw)
