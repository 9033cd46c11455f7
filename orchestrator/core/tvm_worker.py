"""Apache TVM work, run by the TVM tool environment's interpreter (see :mod:`.toolenv`).

Apache TVM's pins cannot share edgeship's environment, so everything that imports
``tvm`` runs here, in a separate interpreter, and talks to edgeship through files and
JSON. This file imports nothing of edgeship (only the standard library, numpy, onnx and
tvm), so ``python tvm_worker.py ...`` works in an environment that holds only those.

Commands (each reads a JSON request file and writes a JSON result file):

- ``compile REQUEST RESULT``: ONNX -> Relax (ONNX frontend, weights folded in as
  constants) -> ``tvm.compile`` for an LLVM target given in TVM's dict form ->
  a shared library (``.so``). With ``database`` set, the MetaSchedule tuning records in
  that folder are applied before the build.
- ``tune REQUEST RESULT``: MetaSchedule tuning of the Relax module's kernels with a trial
  budget; the tuning database (``database_workload.json``,
  ``database_tuning_record.json``) lands in the request's ``work_dir``.
- ``serve``: a persistent inference session over stdin/stdout. Each message is a
  4-byte big-endian length followed by that many bytes of JSON (``{"op": ...}``); arrays
  travel as ``.npz`` files named in the messages. Latency is timed inside this process
  (``op: time``), so the pipe is never timed.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time


def _read(path):
    with open(path) as fh:
        return json.load(fh)


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def llvm_target(spec):
    """A ``tvm.target.Target`` from the dict form; ``mcpu`` empty: the host's CPU."""
    import tvm
    from tvm.target import codegen

    spec = dict(spec)
    spec.setdefault("kind", "llvm")
    if not spec.get("mcpu"):
        spec["mcpu"] = str(codegen.llvm_get_system_cpu())
    if not spec.get("num-cores"):
        spec.pop("num-cores", None)
    return tvm.target.Target(spec), spec


