"""Least privilege: the user the agent runs as, read-only versions, the health check's limits.

Who runs what (see docs/shipping.md, "Least privilege"):

- The wrapper ``<root>/bin/edgeship-agent`` (root-owned, written at enrolment) names
  the agent user: ``--user NAME``. First thing, before it reads anything of the
  install root, the agent started as root drops to that user for good
  (:func:`enter`): supplementary groups of the user, then its group, then its uid;
  it then checks that it cannot get root back.
- Started as root without ``--user``, or with ``--user root`` on a device whose
  device.json records another agent user, the agent refuses to run: running as
  root is only for devices enrolled with ``agent_user: root`` on purpose.
- Installed versions are read-only (:func:`.files.make_read_only`: files 0444, folders
  0555); :func:`.files.remove_tree` gives a folder's owner write access back before
  removing it.
- The health check runs in a child process with the rights of the agent user,
  resource limits (:data:`HEALTH_LIMITS`), a scrubbed environment
  (:data:`HEALTH_ENV_KEEP`), its cwd in the version folder and stdin closed.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import sys

from .errors import AgentError

ROOT_USER = "root"
SETTING = "agent_user"  # the fleet setting that names the agent user (orchestrator/spec/fleet.py)

# Resource limits of the health check's process (soft = hard; the runtime cannot raise them).
HEALTH_ADDRESS_SPACE = 8 * 1024**3  # RLIMIT_AS: 8 GiB of virtual memory (CPU runtimes)
HEALTH_CPU_SECONDS = 600  # RLIMIT_CPU: CPU seconds over all threads (SIGXCPU, then SIGKILL)
HEALTH_OPEN_FILES = 512  # RLIMIT_NOFILE: open files and sockets
HEALTH_CORE_BYTES = 0  # RLIMIT_CORE: no core dumps (they would hold the model and inputs)
HEALTH_LIMITS = {
    "RLIMIT_AS": HEALTH_ADDRESS_SPACE,
    "RLIMIT_CPU": HEALTH_CPU_SECONDS,
    "RLIMIT_NOFILE": HEALTH_OPEN_FILES,
    "RLIMIT_CORE": HEALTH_CORE_BYTES,
}
# GPU runtimes reserve address space far beyond what they use (CUDA maps tens of GiB):
# for them the address-space limit is left out and the others stay.
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
# The environment variables the health check keeps; every other one is dropped.
HEALTH_ENV_KEEP = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",  # the device's Python setup (where the runtime is installed)
    "PYTHONHOME",
    "LD_LIBRARY_PATH",  # runtimes' shared libraries (OpenVINO, CUDA, TensorRT)
    "OMP_NUM_THREADS",
)
HEALTH_PATH = "/usr/local/bin:/usr/bin:/bin"  # PATH when the agent has none

SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",  # Debian, Ubuntu
    "/usr/libexec/openssh/sftp-server",  # RHEL, Fedora, SUSE
    "/usr/lib/ssh/sftp-server",  # Arch, Alpine
    "/usr/libexec/sftp-server",
    "/usr/lib/sftp-server",
)


def identity() -> dict:
    """Who this process is: user name, uid, gid, groups."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return {"name": name, "uid": uid, "gid": os.getgid(), "groups": sorted(os.getgroups())}


def enrolled_user(root: str) -> str | None:
    """The agent user device.json records (written by ``init``), None when unknown."""
    try:
        with open(os.path.join(root, "device.json"), "rb") as fh:
            data = json.loads(fh.read().decode())
    except (OSError, ValueError):
        return None
    user = data.get(SETTING) if isinstance(data, dict) else None
    return user if isinstance(user, str) else None


