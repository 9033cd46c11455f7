"""A simulated fleet on one machine: one real OpenSSH ``sshd`` per device on loopback.

Each device is an ``sshd`` listening on its own loopback address (127.0.0.2,
127.0.0.3, ...) and port, with its own host key, its own install root and its own
environment; they all accept one generated client key. The device agent runs
under this environment's Python, which has the runtimes the health check imports.

Two layers:

- :class:`SshDevice`, :func:`start_devices`, :func:`stop_devices`, :func:`write_fleet`:
  the building blocks tests and benchmarks use directly.
- :class:`Simulator`: ``edgeship sim up|down|status``. It starts N devices that
  keep running after the command returns (their pids in ``sim.json``), writes a
  fleet file with labels spread over sites, wards and beds, and stops them again.

Simulated devices can differ the way real ones do: a device in the fleet group
``ort-minimal-op18`` runs a minimal ONNX Runtime build whose kernels stop at opset
18 (see :data:`RUNTIME_PROFILES`); a model exported at a newer opset fails its
health check there and nowhere else. Devices in the profile ``jetson-without-gpu`` stand
in for Jetsons: TensorRT is registered but its libraries are absent, so a Jetson bundle's
health check reaches the TensorRT runner and fails with that reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.core.fsutil import pid_alive
from orchestrator.errors import SimError

log = logging.getLogger(__name__)

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "apt-get install -y openssh-server (or run tools/system-deps.sh)"
SITES = ("north", "south", "east", "west")
WARDS = ("icu", "cardiology", "general")
MINIMAL_RUNTIME_GROUP = "ort-minimal-op18"


def find_sshd() -> str | None:
    """The ``sshd`` binary, or None when OpenSSH's server is not installed."""
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def keygen(path: Path, comment: str = "edgeship-test") -> Path:
    """Generate an ed25519 key pair at ``path`` (+ ``.pub``) without a passphrase."""
    if path.exists():
        path.unlink()
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        pub.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def host_key_line(device: SshDevice) -> str:
    """The device's host key as a known_hosts line (``[addr]:port type base64``)."""
    kind, blob = device.host_public_key().split()[:2]
    return f"[{device.address}]:{device.port} {kind} {blob}"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, grandchildren after), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class SshDevice:
    """One ``sshd`` on a loopback address: a device with its own host key and install root."""

    name: str
    address: str
    base: Path  # everything of this device lives here
    client_key: Path  # private key the client logs in with
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)  # extra environment of its sessions
    log_level: str = "ERROR"  # sshd LogLevel (VERBOSE logs bytes transferred per connection)
    install_root_override: Path | None = None  # install root elsewhere than base/root
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int | None = None  # sshd's pid (also for devices started by another process)

    @property
    def host_key(self) -> Path:
        return self.base / "ssh_host_ed25519_key"

    @property
    def install_root(self) -> Path:
        return self.install_root_override or self.base / "root"

    @property
    def config_path(self) -> Path:
        return self.base / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.base / "sshd.log"

    def host_public_key(self) -> str:
        """The host key's public line (``ssh-ed25519 AAAA... comment``)."""
        return self.host_key.with_name(self.host_key.name + ".pub").read_text().strip()

    def write_config(self) -> None:
        """sshd_config for this device (loopback only, key auth only, sftp)."""
        authorized = self.client_key.with_name(self.client_key.name + ".pub")
        env = {
            # the device's own home (not the client's), and a PATH whose python3 is this
            # environment's (it has the runtimes the agent imports)
            "HOME": str(self.base),
            "PATH": f"{Path(sys.executable).parent}:{DEVICE_PATH}",
            **self.env,
        }
        spaced = [k for k, v in env.items() if any(c.isspace() for c in f"{k}{v}")]
        if spaced:
            raise SimError(f"{self.name}: environment values with spaces: {', '.join(spaced)}")
        set_env = " ".join(f"{k}={v}" for k, v in env.items())
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "Subsystem sftp internal-sftp",
                    f"SetEnv {set_env}",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    f"LogLevel {self.log_level}",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 10.0) -> SshDevice:
        """Start ``sshd -D -e`` in its own session and wait until it accepts connections."""
        sshd = find_sshd()
        if sshd is None:
            raise SimError(f"sshd not installed; install it with: {INSTALL_HINT}")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        self.base.mkdir(parents=True, exist_ok=True)
        self.install_root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, comment=f"{self.name}-host")
        if not self.port:
            self.port = free_port(self.address)
        self.write_config()
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SimError(
                    f"sshd for {self.name} exited with {self.process.returncode}: "
                    + self.log_path.read_text()[-2000:]
                )
            if self.answers(0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise SimError(f"sshd for {self.name} did not answer on {self.address}:{self.port}")

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether something on the device's address and port speaks SSH."""
        try:
            with socket.create_connection((self.address, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def running(self) -> bool:
        """Whether this device's sshd process is alive."""
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and pid_alive(self.pid) and self._is_our_sshd(self.pid)

    def _is_our_sshd(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # sshd rewrites its title ("sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ...")
        return str(self.config_path).encode() in cmdline

    def _signal_group(self, sig: int) -> None:
        """Signal sshd and everything it started: its process group and its descendants
        (each session of sshd runs in a session of its own, outside sshd's group)."""
        pid = self.process.pid if self.process is not None else self.pid
        if pid is None:
            return
        if self.process is None and not self._is_our_sshd(pid):
            return  # the pid was reused by another program: nothing of ours to stop
        for child in descendants(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sshd and every session it started (one process group)."""
        if not self.running():
            self._reap()
            return
        self._signal_group(signal.SIGTERM)
        if not self._wait(timeout):
            self._signal_group(signal.SIGKILL)
            self._wait(timeout)

    def kill(self) -> None:
        """The device dies: SIGKILL sshd and every session of it (uploads, agents) at once."""
        self._signal_group(signal.SIGKILL)
        self._wait(10.0)

    def _wait(self, timeout: float) -> bool:
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid is None or not pid_alive(self.pid):
                return True
            time.sleep(0.05)
        return False

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.1)

    def restart(self, new_host_key: bool = False, env: dict[str, str] | None = None) -> SshDevice:
        """Stop and start again on the same address and port.

        ``new_host_key`` makes it a reinstalled device; ``env`` replaces its extra environment.
        """
        self.stop()
        if new_host_key:
            keygen(self.host_key, comment=f"{self.name}-host-new")
        if env is not None:
            self.env = dict(env)
        return self.start()

    def to_json(self) -> dict[str, Any]:
        """What ``sim.json`` keeps of a device."""
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "base": str(self.base),
            "install_root": str(self.install_root),
            "env": self.env,
            "pid": self.pid,
        }


def start_devices(
    count: int,
    base: Path,
    first_octet: int = 2,
    names: list[str] | None = None,
    env: dict[str, dict[str, str]] | None = None,
    log_level: str = "ERROR",
) -> list[SshDevice]:
    """Start ``count`` devices on 127.0.0.<first_octet>... sharing one client key.

    ``names`` defaults to dev01, dev02, ...; ``env`` gives named devices extra environment.
    """
    if first_octet + count > 255:
        raise SimError(f"{count} devices from 127.0.0.{first_octet} do not fit in 127.0.0.0/24")
    base.mkdir(parents=True, exist_ok=True)
    client_key = base / "client_ed25519"
    if not client_key.exists():
        keygen(client_key, comment="edgeship-fleet")
    devices: list[SshDevice] = []
    names = names or [f"dev{i + 1:02d}" for i in range(count)]
    try:
        for i, name in enumerate(names[:count]):
            dev = SshDevice(
                name,
                f"127.0.0.{first_octet + i}",
                base / name,
                client_key,
                env=dict((env or {}).get(name, {})),
                log_level=log_level,
            )
            devices.append(dev.start())
    except BaseException:
        stop_devices(devices)
        raise
    return devices


def stop_devices(devices: list[SshDevice]) -> None:
    """Stop every device."""
    for dev in devices:
        dev.stop()


def write_fleet(
    path: Path,
    devices: list[SshDevice],
    install_roots: dict[str, Path] | None = None,
    families: dict[str, str] | None = None,
    python: str | None = None,
    known_hosts: Path | None = None,
    family: str = "server",
    labels: dict[str, dict[str, str]] | None = None,
    groups: dict[str, str] | None = None,
    device_groups: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
    header: str = "",
    agent_user: str = "root",
    lab: list[str] | None = None,
) -> Path:
    """Write a fleet YAML for ``devices`` (name = the file's stem); returns its path.

    ``labels``/``device_groups`` map device names to their labels and groups; ``groups``
    declares the groups; ``extra`` adds top-level sections (e.g. ``feed``); ``lab`` names
    the lab devices (``lab: true``: builds measure candidates there).
    ``agent_user`` defaults to root: simulated devices run this machine's Python and
    live in its temporary folders, which a dedicated user often cannot reach (a Python
    under /root, pytest's 0700 folders); least-privilege tests pass their own user.
    """
    import yaml

    roots = install_roots or {}
    fams = families or {}
    data: dict[str, Any] = {
        "name": path.stem,
        "description": "simulated devices (sshd on loopback)",
        "known_hosts": str(known_hosts or path.with_suffix(".known_hosts")),
        "defaults": {
            "family": family,
            "user": "root",
            "identity_file": str(devices[0].client_key) if devices else "",
            "python": python or sys.executable,
            "agent_user": agent_user,
        },
    }
    if groups:
        data["groups"] = dict(groups)
    data.update(extra or {})
    data["devices"] = [
        {
            "name": d.name,
            "address": d.address,
            "port": d.port,
            "install_root": str(roots.get(d.name, d.install_root)),
            **({"family": fams[d.name]} if d.name in fams else {}),
            **({"lab": True} if d.name in (lab or []) else {}),
            **({"labels": dict((labels or {})[d.name])} if d.name in (labels or {}) else {}),
            **(
                {"groups": list((device_groups or {})[d.name])}
                if (device_groups or {}).get(d.name)
                else {}
            ),
        }
        for d in devices
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text((header + text) if header else text)
    return path


# -- device differences -------------------------------------------------------------------------

# A minimal ONNX Runtime build registers only the kernels its models needed when it was
# built. This profile makes a simulated device's onnxruntime behave so: a model whose
# default-domain opset is newer than the build's fails to load with ONNX Runtime's
# NOT_IMPLEMENTED error, while older models run unchanged (the device's sessions import
# this sitecustomize through PYTHONPATH).
MINIMAL_RUNTIME_SITECUSTOMIZE = '''\
"""Simulated device: an ONNX Runtime build with kernels up to opset {max_opset} only."""
import importlib.abc
import importlib.util
import sys

MAX_OPSET = {max_opset}


def _model_opset(model):
    if not isinstance(model, (str, bytes)) or (isinstance(model, str) and model.endswith(".ort")):
        return None
    try:
        import onnx

        proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(
            model, load_external_data=False
        )
    except Exception:
        return None
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None


def _patch(module):
    real_init = module.InferenceSession.__init__

    def __init__(self, path_or_bytes, *args, **kwargs):
        opset = _model_opset(path_or_bytes)
        if opset is not None and opset > MAX_OPSET:
            raise RuntimeError(
                "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation "
                "for the model's operators at opset {{}}: this minimal build registers kernels "
                "up to opset {{}}".format(opset, MAX_OPSET)
            )
        real_init(self, path_or_bytes, *args, **kwargs)

    module.InferenceSession.__init__ = __init__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
'''

# A Jetson stand-in: JetPack's TensorRT is registered (its package metadata names 10.3.0, so
# jetson_orin bundles pass the agent's runtime check) but its libraries are absent, as on any
# machine without an NVIDIA GPU. The health check reaches the TensorRT runner, which reports
# that TensorRT is not installed and builds no engine; nothing passes.
TENSORRT_STANDIN_GROUP = "jetson-without-gpu"
TENSORRT_STANDIN_VERSION = "10.3.0"

# Lab stand-ins whose speed differs from the build machine's the way real hardware does: a
# CPU without fast INT8 kernels (models with integer-quantized operators are slow there) or
# an INT8 accelerator whose float path falls back to a slow core (models without them are
# slow). The device's onnxruntime sessions take SLOW_MS longer per inference for the models
# the profile names; outputs are unchanged. For the simulator only: a real device is as fast
# as it is.
SLOW_SITECUSTOMIZE = '''\
"""Simulated lab device: {slow} models take {delay_ms} ms longer per inference."""
import importlib.abc
import importlib.util
import sys
import time

SLOW = "{slow}"  # "int8": models with integer-quantized operators; "float": the others
DELAY_S = {delay_ms} / 1000.0
QUANTIZED_OPS = {{
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
    "DynamicQuantizeMatMul", "QGemm", "QAttention",
}}


def _quantized(model):
    if not isinstance(model, (str, bytes)) or (isinstance(model, str) and model.endswith(".ort")):
        return None
    try:
        import onnx

        proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(
            model, load_external_data=False
        )
    except Exception:
        return None
    return any(node.op_type in QUANTIZED_OPS for node in proto.graph.node)


def _patch(module):
    real_init = module.InferenceSession.__init__
    real_run = module.InferenceSession.run

    def __init__(self, path_or_bytes, *args, **kwargs):
        quantized = _quantized(path_or_bytes)
        self._edgeship_slow = quantized is not None and quantized == (SLOW == "int8")
        real_init(self, path_or_bytes, *args, **kwargs)

    def run(self, *args, **kwargs):
        if getattr(self, "_edgeship_slow", False):
            time.sleep(DELAY_S)
        return real_run(self, *args, **kwargs)

    module.InferenceSession.__init__ = __init__
    module.InferenceSession.run = run


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
'''
SLOW_MS = 50
SLOW_INT8_GROUP = "lab-slow-int8"
SLOW_FLOAT_GROUP = "lab-slow-float"

RUNTIME_PROFILES = {
    MINIMAL_RUNTIME_GROUP: (
        "devices running a minimal ONNX Runtime build with kernels up to opset 18",
        MINIMAL_RUNTIME_SITECUSTOMIZE.format(max_opset=18),
    ),
    TENSORRT_STANDIN_GROUP: (
        f"Jetson stand-ins: TensorRT {TENSORRT_STANDIN_VERSION} registered, its libraries "
        "absent (no NVIDIA GPU)",
        "",
    ),
    SLOW_INT8_GROUP: (
        f"lab stand-ins without fast INT8 kernels: models with integer-quantized operators "
        f"take {SLOW_MS} ms longer per inference",
        SLOW_SITECUSTOMIZE.format(slow="int8", delay_ms=SLOW_MS),
    ),
    SLOW_FLOAT_GROUP: (
        f"lab stand-ins with an INT8-only accelerator: models without integer-quantized "
        f"operators take {SLOW_MS} ms longer per inference",
        SLOW_SITECUSTOMIZE.format(slow="float", delay_ms=SLOW_MS),
    ),
}
# files a profile adds beside its sitecustomize (relative path -> text)
PROFILE_FILES = {
    TENSORRT_STANDIN_GROUP: {
        f"tensorrt-{TENSORRT_STANDIN_VERSION}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: tensorrt\nVersion: {TENSORRT_STANDIN_VERSION}\n"
        ),
    },
}


def profile_env(folder: Path, profile: str) -> dict[str, str]:
    """Write a runtime profile's files under ``folder``; the environment that enables it."""
    if profile not in RUNTIME_PROFILES:
        raise SimError(f"unknown runtime profile '{profile}'; known: {', '.join(RUNTIME_PROFILES)}")
    target = folder / profile
    target.mkdir(parents=True, exist_ok=True)
    if RUNTIME_PROFILES[profile][1]:
        (target / "sitecustomize.py").write_text(RUNTIME_PROFILES[profile][1])
    for rel, text in PROFILE_FILES.get(profile, {}).items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)
    return {"PYTHONPATH": str(target)}


# -- the simulator of `edgeship sim` ------------------------------------------------------------


def _http_answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def spread_labels(count: int) -> list[dict[str, str]]:
    """Labels for ``count`` devices: sites in contiguous blocks, wards cycling, beds numbered."""
    sites = SITES[: 2 if count <= 12 else 4]
    per_site = -(-count // len(sites))
    return [
        {"site": sites[i // per_site], "ward": WARDS[i % len(WARDS)], "bed": f"{i + 1:02d}"}
        for i in range(count)
    ]


DVCIGNORE_NOTE = (
    "# fleet files `edgeship sim up` generates: kept out of DVC's view, so a simulation\n"
    "# does not mark the spec@ stages (which depend on conf/) as changed\n"
)


def keep_out_of_dvc(project: Path, files: list[Path], add: bool = True) -> None:
    """List generated files in the project's ``.dvcignore`` (or take them off it again).

    Only in a DVC project (a ``.dvc/`` folder); other lines of the file are kept."""
    if not (project / ".dvc").is_dir():
        return
    path = project / ".dvcignore"
    text = path.read_text() if path.is_file() else ""
    lines = text.splitlines()
    entries = []
    for f in files:
        try:
            entries.append("/" + f.resolve().relative_to(project.resolve()).as_posix())
        except ValueError:
            continue  # outside the project: DVC does not see it anyway
    if add:
        missing = [e for e in entries if e not in lines]
        if not missing:
            return
        head = "" if DVCIGNORE_NOTE.splitlines()[0] in lines else DVCIGNORE_NOTE
        sep = "" if not text or text.endswith("\n") else "\n"
        new = text + sep + head + "".join(f"{e}\n" for e in missing)
    else:
        kept = [line for line in lines if line not in entries]
        if kept == lines:
            return
        new = "".join(f"{line}\n" for line in kept)
    tmp = path.with_name(f".dvcignore.tmp-{os.getpid()}")
    tmp.write_text(new)
    os.replace(tmp, path)


@dataclass
class SimDeviceInfo:
    """A device of a running simulation, as ``edgeship sim status`` reports it."""

    name: str
    address: str
    port: int
    pid: int | None
    running: bool
    answers: bool
    install_root: str
    profile: str


class Simulator:
    """``edgeship sim``: named simulations under ``<state>/<name>/`` (default ``.edgeship/sim``).

    ``sim.json`` records the devices (addresses, ports, sshd pids), the fleet file and
    the runtime profiles. Host keys, the client key and install roots persist across
    ``down``/``up``, so pinned host keys stay valid and devices keep what they run.
    """

    def __init__(self, project: Path, name: str = "sim", state: Path | None = None) -> None:
        self.project = project
        self.name = name
        self.folder = (state or project / ".edgeship" / "sim") / name
        self.state_path = self.folder / "sim.json"

    def read_state(self) -> dict[str, Any] | None:
        """``sim.json``, or None when this simulation was never started."""
        if not self.state_path.is_file():
            return None
        data = json.loads(self.state_path.read_text())
        return data if isinstance(data, dict) else None

    def _write_state(self, data: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    def default_fleet_path(self) -> Path:
        return self.project / "conf" / "fleet" / f"{self.name}.yaml"

    def devices(self) -> list[SshDevice]:
        """The devices ``sim.json`` names (started or not)."""
        state = self.read_state() or {}
        key = self.folder / "client_ed25519"
        return [
            SshDevice(
                d["name"],
                d["address"],
                Path(d["base"]),
                key,
                port=int(d["port"]),
                env=dict(d.get("env") or {}),
                pid=d.get("pid"),
                install_root_override=Path(d["install_root"]),
            )
            for d in state.get("devices", [])
        ]

    def up(
        self,
        count: int,
        fleet_path: Path | None = None,
        first_octet: int = 2,
        minimal_runtime: int | None = None,
        family: str = "server",
        feed: bool = False,
        events: bool = False,
    ) -> tuple[Path, list[SshDevice]]:
        """Start ``count`` devices and write their fleet file; returns (fleet file, devices).

        ``minimal_runtime`` devices (default: one in six, at least one from six devices on)
        get the ``ort-minimal-op18`` runtime profile and fleet group. ``feed`` also starts
        a feed host for phones (an sshd plus a web server for its folder) and writes the
        phone fleet ``<name>_phones`` beside the fleet file. ``events`` also starts a
        Mosquitto broker and the events collector (:mod:`orchestrator.sim.broker`) and writes
        the fleet's ``events`` section, so enrolment issues the devices' credentials.
        """
        if count < 1:
            raise SimError("expected at least 1 device")
        if find_sshd() is None:
            raise SimError(f"sshd not installed; install it with: {INSTALL_HINT}")
        if first_octet + count > 255:
            raise SimError(f"{count} devices from 127.0.0.{first_octet} do not fit in 127.0.0.0/24")
        running = [d.name for d in self.devices() if d.running()]
        if running:
            raise SimError(
                f"simulation '{self.name}' is already up ({len(running)} device(s) running); "
                f"stop it first: edgeship sim down --name {self.name}"
            )
        fleet_path = fleet_path or self.default_fleet_path()
        if fleet_path.is_file() and not fleet_path.read_text().startswith("# generated by"):
            raise SimError(
                f"{fleet_path} exists and was not written by the simulator; choose another "
                "--name or --fleet-file"
            )
        previous: dict[str, Any] = {d.name: d for d in self.devices()}
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder / "client_ed25519"
        if not key.exists():
            keygen(key, comment=f"edgeship-sim-{self.name}")
        os.chmod(key, 0o600)
        labels = spread_labels(count)
        names = [f"bed-{i + 1:02d}" for i in range(count)]
        n_minimal = count // 6 if minimal_runtime is None else minimal_runtime
        # the minimal-runtime devices are cardiology monitors, counted from the last
        cardiology = [i for i in range(count) if labels[i]["ward"] == "cardiology"]
        minimal = set(sorted(cardiology, reverse=True)[:n_minimal])
        if len(minimal) < n_minimal:
            others = [i for i in reversed(range(count)) if i not in minimal]
            minimal |= set(others[: n_minimal - len(minimal)])
        devices: list[SshDevice] = []
        device_groups: dict[str, list[str]] = {}
        profiles: dict[str, str] = {}
        try:
            for i, name in enumerate(names):
                address = f"127.0.0.{first_octet + i}"
                old = previous.get(name)
                port = old.port if old and old.address == address else 0
                if port and not port_is_free(address, port):
                    port = 0
                env: dict[str, str] = {}
                groups = ["bedside"] + (["canary"] if i == 0 else [])
                if i in minimal:
                    env = profile_env(self.folder / "profiles", MINIMAL_RUNTIME_GROUP)
                    groups.append(MINIMAL_RUNTIME_GROUP)
                    profiles[name] = MINIMAL_RUNTIME_GROUP
                device_groups[name] = groups
                dev = SshDevice(name, address, self.folder / name, key, port=port, env=env)
                devices.append(dev.start())
                dev.process = None  # it outlives this command; known by pid from now on
        except BaseException:
            stop_devices(devices)
            raise
        groups_decl = {
            "canary": "the first device to receive a new bundle",
            "bedside": "bedside monitors' inference servers",
        }
        if profiles:
            groups_decl[MINIMAL_RUNTIME_GROUP] = RUNTIME_PROFILES[MINIMAL_RUNTIME_GROUP][0]
        extra: dict[str, Any] = {}
        events_state = None
        if events:
            from orchestrator.sim.broker import SimBroker

            broker = SimBroker(self.folder / "broker", self.project)
            old_port = int(((self.read_state() or {}).get("events") or {}).get("port") or 0)
            port = old_port if old_port and port_is_free("127.0.0.1", old_port) else 0
            port = port or free_port("127.0.0.1")
            try:
                events_state = dict(broker.start(port), port=port)
            except BaseException:
                stop_devices(devices)
                raise
            extra["events"] = broker.fleet_section(port)
        write_fleet(
            fleet_path,
            devices,
            known_hosts=self.folder / "known_hosts",
            family=family,
            labels={n: labels[i] for i, n in enumerate(names)},
            groups=groups_decl,
            device_groups=device_groups,
            extra=extra,
            header=(
                f"# generated by `edgeship sim up --name {self.name}` on "
                f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}; `edgeship sim down` stops the devices\n"
            ),
        )
        data: dict[str, Any] = {
            "name": self.name,
            "fleet": fleet_path.stem,
            "fleet_file": str(fleet_path),
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "profiles": profiles,
            "devices": [d.to_json() for d in devices],
        }
        if events_state:
            data["events"] = events_state
        if feed:
            try:
                data["feed"] = self._start_feed(
                    f"127.0.0.{first_octet + count}", key, fleet_path, previous.get("feed")
                )
            except BaseException:
                stop_devices(devices)
                raise
            data["devices"].append(data["feed"].pop("device"))
        self._write_state(data)
        generated = [fleet_path]
        if feed:
            generated.append(Path(data["feed"]["fleet_file"]))
        keep_out_of_dvc(self.project, generated)
        log.info("simulation %s: %d device(s) up, fleet %s", self.name, count, fleet_path)
        return fleet_path, devices

    def _start_feed(
        self, address: str, key: Path, fleet_path: Path, old: SshDevice | None
    ) -> dict[str, Any]:
        """The feed host of the phone fleet: an sshd, and a web server for its folder."""
        port = old.port if old and old.address == address and port_is_free(address, old.port) else 0
        dev = SshDevice("feed", address, self.folder / "feed", key, port=port)
        www = dev.install_root
        dev.start()
        dev.process = None
        http_port = free_port(address)
        with (self.folder / "feed" / "http.log").open("ab") as out:
            http = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    str(http_port),
                    "--bind",
                    address,
                    "--directory",
                    str(www),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        url = f"http://{address}:{http_port}/"
        deadline = time.monotonic() + 10
        while not _http_answers(address, http_port):
            if time.monotonic() > deadline or http.poll() is not None:
                dev.stop()
                raise SimError(f"the feed's web server did not start (see {out.name})")
            time.sleep(0.05)
        phones = fleet_path.with_name(f"{self.name}_phones.yaml")
        import yaml

        fleet = {
            "name": phones.stem,
            "description": "phones of the simulation: they poll the feed (no SSH devices)",
            "known_hosts": str(self.folder / "known_hosts"),
            "defaults": {"family": "android_phone", "identity_file": str(key)},
            "feed": {
                "host": address,
                "port": dev.port,
                "user": "root",
                "path": str(www),
                "base_url": url,
                "channels": ["stable", "beta"],
            },
            "devices": [],
        }
        phones.write_text(
            f"# generated by `edgeship sim up --feed --name {self.name}`; the web server "
            f"serves {www} at {url}\n" + yaml.safe_dump(fleet, sort_keys=False)
        )
        return {
            "device": dev.to_json(),
            "http_pid": http.pid,
            "url": url,
            "www": str(www),
            "fleet_file": str(phones),
        }

    def _stop_http(self, state: dict[str, Any]) -> None:
        feed = state.get("feed") or {}
        pid = feed.get("http_pid")
        if not pid or not pid_alive(int(pid)):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"http.server" in cmdline and str(feed.get("www")).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGTERM)

    def traffic_start(
        self, inputs: dict[str, Any], interval: float = 1.0, repeat: int = 100
    ) -> dict[str, int]:
        """Every device replays recordings as a live stream: ``edgeship-agent run --replay``
        in the background on its install root (it infers with its active bundle and sends
        each event to the broker its ``events.json`` names). Each device starts at another
        recording; the recordings go round ``repeat`` times. Returns device -> pid."""
        import numpy as np

        state = self.read_state()
        if state is None:
            raise SimError(f"no simulation '{self.name}' (nothing in {self.folder})")
        self.traffic_stop()
        devices = [d for d in self.devices() if d.name != "feed"]
        missing = [d.name for d in devices if not (d.install_root / "events.json").is_file()]
        if missing:
            raise SimError(
                f"device(s) {', '.join(missing)} have no events.json: add an events: section "
                "(the broker) to the fleet file and enrol them again (edgeship enroll)"
            )
        count = len(next(iter(inputs.values())))
        pids: dict[str, int] = {}
        for i, dev in enumerate(devices):
            order = np.roll(np.arange(count), -((i * 7) % max(count, 1)))
            order = np.tile(order, max(repeat, 1))
            path = self.folder / dev.name / "traffic.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, Any] = {k: np.asarray(v)[order] for k, v in inputs.items()}
            np.savez(path, **arrays)
            agent = dev.install_root / "bin" / "edgeship-agent"
            with (self.folder / dev.name / "traffic.log").open("ab") as out:
                proc = subprocess.Popen(
                    [str(agent), "run", "--replay", str(path), "--interval", str(interval)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            pids[dev.name] = proc.pid
        state["traffic"] = {"pids": pids, "interval": interval, "samples": count}
        self._write_state(state)
        return pids

    def traffic_stop(self) -> list[str]:
        """Stop the replays :meth:`traffic_start` began; returns the devices stopped."""
        state = self.read_state() or {}
        traffic = state.pop("traffic", None) or {}
        stopped = []
        for name, pid in (traffic.get("pids") or {}).items():
            if pid_alive(int(pid)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGTERM)
                stopped.append(name)
        if traffic:
            self._write_state(state)
        return stopped

    def down(self, purge: bool = False) -> list[SshDevice]:
        """Stop every device of the simulation; ``purge`` also removes its state and fleet file."""
        state = self.read_state()
        if state is None:
            raise SimError(f"no simulation '{self.name}' (nothing in {self.folder})")
        self.traffic_stop()
        state = self.read_state() or state
        devices = self.devices()
        self._stop_http(state)
        if state.get("events"):
            from orchestrator.sim.broker import SimBroker

            SimBroker(self.folder / "broker", self.project).stop()
        stop_devices(devices)
        for d in devices:
            d.pid = None
        state["devices"] = [d.to_json() for d in devices]
        state["stopped_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._write_state(state)
        if purge:
            for key in ("fleet_file", "feed"):
                value = state.get(key)
                name = value.get("fleet_file", "") if isinstance(value, dict) else value or ""
                fleet_file = Path(name)
                if fleet_file.is_file() and fleet_file.read_text().startswith("# generated by"):
                    fleet_file.unlink()
                    keep_out_of_dvc(self.project, [fleet_file], add=False)
            shutil.rmtree(self.folder, ignore_errors=True)
        return devices

    def status(self) -> list[SimDeviceInfo]:
        """Every device of the simulation: whether its sshd runs and answers."""
        state = self.read_state()
        if state is None:
            raise SimError(f"no simulation '{self.name}' (nothing in {self.folder})")
        profiles = state.get("profiles") or {}
        out = []
        for d in self.devices():
            running = d.running()
            out.append(
                SimDeviceInfo(
                    d.name,
                    d.address,
                    d.port,
                    d.pid if running else None,
                    running,
                    running and d.answers(),
                    str(d.install_root),
                    str(profiles.get(d.name, "")),
                )
            )
        return out

    def device(self, name: str) -> SshDevice:
        """One device of the simulation by name."""
        for d in self.devices():
            if d.name == name:
                return d
        raise SimError(f"simulation '{self.name}' has no device '{name}'")


def simulate_fleet(fleet_name: str, project: Path, state: Path | None = None) -> list[SshDevice]:
    """Start one sshd per device of an existing loopback fleet file (e.g. ward_north).

    Host keys persist under ``state`` (default ``.edgeship/sim/<fleet>/``), so pinned
    host keys stay valid across restarts; the fleet's identity file is generated when
    missing and authorised on every device.
    """
    from orchestrator.spec.fleet import load_fleet

    fleet = load_fleet(fleet_name, project)
    state = state or project / ".edgeship" / "sim" / fleet.name
    devices: list[SshDevice] = []
    try:
        for dev in fleet.devices:
            if not dev.address.startswith("127."):
                raise SimError(f"{dev.name}: {dev.address} is not a loopback address")
            identity = Path(dev.identity_file)
            if not identity.exists():
                identity.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                keygen(identity, comment=f"edgeship-{fleet.name}")
            device = SshDevice(
                dev.name,
                dev.address,
                state / dev.name,
                identity,
                port=dev.port,
                install_root_override=Path(dev.install_root),
            )
            devices.append(device.start())
    except BaseException:
        stop_devices(devices)
        raise
    return devices