def _relax_module(req):
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    proto = onnx.load(req["onnx"])
    shapes = {i["name"]: list(i["shape"]) for i in req["inputs"]}
    dtypes = {i["name"]: i["dtype"] for i in req["inputs"]}
    mod = from_onnx(proto, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    return mod


def cmd_compile(req):
    import tvm
    from tvm import relax

    target, spec = llvm_target(req["target"])
    t0 = time.perf_counter()
    mod = _relax_module(req)
    database = req.get("database")
    with target:
        mod = relax.get_pipeline("zero")(mod)
        if database:
            mod = relax.transform.MetaScheduleApplyDatabase(database)(mod)
    ex = tvm.compile(mod, target=target)
    ex.export_library(req["output"])
    return {
        "tvm_version": tvm.__version__,
        "target": spec,
        "target_str": str(target),
        "database_applied": bool(database),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _build_candidate(mod, target, _params):
    """MetaSchedule's default build of one candidate, without the tensor intrinsics import.

    Defined in the worker script, which runs as ``__main__``: cloudpickle sends it to the
    builder process by value.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def cmd_tune(req):
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    target, spec = llvm_target(req["target"])
    t0 = time.perf_counter()
    mod = _relax_module(req)
    with target:
        mod = relax.get_pipeline("zero")(mod)
    work_dir = req["work_dir"]
    os.makedirs(work_dir, exist_ok=True)
    kwargs = {}
    if req.get("max_trials_per_task"):
        kwargs["max_trials_per_task"] = int(req["max_trials_per_task"])
    # one builder process, building without importing tvm.s_tir.tensor_intrin (MetaSchedule's
    # default build does, which takes tens of seconds per process; FP32 CPU schedules use no
    # tensor intrinsics); the time limit stays generous all the same
    builder = ms.builder.LocalBuilder(
        max_workers=1,
        timeout_sec=float(req.get("builder_timeout", 600)),
        f_build=_build_candidate,
    )
    database = ms.relax_integration.tune_relax(
        mod=mod,
        params={},
        target=target,
        work_dir=work_dir,
        max_trials_global=int(req["max_trials_global"]),
        num_trials_per_iter=int(req.get("num_trials_per_iter", 64)),
        cost_model=str(req.get("cost_model", "random")),
        strategy=str(req.get("strategy", "evolutionary")),
        builder=builder,
        seed=int(req.get("seed", 0)),
        **kwargs,
    )
    records = database.get_all_tuning_records()
    measured = [r for r in records if r.run_secs and min(float(t) for t in r.run_secs) < 1e9]
    return {
        "tvm_version": tvm.__version__,
        "target": spec,
        "records": len(records),
        "measured": len(measured),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# -- serve: a persistent session -------------------------------------------------------------


def _recv(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return json.loads(stream.read(size).decode())


def _send(stream, message):
    data = json.dumps(message).encode()
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


class Session:
    """A compiled ``.so`` in the Relax virtual machine."""

    def __init__(self, path, input_names):
        import tvm
        from tvm import relax

        self.tvm = tvm
        self.device = tvm.cpu()
        lib = tvm.runtime.load_module(path)
        self.vm = relax.VirtualMachine(lib, self.device)
        self.input_names = list(input_names)

    def run(self, arrays):
        import numpy as np

        args = [
            self.tvm.runtime.tensor(np.ascontiguousarray(arrays[n]), self.device)
            for n in self.input_names
        ]
        out = self.vm["main"](*args)
        if hasattr(out, "numpy"):
            return [out.numpy()]
        return [o.numpy() for o in out]


def cmd_serve():
    import numpy as np

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # nothing but framed messages goes to stdout; TVM's own prints go to stderr
    sys.stdout = sys.stderr
    session = None
    while True:
        msg = _recv(stdin)
        if msg is None or msg.get("op") == "close":
            return
        try:
            op = msg.get("op")
            if op == "load":
                import tvm

                t0 = time.perf_counter()
                session = Session(msg["path"], msg["inputs"])
                reply = {
                    "ok": True,
                    "tvm_version": tvm.__version__,
                    "load_ms": (time.perf_counter() - t0) * 1e3,
                }
            elif op in ("run", "time"):
                if session is None:
                    raise RuntimeError("no model loaded")
                with np.load(msg["inputs_npz"]) as npz:
                    arrays = {k: np.asarray(npz[k]) for k in npz.files}
                if op == "run":
                    outs = session.run(arrays)
                    np.savez(msg["outputs_npz"], *outs)
                    reply = {"ok": True, "outputs": len(outs)}
                else:
                    for _ in range(int(msg.get("warmup", 0))):
                        session.run(arrays)
                    times = []
                    for _ in range(int(msg["runs"])):
                        start = time.perf_counter_ns()
                        session.run(arrays)
                        times.append((time.perf_counter_ns() - start) / 1e6)
                    reply = {"ok": True, "times_ms": times}
            elif op == "memory":
                reply = {"ok": True, "peak_memory_mb": _peak_rss_mb()}
            else:
                raise RuntimeError(f"unknown op {op!r}")
        except Exception as exc:  # reported to the caller, who raises it as its own error
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        _send(stdout, reply)


def _peak_rss_mb() -> float:
    """This process image's peak resident memory (``VmHWM``); ``ru_maxrss`` would carry the
    peak of the build process that started this worker across its exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv):
    if argv[:1] == ["serve"]:
        cmd_serve()
        return 0
    if len(argv) != 3 or argv[0] not in ("compile", "tune"):
        sys.stderr.write("usage: tvm_worker.py compile|tune REQUEST.json RESULT.json | serve\n")
        return 64
    command, request, result = argv
    req = _read(request)
    threads = req.get("threads")
    if threads:
        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    out = cmd_compile(req) if command == "compile" else cmd_tune(req)
    _write(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
