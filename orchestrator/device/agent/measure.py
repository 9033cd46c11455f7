"""Measurement on a lab device: a signed candidate's outputs and latency; nothing is installed.

``edgeship-agent measure BUNDLE`` takes a measurement candidate: a folder (or exported
``.tar``) whose signed manifest has the kind ``edgeship.measure``. Such a manifest has
no version and activation refuses it, so a candidate never becomes the running model.

1. The candidate is verified as activation verifies a bundle, before anything is
   copied: manifest size and depth on the raw bytes, the signature by a key the
   device's root of trust allows to sign bundles, every rule of :mod:`.rules`, expiry,
   creation time, target family and runtime, then every listed file's size and hash.
2. Its files are copied, each hash checked while it is copied, into a scratch folder
   ``staging/.measure-<id>/``: never into ``versions/``; ``current``, ``previous`` and
   state.json are not touched.
3. A child process (``measure-run``) with the health check's rights, resource limits
   and scrubbed environment runs the candidate through its runtime's device runner
   (:mod:`.runners`, with runtime.json's settings: the device's execution provider and
   threads). It runs every evaluation chunk of ``measure/eval.npz`` and writes the
   outputs to ``staging/<candidate>.outputs.npz`` (the sender fetches and removes it),
   then times ``warmup`` + ``runs`` inferences per batch size of ``measure/measure.json``
   on seeded random inputs at the declared shapes (the build machine's method).
4. The scratch folder and the uploaded candidate are removed; one JSON object says what
   was measured, where (device, runtime and its version, Python) and by whom (uid).

``measure/measure.json``::

    {"schema": 1, "eval": "eval.npz", "chunks": N, "warmup": 5, "runs": 50, "seed": 0,
     "batches": [{"batch": 1, "inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}]}]}

``eval.npz`` holds chunk ``i``'s input ``j`` (runtime.json's input order) as ``c<i>_<j>``;
the outputs file holds its output ``k`` as ``c<i>_<k>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .activate import Activation, copy_checked
from .errors import AgentError, Refusal
from .files import MANIFEST, SIGNATURE, read_json, remove_tree
from .generate import peak_rss_mb
from .health import agent_command, engine_cache
from .privilege import health_env, health_limits, identity, limit_resources
from .rules import MEASURE_KIND, path_problem
from .runners import load
from .runtimes import runtime_version

MAX_RUNS = 100000  # timed runs per batch size
MAX_CHUNKS = 1000000  # evaluation chunks


class Measure(Activation):
    """The ``measure`` command: verify, copy into scratch, run, report, remove."""

    def measure(self, bundle: str, timeout: float) -> dict:
        device = self.device()
        folder, extracted = self.open_bundle(bundle)
        scratch = None
        try:
            info = self.verify(folder, kinds=(MEASURE_KIND,))
            manifest = info["manifest"]
            os.makedirs(self.staging, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix=".measure-", dir=self.staging)
            for entry in manifest["files"]:
                dest = os.path.join(scratch, *entry["path"].split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if not copy_checked(os.path.join(folder, entry["path"]), dest, entry):
                    raise Refusal(
                        "hash_mismatch",
                        "sha256 differs from the manifest: {}".format(entry["path"]),
                    )
            for envelope in (MANIFEST, SIGNATURE):
                src = os.path.join(folder, envelope)
                if os.path.isfile(src) and not os.path.islink(src):
                    shutil.copyfile(src, os.path.join(scratch, envelope))
            self.verify(scratch, policy=False, kinds=(MEASURE_KIND,))
            name = "{}-measure-{}".format(manifest["deployment"], info["manifest_sha256"][:12])
            out_path = os.path.join(self.staging, name + ".outputs.npz")
            for stale in (out_path, out_path + ".tmp"):
                if os.path.lexists(stale):
                    os.unlink(stale)
            result = self.run_measurement(scratch, out_path, timeout)
        finally:
            if scratch is not None:
                remove_tree(scratch)
            if extracted:
                remove_tree(extracted)
            self._drop_staged(bundle)
        result.update(
            deployment=manifest["deployment"],
            manifest_sha256=info["manifest_sha256"],
            key_id=info["key_id"],
            device={
                "name": device.get("name"),
                "family": device.get("family"),
                "fleet": device.get("fleet"),
            },
        )
        self.log(
            "measured",
            deployment=manifest["deployment"],
            manifest_sha256=info["manifest_sha256"],
            result=result.get("result"),
            p50_ms=(result.get("metrics") or {}).get("p50_ms"),
            reason=result.get("reason"),
        )
        return result

    def run_measurement(self, folder: str, out_path: str, timeout: float) -> dict:
        """``measure-run`` in a child process with the health check's rights and limits."""
        me = identity()
        cmd = [
            *agent_command(),
            "--root",
            self.root,
            "--user",
            me["name"],
            "measure-run",
            folder,
            out_path,
        ]
        try:
            limits = health_limits(read_json(os.path.join(folder, "runtime.json")))
        except (OSError, ValueError):
            limits = health_limits({})
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=folder,
            env=health_env(folder),
            preexec_fn=lambda: limit_resources(limits),
            start_new_session=True,
        )
        base = {"uid": me["uid"], "user": me["name"]}
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return dict(base, result="fail", reason=f"measurement timed out after {timeout}s")
        try:
            result = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
            reason = f"measurement exited with {proc.returncode}: {' | '.join(tail)}"
            if proc.returncode in (-signal.SIGKILL, -signal.SIGXCPU):
                reason += f" (killed; limits: {limits})"
            return dict(base, result="fail", reason=reason)
        if not isinstance(result, dict):
            return dict(base, result="fail", reason="measurement printed no JSON object")
        result["limits"] = limits
        result["runtimes"] = {
            str((result.get("runtime") or {}).get("name")): (result.get("runtime") or {}).get(
                "version"
            )
        }
        return result


