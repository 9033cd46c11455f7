"""edgeship's side of Apache TVM: requests to the worker in the TVM tool environment.

TVM runs only in its tool environment (:mod:`.toolenv`), by :mod:`.tvm_worker`. The
passes compile and tune through :func:`call`; the ``tvm_cpu`` target runs a compiled
library through :class:`WorkerSession`, one persistent worker process per loaded model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator.core import toolenv, tvm_worker
from orchestrator.errors import BuildError

if TYPE_CHECKING:  # numpy stays out of the start-up of commands that only read specs
    import numpy as np

TOOL = "tvm"
WORKER = Path(tvm_worker.__file__).resolve()
HOST_CPU = ("", "host", "CPU")  # target.device values meaning "the build machine's own CPU"
METADATA = "model.tvm.json"  # beside the compiled library: target, TVM version, inputs/outputs


def llvm_target(device: str, threads: int) -> dict[str, Any]:
    """TVM's dict form of an LLVM target for ``device`` (an LLVM CPU name, e.g.
    ``x86-64-v3``, ``skylake-avx512``; ``host``: the CPU of the machine that compiles)."""
    spec: dict[str, Any] = {"kind": "llvm"}
    if device not in HOST_CPU:
        spec["mcpu"] = device
    if threads:
        spec["num-cores"] = int(threads)
    return spec


def _thread_env(threads: int) -> dict[str, str]:
    return {"TVM_NUM_THREADS": str(threads)} if threads else {}


def call(
    command: str, request: dict[str, Any], workdir: Path, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``tvm_worker.py command`` on ``request`` (files in ``workdir``); its result."""
    req = workdir / f"tvm-{command}.request.json"
    res = workdir / f"tvm-{command}.result.json"
    req.write_text(json.dumps(request, indent=1, sort_keys=True))
    threads = int(request.get("threads") or 0)
    try:
        proc = toolenv.run_worker(
            TOOL, WORKER, [command, str(req), str(res)], timeout=timeout, env=_thread_env(threads)
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"error: TVM {command} ran past {timeout:.0f} s") from exc
    if proc.returncode != 0 or not res.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise BuildError(f"error: TVM {command} failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(res.read_text())
    for path in (req, res):
        path.unlink()
    return result


class WorkerSession:
    """A compiled library loaded in a worker process of the TVM tool environment.

    Messages are length-prefixed JSON over the worker's stdin/stdout; arrays travel as
    ``.npz`` files in a private temporary folder. :meth:`time_runs` times the runs inside
    the worker, so the measurement never includes the pipe or the files.
    """

    def __init__(self, library: Path, input_names: list[str], threads: int) -> None:
        python = toolenv.toolenv(TOOL)
        env = {**os.environ, **_thread_env(threads)}
        env.pop("PYTHONPATH", None)
        self._scratch = Path(tempfile.mkdtemp(prefix="edgeship-tvm-"))
        self._stderr = (self._scratch / "worker.log").open("wb")
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [str(python), str(WORKER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        self.input_names = list(input_names)
        reply = self._call({"op": "load", "path": str(library), "inputs": self.input_names})
        self.tvm_version = str(reply.get("tvm_version"))
        self.load_ms = float(reply.get("load_ms", 0.0))

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc is None:
            raise BuildError("error: the TVM session is closed")
        stdin: IO[bytes] = proc.stdin  # type: ignore[assignment]
        stdout: IO[bytes] = proc.stdout  # type: ignore[assignment]
        data = json.dumps(message).encode()
        try:
            stdin.write(struct.pack(">I", len(data)) + data)
            stdin.flush()
            head = stdout.read(4)
        except BrokenPipeError:
            head = b""
        if len(head) < 4:
            code = proc.wait()
            log = self._scratch / "worker.log"
            tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-8:])
            self.close()
            raise BuildError(f"error: the TVM worker process ended (exit {code}):\n{tail}")
        (size,) = struct.unpack(">I", head)
        reply: dict[str, Any] = json.loads(stdout.read(size).decode())
        if not reply.get("ok"):
            raise BuildError(f"error: TVM: {reply.get('error')}")
        return reply

    def _inputs(self, inputs: dict[str, np.ndarray]) -> str:
        import numpy as np

        path = self._scratch / "inputs.npz"
        np.savez(path, **{n: np.ascontiguousarray(inputs[n]) for n in self.input_names})  # type: ignore[arg-type]
        return str(path)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import numpy as np

        out = self._scratch / "outputs.npz"
        reply = self._call(
            {"op": "run", "inputs_npz": self._inputs(inputs), "outputs_npz": str(out)}
        )
        with np.load(out) as npz:
            return [np.asarray(npz[f"arr_{i}"]) for i in range(int(reply["outputs"]))]

    def time_runs(self, inputs: dict[str, np.ndarray], warmup: int, runs: int) -> list[float]:
        """``runs`` timed runs (ms) after ``warmup`` untimed ones, timed inside the worker."""
        reply = self._call(
            {"op": "time", "inputs_npz": self._inputs(inputs), "warmup": warmup, "runs": runs}
        )
        return [float(t) for t in reply["times_ms"]]

    def peak_memory_mb(self) -> float:
        """The worker process's peak resident memory (the runtime and the model)."""
        return float(self._call({"op": "memory"})["peak_memory_mb"])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self._stderr.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing to report to
            self.close()
