"""Latency, throughput and peak memory of one artifact, measured in a fresh process.

Each requested batch size is measured in turn (inputs at the declared shapes, dynamic
dims other than the batch at their opt size); the first is the headline ``p50_ms``.
Every timed run is kept, per batch size (``latency_samples_ms``: batch -> runs in ms).

A fresh process keeps the measurement honest: no PyTorch threads, caches or
allocations of the build are around, and the process's peak resident memory is
what loading and running this artifact costs (plus the runtime itself). A session
whose model runs in a worker process of a tool environment (Apache TVM) times its runs
inside that worker (``time_runs``) and reports that worker's peak memory
(``peak_memory_mb``), so neither the pipe nor this process is counted.

Run as ``python -m orchestrator.build.measure`` with a JSON request on stdin; prints JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from orchestrator.device.agent.generate import peak_rss_mb


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
    metrics: dict[str, Any] = {}
    by_batch: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {}
    for i, entry in enumerate(request["batches"]):
        batch = int(entry["batch"])
        inputs = {t["name"]: _random(rng, t["shape"], t["dtype"]) for t in entry["inputs"]}
        timer = getattr(session, "time_runs", None)
        if timer is not None:  # a session run by a worker process times the runs itself
            times = list(timer(inputs, int(request["warmup"]), int(request["runs"])))
        else:
            for _ in range(int(request["warmup"])):
                session.run(inputs)
            times = []
            for _ in range(int(request["runs"])):
                start = time.perf_counter_ns()
                session.run(inputs)
                times.append((time.perf_counter_ns() - start) / 1e6)
        arr = np.array(times)
        row = {
            "p50_ms": float(np.percentile(arr, 50)),
            "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)),
            "mean_ms": float(arr.mean()),
            "throughput": batch * 1e3 / float(arr.mean()),  # samples per second
        }
        by_batch.append({"batch": batch, **row})
        for key, value in row.items():
            metrics[f"{key}.batch{batch}"] = value
        samples[str(batch)] = [round(t, 4) for t in times]
        if i == 0:
            metrics.update(row)
    # VmHWM, not ru_maxrss: ru_maxrss survives exec on Linux, so this process would report
    # the peak of the build that started it
    peak = peak_rss_mb()
    worker_peak = getattr(session, "peak_memory_mb", None)
    if worker_peak is not None:  # the model runs in a worker process: its memory is the cost
        peak = float(worker_peak())
    close = getattr(session, "close", None)
    if close is not None:
        close()
    return {
        **metrics,
        "load_ms": load_ms,
        "peak_memory_mb": peak,
        "latency_samples_ms": samples,
        "by_batch": by_batch,
    }


def _random(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def main() -> None:
    request = json.loads(sys.stdin.read())
    json.dump(measure(request), sys.stdout)


if __name__ == "__main__":
    main()
