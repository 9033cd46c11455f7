"""Builds on a Ray cluster against the same builds one after another on this machine.

Side by side in one run, every build recorded in one scratch MLflow store:

- a multirun (``edgeship build -m``) of every shipped ``posture_*`` deployment (the
  ``ct_seg_*`` ones take minutes each; name others with ``--deployments``);
- one ``recipe=auto`` selection over every recipe the deployment's target can run;

each once locally (``edgeship build``, sequential, in one process) and once on a local Ray
cluster started here (``ray start --head`` on 127.0.0.1 with ``--workers`` CPUs: that many
build tasks at once). Printed: the wall time of each, the ratio, and the overhead Ray adds
per build task, from the timestamps the task takes itself: submit to the task's start,
plus the task's end to its outcome in the driver's hands (target: under 2 s).

    python bench/ray_builds.py [--workers 2] [--deployments posture_server,posture_nuc]
        [--auto posture_server] [--latency-runs 20]

Artifacts, the MLflow store and the cluster's files go to scratch folders; the project is
not changed. The cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASK_LINE = re.compile(
    r"ray task (?P<label>\S+) on (?P<worker>\S+): (?P<status>\w+);.*\[epoch s: "
    r"(?P<submitted>[\d.]+) (?P<started>[\d.]+) (?P<finished>[\d.]+) (?P<returned>[\d.]+)\]"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(workers: int, temp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = temp / "start.log"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(port), "--num-cpus", str(workers), "--temp-dir", str(temp),
            "--include-dashboard=false", "--disable-usage-stats",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
        cwd=temp,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ray start failed:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, f"127.0.0.1:{port}"


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    """The node's whole process group: ``ray start --block``, GCS, raylet, workers."""
    deadline = time.monotonic() + 5
    sig = signal.SIGTERM
    while True:
        proc.poll()  # reaped, the group's leader leaves it
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.2)
    proc.wait()


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def timed(words: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stderr) of ``edgeship WORDS``; exits when the build fails."""
    edgeship = str(Path(sys.executable).parent / "edgeship")
    t0 = time.monotonic()
    done = subprocess.run([edgeship, *words], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"edgeship {' '.join(words)} exited {done.returncode}:\n{done.stderr}")
    return wall, done.stderr


def overheads(tasks: list[dict[str, Any]]) -> None:
    """Each task's Ray overhead: from the moment it could start (submitted, and a CPU free:
    the latest end of another task before its start, when more tasks than CPUs queue) to
    its start, plus its end to its outcome in the driver's hands."""
    for t in tasks:
        freed = [o["finished"] for o in tasks if o is not t and o["finished"] <= t["started"]]
        ready = max([t["submitted"], *freed])
        t["dispatch"] = t["started"] - ready
        t["back"] = t["returned"] - t["finished"]
        t["overhead"] = t["dispatch"] + t["back"]


def parse(stderr: str) -> list[dict[str, Any]]:
    out = []
    for m in TASK_LINE.finditer(stderr):
        row: dict[str, Any] = dict(m.groupdict())
        for key in ("submitted", "started", "finished", "returned"):
            row[key] = float(m.group(key))
        out.append(row)
    overheads(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the Ray node (tasks at once)")
    ap.add_argument("--deployments", help="comma-separated (default: every posture_* one)")
    ap.add_argument("--auto", default="posture_server", help="the recipe=auto deployment")
    ap.add_argument("--latency-runs", type=int, default=50)
    args = ap.parse_args()
    deployments = args.deployments or ",".join(
        sorted(p.stem for p in (ROOT / "conf" / "deployment").glob("posture_*.yaml"))
    )
    scratch = Path(tempfile.mkdtemp(prefix="edgeship-bench-ray-"))
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # socket paths stay short
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EDGESHIP_"))}
    base |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cheap = f"deployment.validation.latency_runs={args.latency_runs}"
    multirun = ["build", "-m", f"deployment={deployments}", cheap]
    auto = ["build", f"deployment={args.auto}", "recipe=auto", cheap]
    count = len(deployments.split(","))
    print(
        f"edgeship builds: local sequential vs a local Ray cluster of {args.workers} CPU(s); "
        f"this machine has {os.cpu_count()} CPU(s)"
    )
    print(f"multirun: {count} deployment(s): {deployments}")
    print(f"recipe=auto: {args.auto}, every recipe its target can run")
    print(f"load average at the start (1, 5, 15 min): {load()}\n")

    local_env = base | {"EDGESHIP_ARTIFACTS": str(scratch / "local")}
    ray_env = base | {"EDGESHIP_ARTIFACTS": str(scratch / "ray")}
    local_multi, _ = timed(multirun, local_env)
    local_auto, _ = timed(auto, local_env)
    proc, address = start_cluster(args.workers, temp)
    try:
        ray_multi, err_multi = timed(
            ["-v", *multirun[:1], "--ray", address, *multirun[1:]], ray_env
        )
        ray_auto, err_auto = timed(["-v", *auto[:1], "--ray", address, *auto[1:]], ray_env)
    finally:
        stop_cluster(proc)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
    tasks = {"multirun": parse(err_multi), "recipe=auto": parse(err_auto)}
    rows = [("multirun", local_multi, ray_multi), ("recipe=auto", local_auto, ray_auto)]
    print(f"{'':<12} {'tasks':>5} {'local s':>8} {'ray s':>8} {'local/ray':>9}"
          f" {'overhead/task s (median, max)':>30}")  # fmt: skip
    for name, local, on_ray in rows:
        over = [float(t["overhead"]) for t in tasks[name]]
        shown = f"{statistics.median(over):.2f}, {max(over):.2f}" if over else "n/a"
        print(
            f"{name:<12} {len(tasks[name]):>5} {local:>8.1f} {on_ray:>8.1f} "
            f"{local / on_ray:>8.2f}x {shown:>30}"
        )
    every = [t for ts in tasks.values() for t in ts]
    print("\nper task (from the task's own timestamps)")
    print(
        f"  {'task':<26} {'worker':<16} {'status':<7} {'queued':>7} {'dispatch':>8} "
        f"{'build':>7} {'back':>6}"
    )
    for t in every:
        queued = t["started"] - t["submitted"] - t["dispatch"]
        print(
            f"  {t['label']:<26} {str(t['worker'])[-16:]:<16} {t['status']!s:<7} "
            f"{queued:>6.2f}s {t['dispatch']:>7.2f}s {t['finished'] - t['started']:>6.1f}s "
            f"{t['back']:>5.2f}s"
        )
    worst = max((float(t["overhead"]) for t in every), default=0.0)
    verdict = "ok" if worst < 2.0 else "OVER"
    print(f"\nRay overhead per build task: at most {worst:.2f} s (target < 2 s): {verdict}")
    print(f"load average at the end (1, 5, 15 min): {load()}")
    print(f"scratch: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
