"""The machine's own peak, per runtime and precision, and the FLOPs of a model's window.

A short microbenchmark through the runtimes the artifacts run in, on this machine, with
the benchmark's thread count: a large 3-D convolution (64 -> 64 channels, 3^3 kernel,
32^3 voxels: the operator the segmentation networks spend their time in) and a square
matrix multiplication, each as a one-operator ONNX model run by

- OpenVINO (CPU plugin) at f32 and at bf16 (``INFERENCE_PRECISION_HINT``; the precision
  OpenVINO reports is recorded: a CPU without bf16 runs f32) and as INT8 (NNCF
  post-training quantization of the same model);
- ONNX Runtime (CPU execution provider) at FP32 and as static QDQ INT8.

The peak of a (runtime, precision) is the best GFLOP/s over both operators and a few
runs; a window's achieved GFLOP/s is its convolution FLOPs (:func:`conv_flops`) over its
measured time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("segmentation_speedup.peak")

CONV = {"channels": 64, "kernel": 3, "size": 32}
MATMUL = 2048


def conv_flops(net: Any, patch: tuple[int, int, int]) -> float:
    """FLOPs (2 per multiply-add) of every 3-D convolution and transposed convolution of
    a PyTorch module on one ``[1, C_in, *patch]`` window; the other operators' work is
    small beside them and not counted."""
    import torch

    total = [0.0]

    def conv(module: Any, inputs: Any, output: Any) -> None:
        per_out = module.in_channels // module.groups * float(np.prod(module.kernel_size))
        total[0] += 2.0 * output.numel() * per_out

    def transposed(module: Any, inputs: Any, output: Any) -> None:
        per_in = module.out_channels // module.groups * float(np.prod(module.kernel_size))
        total[0] += 2.0 * inputs[0].numel() * per_in

    hooks = []
    for m in net.modules():
        if isinstance(m, torch.nn.ConvTranspose3d):
            hooks.append(m.register_forward_hook(transposed))
        elif isinstance(m, torch.nn.Conv3d):
            hooks.append(m.register_forward_hook(conv))
    try:
        channels = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d)).in_channels
        with torch.inference_mode():
            net(torch.zeros((1, channels, *patch)))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def _onnx_models(folder: Path) -> dict[str, tuple[Path, float, dict[str, np.ndarray]]]:
    """The microbenchmark's one-operator ONNX models: name -> (file, FLOPs, input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c, k, s = CONV["channels"], CONV["kernel"], CONV["size"]
    w = (rng.standard_normal((c, c, k, k, k)) * 0.05).astype(np.float32)
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)],
        "conv3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, s, s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, s, s, s])],
        [numpy_helper.from_array(w, "w")],
    )
    n = MATMUL
    b = (rng.standard_normal((n, n)) * 0.05).astype(np.float32)
    matmul = helper.make_graph(
        [helper.make_node("MatMul", ["x", "b"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b, "b")],
    )
    out = {}
    for name, graph, flops, shape in (
        ("conv3d", conv, 2.0 * c * c * k**3 * s**3, (1, c, s, s, s)),
        ("matmul", matmul, 2.0 * n**3, (n, n)),
    ):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        out[name] = (path, flops, {"x": rng.standard_normal(shape).astype(np.float32)})
    return out


def _best_seconds(run: Any, runs: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _ov_int8(ov: Any, path: Path, sample: dict[str, np.ndarray], out: Path) -> Path:
    import nncf

    model = ov.Core().read_model(str(path))
    rng = np.random.default_rng(1)
    data = [
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in sample.items()}
        for _ in range(3)
    ]
    quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=3)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def _ort_int8(path: Path, sample: dict[str, np.ndarray], out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.items = iter(
                [
                    {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in sample.items()}
                    for _ in range(3)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def measure_peaks(threads: int, runs: int = 5) -> list[dict[str, Any]]:
    """GFLOP/s of every (runtime, precision, operator) on this machine; see the module."""
    import onnxruntime as ort
    import openvino as ov

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeship-peak-") as tmp:
        folder = Path(tmp)
        models = _onnx_models(folder)
        core = ov.Core()
        for op, (path, flops, sample) in models.items():
            variants = [
                ("openvino", "fp32", path, {"INFERENCE_PRECISION_HINT": "f32"}),
                ("openvino", "bf16", path, {"INFERENCE_PRECISION_HINT": "bf16"}),
                ("openvino", "int8", None, {"INFERENCE_PRECISION_HINT": "f32"}),
            ]
            for runtime, precision, model_path, config in variants:
                if model_path is None:
                    model_path = _ov_int8(ov, path, sample, folder / f"{op}_int8.xml")
                compiled = core.compile_model(
                    core.read_model(str(model_path)),
                    "CPU",
                    {
                        **config,
                        "INFERENCE_NUM_THREADS": str(threads),
                        "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": "1",
                    },
                )
                request = compiled.create_infer_request()
                hint = compiled.get_property("INFERENCE_PRECISION_HINT")
                ran = str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint)
                seconds = _best_seconds(lambda r=request, x=sample: r.infer(x), runs)
                rows.append(
                    {
                        "runtime": runtime,
                        "precision": precision,
                        "executed": ("int8+" if precision == "int8" else "") + ran,
                        "op": op,
                        "seconds": seconds,
                        "gflops": flops / seconds / 1e9,
                    }
                )
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            for precision, model_path in (
                ("fp32", path),
                ("int8", _ort_int8(path, sample, folder / f"{op}_int8.onnx")),
            ):
                session = ort.InferenceSession(
                    str(model_path), so, providers=["CPUExecutionProvider"]
                )
                seconds = _best_seconds(lambda s=session, x=sample: s.run(None, x), runs)
                rows.append(
                    {
                        "runtime": "onnxruntime",
                        "precision": precision,
                        "executed": precision,
                        "op": op,
                        "seconds": seconds,
                        "gflops": flops / seconds / 1e9,
                    }
                )
    return rows


def peak_table(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(runtime, precision) -> the best GFLOP/s over the operators."""
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["runtime"], r["precision"])
        out[key] = max(out.get(key, 0.0), float(r["gflops"]))
    return out
