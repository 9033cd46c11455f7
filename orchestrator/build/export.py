"""Export the reference model: to one self-contained ONNX file, or to a torch.export
program (``.pt2``) for a recipe whose first pass takes a torch program."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.core.model_file import ModelFile
from orchestrator.core.runtime_imports import require
from orchestrator.core.schema import ModelConfig
from orchestrator.core.shapes import Bounds, concrete_shape, dim_bounds, input_shapes, is_dynamic
from orchestrator.errors import BuildError

log = logging.getLogger(__name__)


def export_onnx(net: Any, model: ModelConfig, root: Path, out: Path) -> ModelFile:
    """Write ``out`` (a single .onnx, weights inside) from a PyTorch module or an onnx source."""
    if model.source.kind == "onnx":
        assert model.source.path is not None
        return import_onnx(root / model.source.path, model, out, "model.source.path")
    return export_torch(net, model, out)


def export_torch(net: Any, model: ModelConfig, out: Path, dynamo: bool = True) -> ModelFile:
    """Export a torch module or ExportedProgram (``dynamo=False``: a TorchScript module,
    through the TorchScript-based exporter) to ``out``."""
    onnx = require("onnx")
    torch = require("torch")
    shapes = example_shapes(model)
    args = tuple(torch.zeros(shapes[t.name], dtype=getattr(torch, t.dtype)) for t in model.inputs)
    tmp = out.with_suffix(".export.onnx")
    names = {
        "input_names": [t.name for t in model.inputs],
        "output_names": [t.name for t in model.outputs],
        "opset_version": model.source.opset,
        "verbose": False,
    }
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if dynamo:
                program = torch.onnx.export(
                    net,
                    args,
                    dynamo=True,
                    optimize=True,
                    dynamic_shapes=torch_dynamic_shapes(model),
                    **names,
                )
                program.save(str(tmp), external_data=False)
            else:
                axes = {
                    t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                    for t in [*model.inputs, *model.outputs]
                }
                torch.onnx.export(
                    net,
                    args,
                    str(tmp),
                    dynamo=False,
                    dynamic_axes={k: v for k, v in axes.items() if v} or None,
                    **names,
                )
        except Exception as exc:
            raise BuildError(f"error: export to ONNX failed: {exc}") from exc
        finally:
            quiet.setLevel(level)
    proto = onnx.load(str(tmp))
    for p in tmp.parent.glob(tmp.name + "*"):
        p.unlink()
    # value_info written by exporters can disagree with what shape inference derives after
    # their graph rewrites; drop it and infer afresh so downstream tools see one truth
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return _save_checked(proto, model, out)


def export_program(net: Any, model: ModelConfig, out: Path) -> ModelFile:
    """Write ``out`` (a ``.pt2`` archive, ``torch.export.save``) from a torch module or an
    ExportedProgram, traced at the model's example shapes with its dynamic dimensions.

    An ExportedProgram is exported again from its module, so every program a pass receives
    has the spec's inputs and dynamic dimensions whatever the source declared. The example
    inputs are contiguous zeros (an expanded, zero-stride example makes converters fail).
    """
    torch = require("torch")
    if isinstance(net, torch.export.ExportedProgram):
        net = net.module()
    shapes = example_shapes(model)
    args = tuple(
        torch.zeros(shapes[t.name], dtype=getattr(torch, t.dtype)).contiguous()
        for t in model.inputs
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(
                net, args, dynamic_shapes=torch_dynamic_shapes(model), strict=False
            )
        except Exception as exc:
            raise BuildError(
                f"error: export to a torch program (torch.export) failed: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from exc
    found = len(program.graph_signature.user_inputs)
    if found != len(model.inputs):
        raise BuildError(
            f"error: {out.name}: the torch program takes {found} input(s); model.inputs names "
            f"{len(model.inputs)} ({', '.join(t.name for t in model.inputs)})"
        )
    torch.export.save(program, str(out))
    return ModelFile(out, "pt2", "fp32")


def import_onnx(src: Path, model: ModelConfig, out: Path, key: str) -> ModelFile:
    """An ONNX source as the export: the file copied as it is (external data folded in)."""
    onnx = require("onnx")
    if not src.is_file():
        raise BuildError(f"error: {key}: file {src} does not exist")
    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise BuildError(f"error: {key}: {src} is not an ONNX model: {exc}") from exc
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        shutil.copyfile(src, out)
        try:
            onnx.checker.check_model(str(out))
        except Exception as exc:
            raise BuildError(f"error: {key}: {src} is not a valid ONNX model: {exc}") from exc
        _check_signature(onnx.load(str(out), load_external_data=False), model, out)
        return ModelFile(out, "onnx", "fp32")
    return _save_checked(onnx.load(str(src)), model, out)


def onnx_signature(path: Path) -> tuple[list[str], list[str]]:
    """The graph input and output names of an ONNX file (initializers excluded)."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return (
        [i.name for i in proto.graph.input if i.name not in inits],
        [o.name for o in proto.graph.output],
    )


