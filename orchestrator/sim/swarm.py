"""Pull fleets at scale on one machine: hundreds to thousands of lightweight pull agents.

Each simulated device is the real device agent (orchestrator/device/agent) with its
own install root, running the real pull protocol (TUF metadata verified with
openssl, targets downloaded over HTTP with their lengths and SHA-256 checked,
activation with the bundle's signature, rules and health check, reports over
HTTP). What makes thousands fit on one machine:

- agents are threads in a few worker processes (``python -m orchestrator.sim.swarm``),
  not one sshd and one process each;
- a worker stores each downloaded file once (``cas/<sha256>``, written by the first
  agent that downloads it) and hard-links it into the agents' staging and version
  folders, so 1,000 copies of a 50 MB bundle take 50 MB of disk, not 50 GB. Every
  agent still downloads every byte it needs and hashes it, and every copy it makes
  is hashed again. A real agent copies (never links; docs/security.md, row 9);
- the health check runs the bundle's smoke test in the worker process (the same
  runner, without the child process and its resource limits).

Repository: nginx (:class:`Nginx`) serves the bundles folder as static files, as
any web server or object store would, and logs every request with the asking
device (the agents' User-Agent), so a run can count the bytes each device fetched.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

LOG_FORMAT = '$msec "$http_user_agent" "$request_uri" $status $body_bytes_sent'


class Nginx:
    """nginx serving ``root`` on loopback with an access log of who fetched what."""

    def __init__(self, folder: Path, root: Path, port: int) -> None:
        self.folder = folder
        self.root = root
        self.port = port
        self.conf = folder / "nginx.conf"
        self.access_log = folder / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.detach = False  # outlive this process (edgeship sim swarm)

    def start(self) -> Nginx:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(exe):
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
        self.folder.mkdir(parents=True, exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = self.folder / "temp"
        temp.mkdir(exist_ok=True)
        self.conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.folder / 'nginx.pid'};\n"
            f"error_log {self.folder / 'error.log'} warn;\n"
            "events { worker_connections 8192; }\n"
            "http {\n"
            f"  log_format edgeship '{LOG_FORMAT}';\n"
            f"  access_log {self.access_log} edgeship;\n"
            "  sendfile on; tcp_nopush on; keepalive_timeout 30; etag on;\n"
            "  default_type application/octet-stream;\n"
            f"  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi;\n"
            f"  scgi_temp_path {temp}/scgi;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; "
            "location / { autoindex off; } }\n"
            "}\n"
        )
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf), "-p", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.detach,
        )
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port}")

    def cpu_seconds(self) -> float:
        """User + system CPU of nginx's master and workers so far."""
        if self.proc is None:
            return 0.0
        pids = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            pids += [int(p) for p in task.read_text().split()]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: flushes the access log
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def read_access_log(path: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """Requests in nginx's access log (``LOG_FORMAT``) at or after ``since`` (epoch s)."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            msec, rest = line.split(" ", 1)
            agent, _, rest = rest[1:].partition('" "')
            uri, _, tail = rest.partition('" ')
            status, sent = tail.split()
        except ValueError:
            continue
        if float(msec) < since:
            continue
        device = agent[agent.find("(") + 1 : -1] if "(" in agent else agent
        out.append({"t": float(msec), "device": device, "uri": uri, "status": int(status),
                    "bytes": int(sent)})  # fmt: skip
    return out


def write_fleet(path: Path, name: str, devices: list[str], family: str, pull: dict) -> None:
    """A pull fleet's YAML (devices need no address: they poll)."""
    lines = [
        f"# {len(devices)} simulated pull devices (edgeship sim swarm)",
        f"name: {name}",
        "description: simulated pull-mode devices on this machine",
        f"defaults: {{family: {family}}}",
        "groups: {canary: the first devices to receive a new bundle}",
        "pull: " + json.dumps(pull),
        "devices:",
    ]
    for i, d in enumerate(devices):
        groups = "[canary]" if i < max(1, len(devices) // 100) else "[]"
        lines.append(f"  - {{name: {d}, groups: {groups}}}")
    path.write_text("\n".join(lines) + "\n")


class Swarm:
    """``count`` pull agents in ``workers`` processes, each agent its own install root."""

    def __init__(
        self,
        folder: Path,
        count: int,
        fleet: str,
        family: str,
        repository: str,
        reports: str,
        trust: Path,
        poll_seconds: float = 5.0,
        workers: int = 2,
        threads: int = 16,
        prefix: str = "dev",
    ) -> None:
        self.folder = folder
        self.names = [f"{prefix}-{i:04d}" for i in range(count)]
        self.fleet, self.family = fleet, family
        self.repository, self.reports, self.trust = repository, reports, trust
        self.poll_seconds, self.workers, self.threads = poll_seconds, workers, threads
        self.procs: list[subprocess.Popen[bytes]] = []
        self.detach = False  # outlive this process (edgeship sim swarm)

    def root_of(self, name: str) -> Path:
        return self.folder / "devices" / name

    def start(self) -> Swarm:
        self.folder.mkdir(parents=True, exist_ok=True)
        repo_root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=str(repo_root) + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))  # fmt: skip
        for w in range(self.workers):
            names = self.names[w :: self.workers]
            roots = self.folder / f"worker-{w}.json"
            roots.write_text(json.dumps({n: str(self.root_of(n)) for n in names}))
            cmd = [
                sys.executable, "-m", "orchestrator.sim.swarm", "--roots", str(roots),
                "--fleet", self.fleet, "--family", self.family, "--trust", str(self.trust),
                "--repository", self.repository, "--reports", self.reports,
                "--interval", str(self.poll_seconds), "--threads", str(self.threads),
                "--cas", str(self.folder / f"cas-{w}"),
            ]  # fmt: skip
            log = (self.folder / f"worker-{w}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=log, start_new_session=self.detach
                )
            )
        return self

    def enrolled(self) -> int:
        return sum(1 for n in self.names if (self.root_of(n) / "device.json").is_file())

    def wait_enrolled(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.enrolled() < len(self.names):
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a swarm worker exited ({p.returncode}); see its log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.enrolled()} of {len(self.names)} agents enrolled")
            time.sleep(0.5)

    def running(self) -> dict[str, int | None]:
        """Device -> the version its ``current`` link names (None: nothing installed)."""
        out: dict[str, int | None] = {}
        for n in self.names:
            link = self.root_of(n) / "current"
            try:
                out[n] = int(os.path.basename(os.readlink(link)))
            except (OSError, ValueError):
                out[n] = None
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def make_artifact(folder: Path, mb: float, seed: int = 0, broken: bool = False,
                  note: str = "") -> Path:  # fmt: skip
    """A real ONNX model of about ``mb`` MB (one MatMul) in an artifact folder as
    ``edgeship build`` writes it, with a smoke test its runtime passes, or fails when
    ``broken`` (the weights no longer give the expected outputs). ``note`` goes into a
    small configuration file: a different note makes a config-only update."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = max(8, int((mb * 1024 * 1024 / 4) ** 0.5))
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    x = rng.standard_normal((1, n)).astype(np.float32)
    expected = x @ w
    shipped = -w if broken else w
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "pull_demo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(shipped, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "smoke").mkdir(exist_ok=True)
    onnx.save(model, str(folder / "model" / "model.onnx"))
    digest = hashlib.sha256((folder / "model" / "model.onnx").read_bytes()).hexdigest()
    runtime = {
        "schema": 1,
        "deployment": folder.name,
        "task": "regression",
        "target": {"name": "server", "family": "server", "runtime": "onnxruntime",
                   "device": "CPU", "threads": 1},
        "settings": {"execution_provider": "CPUExecutionProvider", "intra_op_num_threads": 1,
                     "inter_op_num_threads": 1},
        "runtime_requirement": ">=1.20",
        "model": {"file": "model/model.onnx", "files": ["model/model.onnx"], "format": "onnx",
                  "precision": "fp32", "sha256": digest},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, n]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, n]}],
    }  # fmt: skip
    (folder / "runtime.json").write_text(json.dumps(runtime, indent=1))
    (folder / "config.json").write_text(json.dumps({"note": note}))
    np.savez(folder / "smoke" / "input.npz", x=x)
    np.savez(folder / "smoke" / "expected.npz", y=expected)
    smoke = {"input": "input.npz", "expected": "expected.npz", "atol": 1e-3, "rtol": 0.0,
             "argmax_axis": -1, "min_argmax_agreement": 1.0}  # fmt: skip
    (folder / "smoke" / "smoke.json").write_text(json.dumps(smoke))
    validation = {"passed": True, "metrics": {}, "gates": [], "data": {}}
    (folder / "validation.json").write_text(json.dumps(validation))
    build = {"status": "passed", "git": {"commit": None, "dirty": False},
             "mlflow": {"run_id": None}, "source": {"kind": "onnx", "format": "onnx"}}  # fmt: skip
    (folder / "build.json").write_text(json.dumps(build))
    (folder / "metrics.json").write_text("{}")
    return folder


class SwarmSim:
    """``edgeship sim swarm``: nginx over the project's bundles and N pull agents, detached.

    State under ``.edgeship/sim/<name>/`` (``state.json``, the fleet file, logs, the
    agents' install roots). The fleet file names the repository URL and the report
    receiver's address, which ``edgeship rollout`` starts while it rolls out.
    """

    def __init__(self, project: Path, name: str, bundles: Path, state: Path | None = None):
        self.project, self.name, self.bundles = project, name, bundles
        self.folder = (state or project / ".edgeship" / "sim") / name
        self.state_path = self.folder / "state.json"

    def state(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        return dict(json.loads(self.state_path.read_text()))

    def up(self, count: int, trust: bytes, family: str, poll: float, workers: int) -> dict:
        if self.state() is not None:
            raise RuntimeError(f"swarm {self.name} is up; stop it with: edgeship sim swarm --stop")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bundles.mkdir(parents=True, exist_ok=True)
        nginx = Nginx(self.folder / "nginx", self.bundles.resolve(), free_port())
        nginx.detach = True
        nginx.start()
        report_port = free_port()
        base_url = f"http://127.0.0.1:{nginx.port}/"
        reports_url = f"http://127.0.0.1:{report_port}/report"
        pull = {
            "base_url": base_url,
            "reports_url": reports_url,
            "reports_listen": f"127.0.0.1:{report_port}",
            "poll_seconds": poll,
            "wave_timeout_seconds": max(120.0, 20 * poll),
        }
        trust_file = self.folder / "root.json"
        trust_file.write_bytes(trust)
        swarm = Swarm(self.folder, count, self.name, family, base_url, reports_url, trust_file,
                      poll, workers)  # fmt: skip
        fleet_file = self.folder / f"{self.name}.yaml"
        write_fleet(fleet_file, self.name, swarm.names, family, pull)
        swarm.detach = True
        swarm.start()
        state = {
            "fleet_file": str(fleet_file),
            "nginx_pid": nginx.proc.pid if nginx.proc else None,
            "worker_pids": [p.pid for p in swarm.procs],
            "agents": count,
            "pull": pull,
        }
        self.state_path.write_text(json.dumps(state, indent=1))
        return state

    def running(self) -> dict[str, int | None]:
        state = self.state() or {}
        swarm = Swarm(self.folder, int(state.get("agents", 0)), self.name, "", "", "", Path())
        return swarm.running()

    def down(self) -> dict[str, Any] | None:
        state = self.state()
        if state is None:
            return None
        for pid in [*state["worker_pids"], state["nginx_pid"]]:
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.state_path.unlink()
        return state


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the worker process: agents as threads (device-side code; edgeship never imports it) ------


def _worker(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from orchestrator.device.agent.activate import copy_checked
    from orchestrator.device.agent.agent import Agent
    from orchestrator.device.agent.health import health_run
    from orchestrator.device.agent.pull import Puller, PullError, poll

    cas = Path(args.cas)
    (cas / "tmp").mkdir(parents=True, exist_ok=True)
    cas_lock = threading.Lock()

    def link_checked(source: str, dest: str, entry: dict) -> bool:
        """Hard-link ``source`` to ``dest`` when its bytes hash to the entry (read, not copied)."""
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return False
        if digest.hexdigest() != entry["sha256"] or os.path.getsize(source) != int(entry["size"]):
            return False
        if os.stat(source).st_nlink > 60000:  # ext4's link limit is 65000
            return copy_checked(source, dest, entry)
        os.link(source, dest)
        return True

    class SimAgent(Agent):
        def copy_file(self, source: str, dest: str, entry: dict) -> bool:
            return link_checked(source, dest, entry)

        def run_health(self, version: int | None, timeout: float) -> dict:
            folder = self.version_dir(version) if version is not None else None
            if folder is None or not os.path.isdir(folder):
                return {"result": "fail", "reason": "no version to check", "version": version}
            try:
                result = health_run(folder, self.root)
            except Exception as exc:  # the runtime refused the model
                result = {"result": "fail", "reason": f"{type(exc).__name__}: {exc}"}
            result["version"] = version
            return result

    class SimPuller(Puller):
        def fetch_file(self, url: str, dest: str, target: dict) -> None:
            stored = cas / target["sha256"]
            if not stored.exists():
                tmp = cas / "tmp" / f"{target['sha256']}.{threading.get_ident()}"
                tmp.unlink(missing_ok=True)
                self.http.download(url, str(tmp), target["length"], target["sha256"])
                with cas_lock:
                    if not stored.exists():
                        os.rename(tmp, stored)
                    else:
                        tmp.unlink()
            else:  # downloaded and hashed all the same; the bytes are not kept twice
                tmp = cas / "tmp" / f"discard.{threading.get_ident()}"
                tmp.unlink(missing_ok=True)
                self.http.download(url, str(tmp), target["length"], target["sha256"])
                tmp.unlink()
            os.link(stored, dest)

    roots: dict[str, str] = json.loads(Path(args.roots).read_text())
    pullers: dict[str, Puller] = {}
    for name, root in roots.items():
        agent = SimAgent(root)
        if not os.path.isfile(os.path.join(root, "device.json")):
            agent.init(name, args.family, args.trust, False, args.fleet)
        pullers[name] = SimPuller(agent, args.repository, args.reports, 60.0)
    # every agent polls every --interval seconds (first polls spread over one interval)
    start = time.monotonic()
    step = args.interval / max(1, len(pullers))
    queue = [(start + i * step, name) for i, name in enumerate(sorted(pullers))]
    heapq.heapify(queue)
    lock = threading.Lock()
    stop = threading.Event()
    counts: dict[str, int] = defaultdict(int)

    def run() -> None:
        while not stop.is_set():
            with lock:
                when, name = heapq.heappop(queue)
            delay = when - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            try:
                report, _ = poll(pullers[name], 300.0)
                counts[str(report.get("result"))] += 1
            except (PullError, OSError, ValueError) as exc:
                counts["error"] += 1
                print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
            with lock:
                heapq.heappush(queue, (time.monotonic() + args.interval, name))

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=run, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    while not stop.wait(10):
        print(json.dumps({"agents": len(pullers), "polls": dict(counts)}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.sim.swarm")
    p.add_argument("--roots", required=True, help="JSON: device name -> install root")
    p.add_argument("--fleet", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--trust", required=True, help="the fleet's root.json (enrolment)")
    p.add_argument("--repository", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--cas", required=True, help="where this worker keeps each file once")
    return _worker(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
