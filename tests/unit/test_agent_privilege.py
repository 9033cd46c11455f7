"""The agent's privilege helpers (orchestrator/device/agent/privilege.py), run locally.

Dropping root is tried in a child process (a test process must keep its own rights);
those tests need root and skip without it.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.device.agent import files, privilege, wrapper_script
from orchestrator.device.agent.errors import AgentError

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def _child(code: str) -> dict:
    """Run ``code`` in a child Python with the agent package importable; its last JSON line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json\nfrom orchestrator.device.agent import privilege\n" + code,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_root
def test_privilege_enter_refuses_root_without_user(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as info:
        privilege.enter(None, str(tmp_path))
    message = str(info.value)
    assert message.startswith("refusing to run the agent as root: it was started without --user")
    assert "enrol with agent_user: root" in message


@needs_root
def test_privilege_enter_refuses_root_when_enrolled_for_another_user(tmp_path: Path) -> None:
    (tmp_path / "device.json").write_text(json.dumps({"agent_user": "edgeship"}))
    with pytest.raises(AgentError) as info:
        privilege.enter("root", str(tmp_path))
    assert "this device was enrolled with agent_user: edgeship" in str(info.value)


@needs_root
def test_privilege_enter_runs_as_root_when_enrolled_so(tmp_path: Path) -> None:
    (tmp_path / "device.json").write_text(json.dumps({"agent_user": "root"}))
    me = privilege.enter("root", str(tmp_path))
    assert me["uid"] == 0 and me["dropped_from_root"] is False


@needs_root
def test_privilege_drop_to_nobody_for_good_when_root(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    out = _child(
        "me = dict(privilege.drop_to('nobody'), dropped_from_root=True)\n"
        "import os\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    back = True\n"
        "except OSError:\n"
        "    back = False\n"
        "print(json.dumps(dict(me, resuid=os.getresuid(), back=back, home=os.environ['HOME'])))"
    )
    assert out["name"] == "nobody" and out["uid"] != 0 and out["dropped_from_root"] is True
    assert 0 not in out["resuid"] and out["back"] is False


@needs_root
def test_privilege_enter_refuses_another_user_when_not_root(tmp_path: Path) -> None:
    out = _child(
        "privilege.drop_to('nobody')\n"
        "try:\n"
        f"    privilege.enter('edgeship', {str(tmp_path)!r})\n"
        "except privilege.AgentError as exc:\n"
        "    print(json.dumps({'error': str(exc)}))"
    )
    assert out["error"].startswith("the agent runs as user 'edgeship' on this device")
    assert "log in as root or as 'edgeship'" in out["error"]


def test_privilege_drop_to_unknown_user_names_the_setting() -> None:
    with pytest.raises(AgentError) as info:
        privilege.drop_to("no-such-user-edgeship")
    assert "does not exist on this device" in str(info.value)
    assert "agent_user" in str(info.value)


def test_privilege_make_read_only_then_remove_tree(tmp_path: Path) -> None:
    version = tmp_path / "versions" / "3"
    (version / "model").mkdir(parents=True)
    (version / "model" / "model.onnx").write_bytes(b"x")
    (version / "manifest.json").write_text("{}")
    files.make_read_only(str(version))
    modes = {
        p.relative_to(version).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [version, *version.rglob("*")]
    }
    assert modes == {".": 0o555, "model": 0o555, "model/model.onnx": 0o444, "manifest.json": 0o444}
    files.remove_tree(str(version))
    assert not version.exists() and (tmp_path / "versions").is_dir()


def test_privilege_health_limits_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = privilege.health_limits({"settings": {"execution_provider": "CPUExecutionProvider"}})
    assert cpu == {
        "RLIMIT_AS": privilege.HEALTH_ADDRESS_SPACE,
        "RLIMIT_CPU": privilege.HEALTH_CPU_SECONDS,
        "RLIMIT_NOFILE": privilege.HEALTH_OPEN_FILES,
        "RLIMIT_CORE": 0,
    }
    gpu = privilege.health_limits({"settings": {"execution_provider": "CUDAExecutionProvider"}})
    assert "RLIMIT_AS" not in gpu and gpu["RLIMIT_CPU"] == privilege.HEALTH_CPU_SECONDS
    assert "RLIMIT_AS" not in privilege.health_limits({"target": {"device": "GPU"}})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("PYTHONPATH", "/opt/runtime")
    env = privilege.health_env(str(tmp_path))
    assert "AWS_SECRET_ACCESS_KEY" not in env and env["PYTHONPATH"] == "/opt/runtime"
    assert env["HOME"] == os.environ["HOME"] and set(env) <= {*privilege.HEALTH_ENV_KEEP, "HOME"}


def test_privilege_limit_resources_in_a_child() -> None:
    limits = privilege.health_limits({})
    code = (
        "import resource, json, sys\n"
        "names = sys.argv[1:]\n"
        "print(json.dumps([resource.getrlimit(getattr(resource, n)) for n in names]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *limits],
        capture_output=True,
        text=True,
        preexec_fn=lambda: privilege.limit_resources(limits),
    )
    got = json.loads(out.stdout)
    for (name, value), (soft, hard) in zip(limits.items(), got, strict=True):
        assert soft == hard <= value, name
    assert resource.getrlimit(resource.RLIMIT_CPU)[0] == resource.RLIM_INFINITY


def test_privilege_wrapper_names_the_agent_user() -> None:
    text = wrapper_script("/usr/bin/python3", "/opt/edgeship", "edgeship")
    assert text.splitlines()[-1] == (
        "exec /usr/bin/python3 /opt/edgeship/bin/edgeship_agent.pyz --root /opt/edgeship "
        '--user edgeship "$@"'
    )


def test_privilege_user_option_cannot_be_given_twice(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.device.agent",
            "--root",
            str(tmp_path),
            "--user",
            "a",
            "--user",
            "root",
            "status",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "--user given twice" in proc.stderr
