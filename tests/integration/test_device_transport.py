"""On real sshd devices: resumable uploads, strict host keys, trust-set rotation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import HostKeyError
from registry.keys import KeyStore
from tests.sshd import ShipLab, SshDevice, keygen

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EDGESHIP = str(Path(sys.executable).parent / "edgeship")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def test_upload_killed_half_way_resumes_sending_only_the_rest(lab: ShipLab) -> None:
    assert not lab.enroll(["dev02"]).failed
    bundle = lab.bundle()
    model = next(e for e in bundle.files() if e["path"] == "model/model.onnx")
    staging = (
        lab.roots["dev02"] / "staging" / f"posture_server-{bundle.version}-{bundle.digest[:12]}"
    )
    part = staging / "model" / "model.onnx.part"
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_KEY_PASSPHRASE"}
    env |= {
        "EDGESHIP_ROOT": str(ROOT),
        "EDGESHIP_KEYS_DIR": str(lab.store.path),
        "EDGESHIP_BUNDLES": str(lab.bundles),
    }
    cmd = [
        EDGESHIP,
        "deploy",
        "deployment=posture_server",
        f"fleet={lab.fleet_path}",
        "device=dev02",
    ]
    proc = subprocess.Popen(
        [*cmd, "--limit-rate", "16"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(lambda: part.exists() and part.stat().st_size >= 8192, 60, "upload never started")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the deploy dies mid-file, like a dropped link
        proc.wait(timeout=10)
    sizes: list[int] = []
    _wait_for(
        lambda: sizes.append(part.stat().st_size) or sizes[-1:] * 2 == sizes[-2:], 5, "settle"
    )
    partial = part.stat().st_size
    assert 0 < partial < model["size"]
    complete = {
        p.relative_to(staging).as_posix(): p.stat().st_size
        for p in staging.rglob("*")
        if p.is_file() and not p.name.endswith(".part")
    }
    total = sum(int(e["size"]) for e in bundle.files())

    heard: list[tuple[str, int, int]] = []
    outcome = lab.deploy(bundle, ["dev02"], on_bytes=lambda *a: heard.append(a)).outcomes[0]

    assert outcome.result == "activated", outcome.summary()
    assert outcome.bytes_resumed == partial
    # the progress the terminal shows: the resumed part at once, then every block, to the end
    assert {d for d, _, _ in heard} == {"dev02"}
    needed = heard[0][2]
    assert heard[0][1] == partial and heard[-1][1] == needed
    assert [s for _, s, _ in heard] == sorted(s for _, s, _ in heard)
    assert needed == outcome.bytes_sent + partial
    listed_complete = sum(
        size for path, size in complete.items() if path in {e["path"] for e in bundle.files()}
    )
    assert outcome.bytes_sent == total - listed_complete - partial
    assert outcome.files_present == len(
        [p for p in complete if p not in ("manifest.json", "manifest.json.sig")]
    )
    assert lab.status("dev02")["current"] == bundle.version


def test_unknown_host_key_is_refused(lab: ShipLab) -> None:
    bundle = lab.bundle()
    never = lab.deploy(bundle, ["dev01"]).outcomes[0]
    assert never.result == "host_key" and "run edgeship enroll first" in never.message

    assert not lab.enroll(["dev02"]).failed  # pins dev02 only
    pinned = Path(lab.fleet.known_hosts).read_text()
    outcome = lab.deploy(bundle, ["dev01"]).outcomes[0]
    assert outcome.result == "host_key"
    assert "host key not pinned" in outcome.message and "refusing to connect" in outcome.message
    assert Path(lab.fleet.known_hosts).read_text() == pinned  # nothing was added on the way
    with pytest.raises(HostKeyError):
        lab.session("dev01")


@pytest.fixture
def fresh_device(tmp_path: Path) -> Iterator[SshDevice]:
    """A device of its own (its host key will change)."""
    key = keygen(tmp_path / "client_ed25519")
    device = SshDevice("dev09", "127.0.0.9", tmp_path / "dev09", key)
    device.start()
    try:
        yield device
    finally:
        device.stop()


def test_changed_host_key_is_refused(
    tmp_path: Path, fresh_device: SshDevice, built_artifact: Path
) -> None:
    lab = ShipLab(tmp_path / "lab", [fresh_device], built_artifact)
    assert not lab.enroll().failed
    bundle = lab.bundle()
    assert lab.deploy(bundle).outcomes[0].result == "activated"
    fresh_device.restart(new_host_key=True)  # reinstalled, or someone in the middle

    outcome = lab.deploy(lab.bundle()).outcomes[0]
    assert outcome.result == "host_key", outcome.summary()
    assert "host key CHANGED" in outcome.message
    again = lab.enroll().outcomes[0]
    assert again.result == "host_key" and "--repin" in again.message  # enrolling again is no bypass
    # the operator decides the new key is right: re-pin explicitly
    assert lab.enroll(repin=True).outcomes[0].result == "enrolled"
    assert lab.deploy(lab.bundle()).outcomes[0].result == "activated"


def test_key_rotation_reaches_the_device_without_reenrolment(lab: ShipLab) -> None:
    assert not lab.enroll(["dev01"]).failed
    first = lab.bundle()
    assert lab.deploy(first, ["dev01"]).outcomes[0].result == "activated"
    lab.store.rotate()
    newest = lab.store.rotate().new_key  # root version 3: the device must walk 1 -> 2 -> 3
    bundle = lab.bundle()
    assert bundle.key_id == newest != first.key_id

    outcome = lab.deploy(bundle, ["dev01"]).outcomes[0]

    assert outcome.result == "activated", outcome.summary()
    assert "root of trust updated to version 2" in outcome.notes
    assert "root of trust updated to version 3" in outcome.notes
    status = lab.status("dev01")
    assert status["trust"]["serial"] == lab.store.trust().serial == 3
    assert newest in status["trust"]["keys"]
    events = [e["event"] for e in lab.log("dev01")]
    assert events.count("enrolled") == 1 and events.count("trust_updated") == 2


def test_trust_update_needs_the_root_threshold_and_the_next_version(
    lab: ShipLab, tmp_path: Path
) -> None:
    assert not lab.enroll(["dev01"]).failed
    rogue = KeyStore(tmp_path / "rogue", passphrase=b"")
    rogue.init()
    rogue.rotate()
    rogue.rotate()
    lab.store.rotate()

    def push(data: bytes) -> dict:
        with lab.session("dev01") as s:
            remote = f"{s.root}/staging/push.root.json"
            s.put_bytes(data, remote)
            res = s.agent(f"update-trust {remote}")
        answer = res.json()
        answer["code"] = res.code
        return answer

    forged = push(rogue.trust_chain(0)[1][1])  # version 2 of another root of trust
    assert (forged["code"], forged["refusal"]) == (10, "untrusted_root")
    assert "signed by 0 of the trusted root keys" in forged["message"]
    chain = lab.store.trust_chain(0)
    assert push(chain[1][1])["result"] == "updated"
    stale = push(chain[0][1])
    assert (stale["code"], stale["refusal"]) == (10, "stale_trust")
    assert lab.status("dev01")["trust"]["serial"] == 2


def test_sessions_creating_the_same_folders_at_once_do_not_fail(lab: ShipLab) -> None:
    """Devices enrolled in parallel may share a parent folder: its mkdir race is no error."""
    import threading

    assert not lab.enroll(["dev01"]).failed
    shared = lab.base / "shared-parent" / "a" / "b"
    errors: list[BaseException] = []
    ready = threading.Barrier(6)

    def make(i: int) -> None:
        try:
            with lab.session("dev01") as s:
                s.sftp()
                ready.wait()  # every session connected: the mkdirs race
                s.makedirs(f"{shared}/leaf-{i}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(p.name for p in shared.iterdir()) == [f"leaf-{i}" for i in range(6)]
