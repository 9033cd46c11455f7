"""Core ML model packages on any OS: what coremltools can check without running the model.

Core ML runs models only on Apple's operating systems (``MLModel.predict`` raises "Model
prediction is only supported on macOS" elsewhere). On Linux a package is still read
back (``MLModel(path, skip_model_load=True)``) and checked: its spec version against the
deployment target, its ML program's operations against the operations that deployment
target's Core ML has (refused otherwise), and its inputs and outputs against the model
spec (names, shapes, float32). :func:`inspect` gives the facts, :func:`problems` the
refusals. The numerics are checked with the PyTorch program the package was converted
from, at the package's precision (:class:`StandInSession`).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from orchestrator.core.runtime_imports import require

SUMMARY = "model.coreml.json"  # beside the package: precision, weights, the inspection
SOURCE_PROGRAM = "model.source.pt2"  # beside the package: the program it was converted from
# deployment target -> the highest Core ML spec version it reads
SPEC_VERSIONS = {"iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9}


def coremltools() -> Any:
    """coremltools, imported with its notes about the missing native runtime kept quiet."""
    for name in ("coremltools",):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return require("coremltools")


def deployment_target(name: str) -> Any:
    return getattr(coremltools().target, name)


def _feature(f: Any) -> dict[str, Any]:
    kind = f.type.WhichOneof("Type")
    out: dict[str, Any] = {"name": f.name, "type": kind}
    if kind == "multiArrayType":
        arr = f.type.multiArrayType
        out["shape"] = [int(d) for d in arr.shape]
        names = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}
        out["dtype"] = names.get(int(arr.dataType), str(arr.dataType))
    return out


def inspect(package: Path) -> dict[str, Any]:
    """Spec version, inputs, outputs and the ML program's operations of ``package``."""
    ct = coremltools()
    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    ops: dict[str, int] = {}
    program = getattr(model, "_mil_program", None)
    if program is None:  # read from disk: the ML program from its proto
        from coremltools.converters.mil.frontend.milproto.load import load as load_program

        program = load_program(
            spec,
            specification_version=spec.specificationVersion,
            file_weights_dir=model.weights_dir,
        )
    for function in program.functions.values():
        for op in function.operations:
            ops[op.op_type] = ops.get(op.op_type, 0) + 1
    return {
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "operations": dict(sorted(ops.items())),
    }


def unsupported_ops(ops: list[str], target: str) -> list[str]:
    """The operations the Core ML of deployment target ``target`` does not have."""
    coremltools()
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    limit = deployment_target(target)
    missing = []
    for op in ops:
        versions = SSAOpRegistry.core_ops.get(op)
        if not versions or not any(v <= limit for v in versions):
            missing.append(op)
    return missing


def problems(
    info: dict[str, Any],
    target: str,
    inputs: list[tuple[str, list[int]]],
    outputs: list[tuple[str, list[int]]],
) -> list[str]:
    """What stops the package from running as the model spec says on ``target``'s Core ML."""
    out = []
    if info["model_type"] != "mlProgram":
        out.append(f"the package holds a {info['model_type']}, expected an mlProgram")
    limit = SPEC_VERSIONS.get(target)
    if limit is not None and info["specification_version"] > limit:
        out.append(
            f"spec version {info['specification_version']} is newer than {target}'s ({limit})"
        )
    missing = unsupported_ops(list(info["operations"]), target)
    if missing:
        out.append(f"operations {', '.join(missing)} are not in {target}'s Core ML")
    for kind, want, got in (
        ("input", inputs, info["inputs"]),
        ("output", outputs, info["outputs"]),
    ):
        found = [(f["name"], f.get("shape")) for f in got]
        if found != [(n, list(s)) for n, s in want]:
            out.append(f"{kind}s {found}, expected {[(n, list(s)) for n, s in want]}")
        for f in got:
            if f.get("dtype") != "float32":
                out.append(f"{kind} {f['name']} is {f.get('dtype')}, expected float32")
    return out


def read_summary(package: Path) -> dict[str, Any]:
    path = package.parent / SUMMARY
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def fake_quantize_int8(weight: Any, axis: int = 0) -> Any:
    """Per-channel symmetric INT8 (coremltools' ``linear_symmetric``): the weight the
    quantized package holds, dequantized."""
    torch = require("torch")
    w = weight.detach().float()
    dims = [d for d in range(w.ndim) if d != axis]
    scale = w.abs().amax(dim=dims, keepdim=True) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(w / scale), -127, 127) * scale).to(weight.dtype)


class StandInSession:
    """The PyTorch program a package was converted from, at the package's precision.

    FP16: weights and activations in float16 (inputs cast in, outputs cast back to
    float32), as Core ML's ``compute_precision=FLOAT16`` runs them. INT8 weights: each
    weight the compression quantized (``weight_threshold`` elements or more) replaced by
    its per-channel INT8 value, dequantized.
    """

    def __init__(self, package: Path, threads: int = 0) -> None:
        torch = require("torch")
        self.threads = threads  # torch's intra-op threads while it runs (0: as they are)
        summary = read_summary(package)
        source = package.parent / SOURCE_PROGRAM
        program = torch.export.load(str(source))
        self.module = program.module()
        self.fp16 = summary.get("compute_precision", "fp32") == "fp16"
        weights = summary.get("weights") or {}
        if weights.get("dtype") == "int8":
            threshold = int(weights.get("weight_threshold", 2048))
            with torch.no_grad():
                for _, p in self.module.named_parameters():
                    if p.ndim >= 2 and p.numel() > threshold:
                        p.copy_(fake_quantize_int8(p))
        if self.fp16:
            self.module = self.module.half()
        self.input_names = [str(n) for n in summary.get("input_names", [])]
        self.torch = torch

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        names = self.input_names or list(inputs)
        import numpy as np

        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names]
        if self.fp16:
            args = [a.half() for a in args]
        saved = torch.get_num_threads()
        if self.threads:  # torch's thread count is the process's: set for this run only
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                out = self.module(*args)
        finally:
            torch.set_num_threads(saved)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [o.float().numpy() for o in outs]


class CoreMLSession:
    """``MLModel.predict`` on macOS (the only OS Core ML predicts on)."""

    def __init__(self, package: Path, output_names: list[str]) -> None:
        ct = coremltools()
        self.model = ct.models.MLModel(str(package))
        self.output_names = output_names

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.model.predict(inputs)
        import numpy as np

        return [np.asarray(out[n], dtype=np.float32) for n in self.output_names]
