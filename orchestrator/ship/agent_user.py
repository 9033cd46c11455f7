"""The agent user at enrolment: who runs the device agent, and who owns what under the install root.

Enrolling as root (the fleet's SSH ``user``), :func:`prepare_agent_user` creates the
fleet's ``agent_user`` (default ``edgeship``) when the device lacks it: a system user
with no login shell and no home. It then sets the install root's ownership:

- ``<root>`` itself: owner root, group the agent user's, mode 1775 (sticky). The agent
  creates and switches its own entries there (``current``, ``previous``, state.json,
  its lock) but cannot rename or replace what root owns, i.e. ``bin/``;
- ``<root>/bin`` (the agent and its wrapper, which root runs): root's, 0755;
- everything else (versions/, staging/, trust/, log/, device.json, state.json, the
  links): the agent user's. A device enrolled before (all root's) is migrated here.

The ownership change walks the tree with directory file descriptors and never
follows a symbolic link (``os.fwalk``), so a link planted in the tree cannot turn it
onto files outside. Enrolling as another user, the agent runs as that user and
nothing changes hands; with ``agent_user: root`` the agent runs as root, on purpose.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from orchestrator.ship.ssh import DeviceSession

ROOT_USER = "root"

# Runs as root with the device's Python (3.8+, standard library): argv[1] is JSON {root, user}.
_PREPARE = r"""
import json, os, pwd, shutil, stat, subprocess, sys
a = json.loads(sys.argv[1]); root, user = a["root"], a["user"]
out = {"created": False, "migrated": 0}
try:
    pw = pwd.getpwnam(user)
except KeyError:
    useradd = shutil.which("useradd") or next(
        (p for p in ("/usr/sbin/useradd", "/sbin/useradd") if os.access(p, os.X_OK)), None)
    if useradd is None:
        print(json.dumps({"error": "useradd is missing; create the system user %s yourself "
                          "(no login shell, no home) or install useradd (Debian: passwd)" % user}))
        sys.exit(3)
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)),
                 "/bin/false")
    proc = subprocess.run([useradd, "--system", "--user-group", "--no-create-home",
                           "--home-dir", "/nonexistent", "--shell", shell, user],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(json.dumps({"error": "useradd %s failed: %s" % (user, proc.stdout.decode().strip())}))
        sys.exit(3)
    pw = pwd.getpwnam(user)
    out["created"] = True
if pw.pw_uid == 0:
    print(json.dumps({"error": "user %s has uid 0; expected an unprivileged user" % user}))
    sys.exit(3)
uid, gid = pw.pw_uid, pw.pw_gid
for name in ("bin", "versions", "staging", "log", "trust"):
    path = os.path.join(root, name)
    if os.path.islink(path):
        print(json.dumps({"error": "%s is a symbolic link; expected a folder" % path}))
        sys.exit(3)
    os.makedirs(path, exist_ok=True)
os.chown(root, 0, gid, follow_symlinks=False)
os.chmod(root, 0o1775)
os.chown(os.path.join(root, "bin"), 0, 0, follow_symlinks=False)
os.chmod(os.path.join(root, "bin"), 0o755)

def own(dir_fd, name):
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        out["migrated"] += 1

top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
try:
    for name in os.listdir(top):
        if name == "bin":
            continue
        own(top, name)
        if stat.S_ISDIR(os.stat(name, dir_fd=top, follow_symlinks=False).st_mode):
            for _, dirs, files, fd in os.fwalk(name, dir_fd=top, follow_symlinks=False):
                for entry in dirs + files:
                    own(fd, entry)
finally:
    os.close(top)
out.update(user=user, uid=uid, gid=gid)
print(json.dumps(out))
"""


@dataclass
class AgentUser:
    """Whom the agent runs as on one device, and what enrolment did about it."""

    name: str
    notes: list[str]


def prepare_script() -> str:
    """The set-up above as a Python file (``python3 prepare.py '{"root": R, "user": U}'``)."""
    return "# edgeship: the agent user and the install root's owners (run as root)\n" + _PREPARE


def login_is_root(session: DeviceSession) -> bool:
    res = session.run("id -u")
    return res.code == 0 and res.stdout.strip() == "0"


def prepare_agent_user(session: DeviceSession) -> AgentUser:
    """Create the agent user when needed and give it the install root (see the module doc)."""
    dev = session.device
    wanted = dev.agent_user or "edgeship"
    if not login_is_root(session):
        return AgentUser(
            dev.user,
            [
                f"agent runs as {dev.user}, the SSH user (agent_user: {wanted} applies when "
                "enrolling as root)"
            ],
        )
    if wanted == ROOT_USER:
        return AgentUser(ROOT_USER, ["agent runs as root (agent_user: root)"])
    args = json.dumps({"root": session.root, "user": wanted})
    res = session.run(
        f"{shlex.quote(dev.python)} -c {shlex.quote(_PREPARE)} {shlex.quote(args)}", timeout=300
    )
    answer = res.json_or_none() or {}
    if res.code != 0 or "error" in answer:
        raise RuntimeError(
            f"could not set up the agent user {wanted}: "
            + str(answer.get("error") or res.stderr.strip() or res.stdout.strip())
        )
    notes = [
        f"agent runs as {wanted} (uid {answer['uid']}"
        + (", created" if answer.get("created") else "")
        + ")"
    ]
    if answer.get("migrated"):
        notes.append(f"{answer['migrated']} file(s) under {session.root} now owned by {wanted}")
    return AgentUser(wanted, notes)
