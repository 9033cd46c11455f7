"""Least privilege on real sshd devices: the agent and the health check run as a dedicated user.

The devices log in as root (as many real fleets do). Enrolment creates the agent user,
hands it the install root (but not ``bin/``, which root runs), and from then on the agent,
its uploads and the health check run as that user; installed versions are read-only.
The user is created on this machine, so these tests need root (they skip otherwise) and
remove the user again at the end.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.device_python import unprivileged_python

pytestmark = pytest.mark.integration

USER = "edgeship-test"  # the agent user these tests create (and remove)
# what the agent does with a Python: start as root, drop to another user, import the rest


def _as_user(uid: int, gid: int, *cmd: str, env: dict[str, str] | None = None):
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def agent_user() -> Iterator[str]:
    """The agent user's name; removed after the module when these tests created it."""
    if os.geteuid() != 0:
        pytest.skip("creating the agent user needs root (useradd); run the tests as root")
    if not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("needs setpriv and useradd (util-linux, passwd)")
    existed = _user_exists(USER)
    yield USER
    if not existed and _user_exists(USER):
        subprocess.run(["userdel", USER], check=False, capture_output=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A folder every user can traverse (pytest's own temporary folders are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="edgeship-priv-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def agent_python(base: Path) -> str:
    """A Python with numpy and onnxruntime that an unprivileged user can run.

    This environment's own interpreter when others can run it; else the system's
    interpreter of the same version with this environment's packages (a small shim).
    """
    found = unprivileged_python(base)
    if found is not None:
        return found
    pytest.skip(
        f"no Python with numpy and onnxruntime that another user can run ({sys.executable} "
        "is not reachable by others and no system Python of its version can import them)"
    )
    raise AssertionError("unreachable")


def _set_fleet(lab, **defaults: str) -> None:
    data = yaml.safe_load(lab.fleet_path.read_text())
    data["defaults"].update(defaults)
    lab.fleet_path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def plab(request, base: Path, agent_user: str, agent_python: str, ssh_devices, built_artifact):
    """A lab whose fleet names the dedicated agent user and a Python it can run."""
    from tests.sshd import ShipLab

    lab = ShipLab(base / request.node.name, ssh_devices, built_artifact)
    _set_fleet(lab, agent_user=agent_user, python=agent_python)
    return lab


def _run_root(lab, name: str, command: str):
    with lab.session(name) as s:
        return s.run(command)


def test_privilege_enrolment_as_root_runs_agent_and_health_check_as_agent_user(plab) -> None:
    root = plab.roots["dev01"]
    enrolled = plab.enroll(["dev01"]).outcomes[0]
    assert enrolled.result == "enrolled", enrolled.message
    pw = pwd.getpwnam(USER)  # created by the enrolment (or already there)
    assert any(f"agent runs as {USER} (uid {pw.pw_uid}" in n for n in enrolled.notes)

    # who owns what: root keeps the install root (sticky, group-writable) and bin/
    st = root.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, pw.pw_gid, 0o1775)
    assert (root / "bin").stat().st_uid == 0
    assert (root / "bin" / "edgeship-agent").stat().st_uid == 0
    for name in ("versions", "staging", "log", "trust", "device.json"):
        assert (root / name).stat().st_uid == pw.pw_uid, name
    status = plab.status("dev01")
    assert status["user"]["name"] == USER and status["user"]["uid"] == pw.pw_uid != 0
    assert status["device"]["agent_user"] == USER

    result = plab.deploy(plab.bundle(), ["dev01"])
    out = result.outcomes[0]
    assert out.result == "activated", out.message
    # the sender's sha256sum of the staged files ran as the agent user, and agreed
    assert out.files_sent > 0 and not [n for n in out.notes if "hash mismatch" in n], out.notes
    with plab.session("dev01") as s:
        s.upload_as(USER)
        me = s.run_as_agent_user("id -u")
    assert me.stdout.strip() == str(pw.pw_uid), me
    assert out.health["result"] == "pass"
    assert out.health["uid"] == pw.pw_uid != 0 and out.health["user"] == USER
    assert out.health["limits"]["RLIMIT_NOFILE"] == 512

    # installed versions: files 0444, folders 0555, owned by the agent user
    version = root / "versions" / "1"
    for path in [version, *version.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == pw.pw_uid, path
        assert stat.S_IMODE(st.st_mode) == (0o555 if path.is_dir() else 0o444), path
    model = next(p for p in version.rglob("*.onnx"))
    uid, gid = pw.pw_uid, pw.pw_gid
    assert _as_user(uid, gid, "sh", "-c", f"echo x >> {model}").returncode != 0
    assert _as_user(uid, gid, "touch", str(version / "planted")).returncode != 0
    assert not (version / "planted").exists()
    # the agent user cannot touch what root runs: not bin/, not the wrapper
    assert _as_user(uid, gid, "mv", str(root / "bin"), str(root / "bin.old")).returncode != 0
    wrapper = root / "bin" / "edgeship-agent"
    assert _as_user(uid, gid, "sh", "-c", f"echo x >> {wrapper}").returncode != 0
    # staged uploads travel as the agent user; the next version is linked and activated
    second = plab.deploy(plab.bundle(), ["dev01"]).outcomes[0]
    assert second.result == "activated", second.message
    assert second.files_linked > 0 and second.health["uid"] == pw.pw_uid
    assert os.listdir(root / "staging") == []
    back = plab.agent("dev01", "rollback")
    assert back.code == 0 and back.json()["version"] == 1
    assert (root / "current").lstat().st_uid == pw.pw_uid

    from orchestrator.ship.status import agent_report

    report = agent_report(plab.fleet, plab.select(["dev01"]), 1).outcomes[0]
    assert f"agent user {USER} (uid {pw.pw_uid})" in " ".join(report.notes)


def test_privilege_agent_refuses_root_unless_enrolled_so(plab) -> None:
    assert plab.enroll(["dev02"]).outcomes[0].result == "enrolled"
    root = plab.roots["dev02"]
    python = yaml.safe_load(plab.fleet_path.read_text())["defaults"]["python"]
    agent = f"{python} {root}/bin/edgeship_agent.pyz --root {root}"

    res = _run_root(plab, "dev02", f"{agent} status")  # as root, past the wrapper
    assert res.code == 1
    message = json.loads(res.stdout.strip().splitlines()[-1])["message"]
    assert message.startswith("refusing to run the agent as root")
    assert "agent_user: root" in message

    res = _run_root(plab, "dev02", f"{agent} --user root status")
    assert res.code == 1
    message = json.loads(res.stdout.strip().splitlines()[-1])["message"]
    assert f"this device was enrolled with agent_user: {USER}" in message

    res = plab.agent("dev02", "--user root status")  # the wrapper's --user cannot be overridden
    assert res.code == 2 and "--user given twice" in res.stderr
    assert "user" not in [e["event"] for e in plab.log("dev02")]


def test_privilege_reenrolment_migrates_a_root_owned_install(plab) -> None:
    root = plab.roots["dev03"]
    _set_fleet(plab, agent_user="root")  # enrolled the old way: everything root's
    assert plab.enroll(["dev03"]).outcomes[0].result == "enrolled"
    out = plab.deploy(plab.bundle(), ["dev03"]).outcomes[0]
    assert out.result == "activated" and out.health["uid"] == 0
    assert (root / "versions" / "1").stat().st_uid == 0
    assert plab.status("dev03")["user"]["uid"] == 0

    _set_fleet(plab, agent_user=USER)
    again = plab.enroll(["dev03"]).outcomes[0]
    assert again.result == "enrolled", again.message
    pw = pwd.getpwnam(USER)
    assert any("now owned by" in n for n in again.notes), again.notes
    assert again.version == 1
    for path in [root / "versions", *(root / "versions").rglob("*"), root / "state.json"]:
        assert path.lstat().st_uid == pw.pw_uid, path
    assert (root / "current").lstat().st_uid == pw.pw_uid
    assert stat.S_IMODE((root / "versions" / "1").stat().st_mode) == 0o555
    assert (root / "bin").stat().st_uid == 0

    health = plab.agent("dev03", "health")
    assert health.code == 0, health.stdout
    assert health.json()["uid"] == pw.pw_uid and health.json()["result"] == "pass"
    status = plab.status("dev03")
    assert status["current"] == 1 and status["user"]["uid"] == pw.pw_uid
    nxt = plab.deploy(plab.bundle(), ["dev03"]).outcomes[0]
    assert nxt.result == "activated" and nxt.health["uid"] == pw.pw_uid