# -- the measurement itself (child process; imports the device runtime and numpy) -------------


def _plan(folder: str, runtime: dict) -> dict:
    """measure/measure.json, checked (file names, counts, shapes)."""
    plan = read_json(os.path.join(folder, "measure", "measure.json"))
    if not isinstance(plan, dict):
        raise AgentError("measure/measure.json: expected a JSON object")
    why = path_problem(str(plan.get("eval", "")))
    if why:
        raise AgentError(f"measure/measure.json: eval: {why}")
    for key, top in (("chunks", MAX_CHUNKS), ("warmup", MAX_RUNS), ("runs", MAX_RUNS)):
        value = plan.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise AgentError(f"measure/measure.json: {key}: expected 0 to {top}, found {value!r}")
    if plan["runs"] < 1:
        raise AgentError("measure/measure.json: runs: expected at least 1")
    names = [str(t["name"]) for t in runtime["inputs"]]
    batches = plan.get("batches")
    if not isinstance(batches, list) or not batches:
        raise AgentError("measure/measure.json: batches: expected a list of batch sizes")
    for i, entry in enumerate(batches):
        inputs = entry.get("inputs") if isinstance(entry, dict) else None
        if not isinstance(inputs, list) or [str(t.get("name")) for t in inputs] != names:
            raise AgentError(
                f"measure/measure.json: batches[{i}].inputs: expected {names} (runtime.json)"
            )
        for t in inputs:
            shape = t.get("shape")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
            ):
                raise AgentError(
                    f"measure/measure.json: batches[{i}]: shape of {t['name']}: expected "
                    f"positive sizes, found {shape!r}"
                )
    return plan


def _timings(runner, inputs: dict, warmup: int, runs: int) -> list:
    for _ in range(warmup):
        runner.run(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        runner.run(inputs)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def measure_run(folder: str, out_path: str, root: str | None = None) -> dict:
    """Run the candidate in ``folder``: outputs of every evaluation chunk, then latency."""
    import numpy as np

    runtime = read_json(os.path.join(folder, "runtime.json"))
    plan = _plan(folder, runtime)
    names = [str(t["name"]) for t in runtime["inputs"]]
    dtypes = [str(t.get("dtype", "float32")) for t in runtime["inputs"]]
    start = time.perf_counter()
    runner = load(folder, runtime, engine_cache(root) if root else None)
    load_ms = (time.perf_counter() - start) * 1e3
    outputs = {}
    with np.load(os.path.join(folder, "measure", plan["eval"]), allow_pickle=False) as npz:
        for i in range(plan["chunks"]):
            inputs = {
                n: np.asarray(npz[f"c{i}_{j}"]).astype(dtypes[j]) for j, n in enumerate(names)
            }
            for k, value in enumerate(runner.run(inputs)):
                outputs[f"c{i}_{k}"] = np.asarray(value)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **outputs)  # type: ignore[arg-type]
    os.rename(tmp, out_path)
    digest = hashlib.sha256()
    with open(out_path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    rng = np.random.default_rng(int(plan.get("seed", 0)))
    metrics: dict = {}
    by_batch = []
    samples: dict = {}  # batch size (as text) -> every timed run in ms, as a build measures
    for i, entry in enumerate(plan["batches"]):
        batch = int(entry["batch"])
        inputs = {}
        for t in entry["inputs"]:
            if np.issubdtype(np.dtype(t["dtype"]), np.integer):
                inputs[t["name"]] = rng.integers(0, 2, size=t["shape"]).astype(t["dtype"])
            else:
                inputs[t["name"]] = rng.standard_normal(t["shape"]).astype(t["dtype"])
        times = _timings(runner, inputs, plan["warmup"], plan["runs"])
        arr = np.array(times)
        row = {
            "p50_ms": float(np.percentile(arr, 50)),
            "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)),
            "mean_ms": float(arr.mean()),
            "throughput": batch * 1e3 / float(arr.mean()),
        }
        by_batch.append(dict({"batch": batch}, **row))
        for key, value in row.items():
            metrics[f"{key}.batch{batch}"] = value
        samples[str(batch)] = [round(t, 4) for t in times]
        if i == 0:
            metrics.update(row)
    metrics["load_ms"] = load_ms
    metrics["peak_memory_mb"] = peak_rss_mb()
    return {
        "result": "measured",
        "runtime": runner.describe(),
        "metrics": metrics,
        "by_batch": by_batch,
        "latency_samples_ms": samples,
        "outputs": {
            "file": out_path,
            "sha256": digest.hexdigest(),
            "size": os.path.getsize(out_path),
            "chunks": plan["chunks"],
        },
        "python": sys.version.split()[0],
        "uid": os.getuid(),
        "user": identity()["name"],
        "runtime_installed": runtime_version(str((runtime.get("target") or {}).get("runtime"))),
    }