def _save_checked(proto: Any, model: ModelConfig, out: Path) -> ModelFile:
    onnx = require("onnx")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(out), save_as_external_data=False)
    for stray in out.parent.glob(out.name + ".data"):
        stray.unlink()
    _check_signature(onnx.load(str(out), load_external_data=False), model, out)
    return ModelFile(out, "onnx", "fp32")


def example_shapes(model: ModelConfig) -> dict[str, list[int]]:
    """Shapes of the export's example inputs: every dynamic dim at its opt size.

    torch.export specialises a dimension whose example size is 1, so a dynamic dim whose
    opt is 1 is exported with an example of 2 (within its range: min < max always).
    """
    bounds = {
        name: Bounds(b.min, max(b.opt, min(2, b.max)), b.max)
        for name, b in dim_bounds(model).items()
    }
    return {t.name: concrete_shape(t, bounds, "opt") for t in model.inputs}


def torch_dynamic_shapes(model: ModelConfig) -> tuple[dict[int, Any] | None, ...] | None:
    """``dynamic_shapes`` for torch.onnx.export: one ``torch.export.Dim`` per named dim,
    shared by every input that names it, bounded by its min and max."""
    if not is_dynamic(model):
        return None
    import torch

    dims = {
        name: torch.export.Dim(name, min=b.min, max=b.max) for name, b in dim_bounds(model).items()
    }
    out: list[dict[int, Any] | None] = []
    for t in model.inputs:
        axes = {i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)}
        out.append(axes or None)
    return tuple(out)


def _check_signature(proto: Any, model: ModelConfig, path: Path) -> None:
    inits = {i.name for i in proto.graph.initializer}
    got_in = [i.name for i in proto.graph.input if i.name not in inits]
    got_out = [o.name for o in proto.graph.output]
    want_in = [t.name for t in model.inputs]
    want_out = [t.name for t in model.outputs]
    if got_in != want_in or got_out != want_out:
        raise BuildError(
            f"error: {path.name}: graph inputs {got_in} / outputs {got_out} do not match "
            f"model.inputs {want_in} / model.outputs {want_out}"
        )


def copy_model(model: ModelFile, dest_dir: Path, stem: str = "model") -> ModelFile:
    """Copy a model's files into ``dest_dir`` under a fixed stem; returns the copy."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    primary = dest_dir / f"{stem}{model.path.suffix}"
    if model.path.is_dir():  # a package folder (.mlpackage)
        shutil.copytree(model.path, primary)
    else:
        shutil.copy2(model.path, primary)
    if model.format == "openvino_ir":
        shutil.copy2(model.path.with_suffix(".bin"), primary.with_suffix(".bin"))
    extra = []
    for e in model.extra:
        shutil.copy2(e, dest_dir / e.name)
        extra.append(dest_dir / e.name)
    return ModelFile(primary, model.format, model.precision, tuple(extra))


def zeros_like_inputs(model: ModelConfig, batch: int | None = None) -> dict[str, np.ndarray]:
    """Zero inputs at the declared shapes (dynamic dims at opt; ``batch`` replaces the batch)."""
    shapes = input_shapes(model, "opt", batch)
    return {t.name: np.zeros(shapes[t.name], dtype=np.dtype(t.dtype)) for t in model.inputs}
