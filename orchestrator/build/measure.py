"""Latency and peak memory of one artifact, measured in a fresh process.

A fresh process keeps the measurement honest: no PyTorch threads, caches or
allocations of the build are around, and the process's peak resident memory is
what loading and running this artifact costs (plus the runtime itself).

Run as ``python -m orchestrator.build.measure`` with a JSON request on stdin; prints JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import numpy as np


def measure(request: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from orchestrator.core.model_file import ModelFile
    from orchestrator.core.schema import TargetConfig
    from targets.base import get_target

    target = get_target(TargetConfig(**request["target"]))
    m = request["model"]
    model = ModelFile(Path(m["path"]), m["format"], m["precision"])
    t0 = time.perf_counter()
    session = target.load(model)
    load_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(0)
    batch = int(request.get("batch", 1))
    inputs = {
        t["name"]: rng.standard_normal([batch, *t["shape"][1:]]).astype(t["dtype"])
        for t in request["inputs"]
    }
    for _ in range(int(request["warmup"])):
        session.run(inputs)
    times = []
    for _ in range(int(request["runs"])):
        start = time.perf_counter_ns()
        session.run(inputs)
        times.append((time.perf_counter_ns() - start) / 1e6)
    arr = np.array(times)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "load_ms": load_ms,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "latency_samples_ms": [round(t, 4) for t in times],
    }


def main() -> None:
    request = json.loads(sys.stdin.read())
    json.dump(measure(request), sys.stdout)


if __name__ == "__main__":
    main()
