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

from .errors import EXIT_OK, EXIT_UNHEALTHY, Nothing
from .files import read_json
from .privilege import health_env, health_limits, identity, limit_resources
from .runners import smoke_check
from .segment import pipeline_smoke
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

    def record_health(self, state: dict, version: int, result: dict) -> None:
        """Keep a health result in ``state`` for ``version``; a TensorRT engine built for it
        (hash, TensorRT version, GPU) is kept beside it as ``engine`` and logged."""
        entry = state["versions"].setdefault(str(version), {})
        entry["health"] = result
        engine = (result.get("runtime") or {}).get("engine")
        if isinstance(engine, dict) and engine.get("built"):
            entry["engine"] = {
                k: engine.get(k)
                for k in ("sha256", "tensorrt_version", "gpu", "onnx_sha256", "settings_sha256")
            }
            entry["engine"]["cache_key"] = engine.get("cache_key")
            self.log(
                "engine",
                version=version,
                sha256=engine.get("sha256"),
                tensorrt_version=engine.get("tensorrt_version"),
                gpu=engine.get("gpu"),
                cache_hit=engine.get("cache_hit"),
            )

    def health(self, timeout: float) -> tuple:
        self.recover()
        version = self.link_version(self.current)
        if version is None:
            raise Nothing("no current version on this device")
        result = self.run_health(version, timeout)
        state = self.state()
        self.record_health(state, version, result)
        if state.get("pending_health") == version and result["result"] == "pass":
            state["pending_health"] = None
        self.save_state(state)
        self.log("health", version=version, result=result["result"], reason=result.get("reason"))
        return result, EXIT_OK if result["result"] == "pass" else EXIT_UNHEALTHY


# -- the health check itself (child process; imports the device runtime and numpy) -----------------


def engine_cache(root: str) -> str:
    """Where runners keep what they build on first use (TensorRT engines): ``<root>/cache/``."""
    return os.path.join(root, "cache", "tensorrt")


def health_run(folder: str, root: str | None = None) -> dict:
    """The bundle's smoke test through its runtime's runner (:func:`.runners.smoke_check`),
    and its whole-volume pipeline's where it ships one (:func:`.segment.pipeline_smoke`)."""
    cache = engine_cache(root) if root else None
    result = smoke_check(folder, cache, then=pipeline_smoke)
    result["python"] = sys.version.split()[0]
    result["uid"] = os.getuid()  # who ran the model: the agent user, never root unless enrolled so
    result["user"] = identity()["name"]
    return result