def drop_to(user: str) -> dict:
    """Become ``user`` for good (groups, gid, uid); the process must be root."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise AgentError(
            f"the agent user '{user}' does not exist on this device; expected the user "
            f"named by the fleet setting {SETTING}; re-enrol the device (edgeship enroll) "
            "to create it"
        ) from None
    if pw.pw_uid == 0:
        raise AgentError(f"the agent user '{user}' has uid 0; expected an unprivileged user")
    os.initgroups(user, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)  # as root: real, effective and saved uid
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise AgentError(f"could not drop root privileges to '{user}'")
    try:
        os.setuid(0)
    except OSError:
        pass
    else:
        raise AgentError(f"dropped to '{user}' but could get root back; refusing to run")
    os.environ.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    return identity()


def check_reach(root: str, python: str) -> None:
    """After dropping root: this user can run ``python`` and use the install root."""
    user = identity()["name"]
    stdlib = os.path.dirname(os.__file__)  # modules imported later (and the health check's)
    for path, mode, what in (
        (python, os.X_OK, "run the device Python"),
        (stdlib, os.R_OK | os.X_OK, "read the Python standard library"),
        (root, os.R_OK | os.W_OK | os.X_OK, "use the install root"),
    ):
        try:
            os.stat(path)
        except FileNotFoundError:
            if path == root:
                continue  # `init` creates it
            denied = True
        except OSError:
            denied = True  # a folder above it is closed to this user
        else:
            denied = not os.access(path, mode)
        if denied:
            raise AgentError(
                f"the agent user '{user}' cannot {what} ({path}: permission denied); "
                f"expected it readable by '{user}' (and every folder above it searchable); "
                "make it so, name another interpreter in the fleet (python:), or enrol "
                f"with {SETTING}: root to run the agent as root"
            )


def enter(user: str | None, root: str) -> dict:
    """Run as the agent user; first thing the agent does. Returns :func:`identity` plus how.

    ``user`` is the wrapper's ``--user``: the user enrolment chose (None when the
    agent was started without its wrapper).
    """
    root = os.path.abspath(root)
    if os.geteuid() != 0:
        me = identity()
        if user is not None and user not in (me["name"], str(me["uid"])):
            raise AgentError(
                f"the agent runs as user '{user}' on this device ({SETTING}); this is "
                f"'{me['name']}' (uid {me['uid']}); log in as root or as '{user}'"
            )
        return dict(me, dropped_from_root=False)
    if user is None:
        raise AgentError(
            "refusing to run the agent as root: it was started without --user (not through "
            f"{os.path.join(root, 'bin', 'edgeship-agent')}); expected the agent user the "
            f"device was enrolled with; run the wrapper, or enrol with {SETTING}: root to run "
            "the agent as root on purpose"
        )
    if user == ROOT_USER:
        enrolled = enrolled_user(root)
        if enrolled not in (None, ROOT_USER):
            raise AgentError(
                f"refusing to run the agent as root: this device was enrolled with {SETTING}: "
                f"{enrolled}; run {os.path.join(root, 'bin', 'edgeship-agent')} (it runs as "
                f"'{enrolled}'), or re-enrol with {SETTING}: root to run the agent as root"
            )
        return dict(identity(), dropped_from_root=False)
    me = drop_to(user)
    check_reach(root, sys.executable)
    return dict(me, dropped_from_root=True)


def exec_sftp_server() -> None:
    """Replace this process with OpenSSH's sftp-server (uploads as the agent user)."""
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            sys.stdout.flush()
            os.execv(path, [path])
    raise AgentError(
        "no sftp-server on this device; expected one of: " + ", ".join(SFTP_SERVERS) + "; "
        "install OpenSSH's sftp server (Debian: apt-get install openssh-sftp-server)"
    )


# -- installed versions: read-only -----------------------------------------------------------


# -- the health check's process ---------------------------------------------------------------


def health_limits(runtime: dict) -> dict:
    """The resource limits for a bundle's health check (name -> value)."""
    settings = runtime.get("settings") or {}
    target = runtime.get("target") or {}
    provider = str(settings.get("execution_provider", ""))
    device = str(settings.get("device", target.get("device", "CPU")))
    gpu = provider in GPU_PROVIDERS or "GPU" in device.upper()
    return {k: v for k, v in HEALTH_LIMITS.items() if not (gpu and k == "RLIMIT_AS")}


def health_env(folder: str) -> dict:
    """The health check's environment: a few named variables of the agent's, nothing else."""
    env = {k: os.environ[k] for k in HEALTH_ENV_KEEP if k in os.environ}
    env.setdefault("PATH", HEALTH_PATH)
    # the agent user's home (/nonexistent for the one enrolment creates): runtimes' caches
    # and telemetry land there or nowhere, never in the version folder
    env["HOME"] = os.environ.get("HOME") or "/nonexistent"
    return env


def limit_resources(limits: dict) -> None:
    """Set each limit (soft = hard, never above the current hard limit); in the child."""
    for name, value in limits.items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
