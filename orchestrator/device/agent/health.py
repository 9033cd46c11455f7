"""The health check: the current bundle's smoke test, run with the device's own runtime.

The agent runs it in a child process (``health-run``, which imports the runtime
and numpy) so that a crashing runtime cannot take the agent down, with the least
rights (see :mod:`.privilege`): the agent user's (never more), resource limits, a
scrubbed environment, its cwd in the version folder and stdin closed. The result
says which uid it ran as.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from .errors import EXIT_OK, EXIT_UNHEALTHY, Nothing
from .files import read_json
from .privilege import health_env, health_limits, identity, limit_resources
from .state import Install


def agent_command() -> list:
    """How a child process runs this agent: the zipapp it was loaded from, else the package."""
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(home):  # <root>/bin/edgeship_agent.pyz/edgeship_agent/health.py
        return [sys.executable, home]
    return [sys.executable, "-m", __name__.rpartition(".")[0]]


class Health(Install):
    """Runs the smoke test of an installed version and records the result."""

    def run_health(self, version: int | None, timeout: float) -> dict:
        """Run the smoke test in a child process (a crashing runtime cannot take the agent down)."""
        folder = self.version_dir(version) if version is not None else None
        if folder is None or not os.path.isdir(folder):
            return {"result": "fail", "reason": "no version to check", "version": version}
        me = identity()
        cmd = [*agent_command(), "--root", self.root, "--user", me["name"], "health-run", folder]
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
            start_new_session=True,  # a timeout stops the runtime's own children too
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {
                "result": "fail",
                "reason": f"health check timed out after {timeout}s",
                "version": version,
                "uid": me["uid"],
                "user": me["name"],
            }
        try:
            result = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
            reason = f"health check exited with {proc.returncode}: {' | '.join(tail)}"
            if proc.returncode == -signal.SIGKILL or proc.returncode == -signal.SIGXCPU:
                reason += f" (killed; limits: {limits})"
            return {
                "result": "fail",
                "reason": reason,
                "version": version,
                "uid": me["uid"],
                "user": me["name"],
            }
        result["version"] = version
        result.setdefault("uid", me["uid"])
        result.setdefault("user", me["name"])
        result["limits"] = limits
        return result

    def health(self, timeout: float) -> tuple:
        self.recover()
        version = self.link_version(self.current)
        if version is None:
            raise Nothing("no current version on this device")
        result = self.run_health(version, timeout)
        state = self.state()
        state["versions"].setdefault(str(version), {})["health"] = result
        if state.get("pending_health") == version and result["result"] == "pass":
            state["pending_health"] = None
        self.save_state(state)
        self.log("health", version=version, result=result["result"], reason=result.get("reason"))
        return result, EXIT_OK if result["result"] == "pass" else EXIT_UNHEALTHY


# -- the health check itself (child process; imports the device runtime and numpy) -----------------


def health_run(folder: str) -> dict:
    """Load the model as runtime.json says, run smoke/input.npz, compare with expected.npz."""
    import numpy as np

    runtime = read_json(os.path.join(folder, "runtime.json"))
    smoke_dir = os.path.join(folder, "smoke")
    smoke = read_json(os.path.join(smoke_dir, "smoke.json"))
    name = runtime["target"]["runtime"]
    settings = runtime.get("settings") or {}
    model_path = os.path.join(folder, runtime["model"]["file"])
    in_names = [t["name"] for t in runtime["inputs"]]
    out_names = [t["name"] for t in runtime["outputs"]]
    with np.load(os.path.join(smoke_dir, smoke.get("input", "input.npz"))) as npz:
        inputs = {n: np.asarray(npz[n]) for n in in_names}
    for spec in runtime["inputs"]:
        inputs[spec["name"]] = inputs[spec["name"]].astype(spec.get("dtype", "float32"))
    with np.load(os.path.join(smoke_dir, smoke.get("expected", "expected.npz"))) as npz:
        expected = {n: np.asarray(npz[n]) for n in out_names}

    if name == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
        so.inter_op_num_threads = int(settings.get("inter_op_num_threads", 0))
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = settings.get("graph_optimization_level", "ORT_ENABLE_ALL")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        provider = settings.get("execution_provider", "CPUExecutionProvider")
        session = ort.InferenceSession(model_path, so, providers=[provider])
        version = ort.__version__

        def infer() -> list:
            return list(session.run(out_names, inputs))

    elif name == "openvino":
        import openvino as ov

        core = ov.Core()
        device = settings.get("device", runtime["target"].get("device", "CPU"))
        config = {k: v for k, v in settings.items() if k != "device"}
        compiled = core.compile_model(core.read_model(model_path), device, config)
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)
        version = ov.get_version()

        def infer() -> list:
            result = request.infer(inputs)
            return [np.array(result[o]) for o in outputs]

    else:
        return {"result": "fail", "reason": f"unsupported runtime {name}"}

    infer()  # warm-up
    start = time.perf_counter()
    got = infer()
    latency_ms = (time.perf_counter() - start) * 1000.0
    atol = float(smoke.get("atol", 1e-3))
    rtol = float(smoke.get("rtol", 0.0))
    report = {}
    failures = []
    for out_name, value in zip(out_names, got):
        want = expected[out_name]
        if value.shape != want.shape:
            failures.append(f"{out_name}: shape {list(value.shape)}, expected {list(want.shape)}")
            continue
        diff = (
            float(np.max(np.abs(value.astype(np.float64) - want.astype(np.float64))))
            if value.size
            else 0.0
        )
        ok = bool(np.allclose(value, want, atol=atol, rtol=rtol))
        report[out_name] = {"max_abs_diff": diff, "atol": atol, "rtol": rtol, "passed": ok}
        if not ok:
            failures.append(f"{out_name}: max |diff| {diff:.6g} > atol {atol:.6g}")
    agreement = None
    if (
        got
        and expected.get(out_names[0]) is not None
        and got[0].shape == expected[out_names[0]].shape
    ):
        axis = int(smoke.get("argmax_axis", -1))
        agreement = float(
            np.mean(np.argmax(got[0], axis=axis) == np.argmax(expected[out_names[0]], axis=axis))
        )
        needed = float(smoke.get("min_argmax_agreement", 1.0))
        if agreement < needed:
            failures.append(f"argmax agreement {agreement:.4f} < {needed:.4f}")
    return {
        "result": "fail" if failures else "pass",
        "reason": "; ".join(failures) or None,
        "latency_ms": round(latency_ms, 3),
        "runtime": {"name": name, "version": str(version)},
        "python": sys.version.split()[0],
        "deployment": runtime.get("deployment"),
        "outputs": report,
        "argmax_agreement": agreement,
        "uid": os.getuid(),  # who ran the model: the agent user, never root unless enrolled so
        "user": identity()["name"],
    }
