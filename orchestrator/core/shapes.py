"""Input and output shapes with named dynamic dimensions.

A model spec writes a dimension as a positive int (static) or as a name that the
input declares under ``dynamic`` with the range it takes::

    inputs:
      - name: imu
        shape: [batch, 6, time]
        dynamic:
          batch: {min: 1, opt: 8, max: 32}
          time: {min: 50, opt: 100, max: 400}
    outputs:
      - {name: logits, shape: [batch, 4]}

A name means the same dimension wherever it appears (every input that uses
``batch`` takes the same batch size; outputs name the inputs' dimensions). The
batch is axis 0 of the first input. Everything here is pure: the spec rules check
declarations with it, the build derives export, runtime and measurement shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.core.schema import ModelConfig, TensorSpec

Which = Literal["min", "opt", "max"]
Dim = int | str


@dataclass(frozen=True)
class Bounds:
    """The range of one dynamic dimension."""

    min: int
    opt: int
    max: int

    def pick(self, which: Which) -> int:
        return int(getattr(self, which))

    def __str__(self) -> str:
        return f"min {self.min}, opt {self.opt}, max {self.max}"


def dims_of(tensor: TensorSpec) -> list[Dim]:
    return [d if isinstance(d, str) else int(d) for d in tensor.shape]


def dim_bounds(model: ModelConfig) -> dict[str, Bounds]:
    """Every named dimension of the model's inputs and its range (first declaration wins)."""
    out: dict[str, Bounds] = {}
    for t in model.inputs:
        for name, b in t.dynamic.items():
            out.setdefault(str(name), Bounds(int(b.min), int(b.opt), int(b.max)))
    return out


def is_dynamic(model: ModelConfig) -> bool:
    return any(isinstance(d, str) for t in model.inputs for d in t.shape)


def batch_dim(model: ModelConfig) -> Dim:
    """Axis 0 of the first input: an int (static batch) or the name of a dynamic one."""
    return dims_of(model.inputs[0])[0]


def declared_batches(model: ModelConfig, requested: Sequence[int] = ()) -> list[int]:
    """The batch sizes latency is measured at: ``requested``, else the declared ones.

    A static batch is measured at its size; a dynamic one at its min, opt and max.
    """
    if requested:
        return list(dict.fromkeys(int(b) for b in requested))
    dim = batch_dim(model)
    if isinstance(dim, int):
        return [dim]
    b = dim_bounds(model)[dim]
    return list(dict.fromkeys([b.min, b.opt, b.max]))


def eval_batch(model: ModelConfig) -> int:
    """How many samples run together in validation: a static batch, else the batch's opt."""
    dim = batch_dim(model)
    return dim if isinstance(dim, int) else dim_bounds(model)[dim].opt


def concrete_shape(
    tensor: TensorSpec,
    bounds: dict[str, Bounds],
    which: Which,
    batch: int | None = None,
    batch_name: Dim | None = None,
) -> list[int]:
    """The tensor's shape with every named dim at its ``which`` size.

    ``batch`` replaces the batch dimension (``batch_name``, axis 0 of the first input)
    wherever it appears.
    """
    out = []
    for i, d in enumerate(dims_of(tensor)):
        if (
            batch is not None
            and batch_name is not None
            and d == batch_name
            and (isinstance(d, str) or i == 0)
        ):
            out.append(batch)
        elif isinstance(d, str):
            out.append(bounds[d].pick(which))
        else:
            out.append(d)
    return out


def input_shapes(
    model: ModelConfig, which: Which = "opt", batch: int | None = None
) -> dict[str, list[int]]:
    """Every input's concrete shape at ``which`` (and at batch size ``batch`` when given)."""
    bounds = dim_bounds(model)
    name = batch_dim(model)
    return {t.name: concrete_shape(t, bounds, which, batch, name) for t in model.inputs}


def profiles(model: ModelConfig) -> dict[str, dict[str, list[int]]]:
    """TensorRT optimisation profile: input name -> min/opt/max shapes (dynamic inputs only)."""
    bounds = dim_bounds(model)
    out: dict[str, dict[str, list[int]]] = {}
    for t in model.inputs:
        if not any(isinstance(d, str) for d in t.shape):
            continue
        out[t.name] = {w: concrete_shape(t, bounds, w) for w in ("min", "opt", "max")}
    return out


def bounded_dims(tensor: TensorSpec, bounds: dict[str, Bounds]) -> list[int | tuple[int, int]]:
    """Each dim as an int, or ``(min, max)`` for a dynamic one (OpenVINO's bounded dims)."""
    return [(bounds[d].min, bounds[d].max) if isinstance(d, str) else d for d in dims_of(tensor)]


def input_bounds(model: ModelConfig) -> dict[str, list[int | tuple[int, int]]] | None:
    """Input name -> bounded dims, for models with dynamic inputs (None when all static)."""
    if not is_dynamic(model):
        return None
    bounds = dim_bounds(model)
    return {t.name: bounded_dims(t, bounds) for t in model.inputs}


def openvino_shapes(ov: Any, bounds: dict[str, list[int | tuple[int, int]]]) -> dict[str, Any]:
    """``ov.Model.reshape`` argument: each input's PartialShape with bounded dynamic dims."""
    return {
        name: ov.PartialShape(
            [ov.Dimension(*d) if isinstance(d, tuple) else ov.Dimension(d) for d in dims]
        )
        for name, dims in bounds.items()
    }


def tensor_json(tensor: TensorSpec) -> dict[str, Any]:
    """A tensor as runtime.json writes it (dynamic dims named, with their ranges)."""
    out: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype}
    if tensor.dynamic:
        out["dynamic"] = {
            str(n): {"min": int(b.min), "opt": int(b.opt), "max": int(b.max)}
            for n, b in tensor.dynamic.items()
        }
    return out


def dynamic_names(model: ModelConfig) -> list[str]:
    seen: dict[str, None] = {}
    for t in model.inputs:
        for d in t.shape:
            if isinstance(d, str):
                seen[d] = None
    return list(seen)


def describe_shape(shape: Iterable[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
