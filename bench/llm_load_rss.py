"""Benchmark: what a decoder's peak RSS is made of, one loading option at a time.

Each case runs in a fresh interpreter: it loads one artifact's decoder as the validation
loop does (orchestrator/device/agent/generate.py), decodes 16 greedy steps from a fixed
prompt, and prints ``VmHWM``, ``VmRSS``, ``RssAnon`` and ``RssFile`` (MB) before loading,
after loading and after decoding, with the tokens and the step-1 logits' sum (an option
that changes results shows there) and the median step time.

    .venv/bin/python bench/llm_load_rss.py ARTIFACT_MODEL_DIR [ARTIFACT_MODEL_DIR ...]

ONNX folders (``model.onnx``): as saved; ``session.disable_prepacking``; and, when the
weights are inside ``model.onnx``, a copy saved with external data (ONNX Runtime maps it
into memory when a session is created from a path). OpenVINO folders
(``openvino_model.xml``): ``read_model`` + ``compile_model`` as the loop does, and with
``ENABLE_MMAP`` off. docs/generative.md ("Measured at a medium size") has the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in STATUS_KEYS:
                out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def probe(kind: str, model: str, option: str) -> dict:
    """Load ``model`` with ``option``, decode, and return the memory figures (this process)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from orchestrator.device.agent import generate as g

    base = status()
    t0 = time.perf_counter()
    dec: g.Decoder
    if kind == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if option == "disable_prepacking":
            so.add_session_config_entry("session.disable_prepacking", "1")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        dec = g.KvDecoder(sess, g.cache_dims(str(Path(model).parent)))
    else:
        import openvino as ov

        core = ov.Core()
        if option == "no_mmap":
            core.set_property({"ENABLE_MMAP": False})
        config = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        config["INFERENCE_NUM_THREADS"] = 2  # type: ignore[assignment]
        dec = g.OvStatefulDecoder(core.compile_model(core.read_model(model), "CPU", config))
    loaded = status()
    load_s = time.perf_counter() - t0
    result = g.greedy(dec, list(range(5, 53)), 16)
    steps = sorted(result["steps_ms"])
    return {
        "kind": kind,
        "option": option,
        "load_s": round(load_s, 2),
        "before": base,
        "loaded": loaded,
        "decoded": status(),
        "tokens": result["tokens"],
        "step1_logits_sum": float(np.asarray(result["first_logits"]).sum()),
        "step_ms_median": round(steps[len(steps) // 2], 2) if steps else 0.0,
    }


def with_external_data(model: Path, out: Path) -> Path:
    """A copy of ``model`` (and its folder's small files) saved with external data."""
    import shutil

    import onnx

    out.mkdir(parents=True, exist_ok=True)
    for f in model.parent.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy(f, out)
    onnx.save_model(
        onnx.load(str(model)),
        str(out / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    return out / "model.onnx"


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--probe":
        print(json.dumps(probe(*sys.argv[2:5])))
        return 0
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for i, folder in enumerate(Path(a) for a in sys.argv[1:]):
            cases: list[tuple[str, Path, str]] = []
            if (folder / "openvino_model.xml").is_file():
                xml = folder / "openvino_model.xml"
                cases += [("openvino", xml, "default"), ("openvino", xml, "no_mmap")]
            else:
                onnx_path = folder / "model.onnx"
                cases += [("onnx", onnx_path, "default"), ("onnx", onnx_path, "disable_prepacking")]
                if not any(folder.glob("*.data")):
                    ext = with_external_data(onnx_path, Path(tmp) / f"ext{i}")
                    cases.append(("onnx", ext, "external_data"))
            for kind, path, option in cases:
                cmd = [sys.executable, __file__, "--probe", kind, str(path), option]
                run = subprocess.run(cmd, capture_output=True, text=True, check=True)
                print(f"{folder}: {run.stdout.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
