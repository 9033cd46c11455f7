"""Benchmark: a signed ~50 MB bundle to a simulated fleet, edgeship rollout vs Ansible, in one run.

The same fleet of real sshd devices on loopback (``orchestrator.sim.simulator``), the same signed
bundle, the same device agent doing the same verification, activation and health
check at the end; what differs is how the files travel:

- edgeship: ``start_rollout`` with strategy all_at_once, ``max_parallel`` = fleet size
  (SFTP over one paramiko connection per device; files the device already holds are
  hard-linked there instead of sent);
- Ansible (ansible-core): a playbook with ``ansible.builtin.copy`` of the bundle folder
  to ``<install root>/incoming/<deployment>/`` and ``ansible.builtin.command`` running
  ``edgeship-agent activate`` on it, ``forks`` = fleet size, SSH pipelining and
  ControlPersist on (Ansible's own fast settings), the inventory generated from the
  fleet spec, host keys checked against the fleet's pinned known_hosts.

The bundle is posture_server's artifact plus ``model/weights_extra.bin``: 50 MB of
random (incompressible) bytes standing in for the weights of a larger model, listed
and hashed in the signed manifest like every other file. Two rounds per tool, each on
freshly enrolled devices: the first rollout, then an update where only the model
configuration changed (``runtime.json``: the session's intra-op thread count).

Bytes on the wire: the loopback interface's counters (``/proc/net/dev``) around each
round: everything the round sent over loopback (SSH, TCP/IP headers, both directions).

    .venv/bin/python bench/rollout_vs_ansible.py [--devices 20] [--payload-mb 50]

Needs OpenSSH's sshd and ssh (tools/system-deps.sh) and ansible-core
(``pip install -c constraints.txt -e '.[bench]'``). Results: bench/results/rollout_vs_ansible.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAYBOOK = """\
- name: ship a signed edgeship bundle
  hosts: fleet
  gather_facts: false
  tasks:
    - name: copy the bundle folder to the device
      ansible.builtin.copy:
        src: "{{ bundle_dir }}/"
        dest: "{{ install_root }}/incoming/{{ deployment }}/"
    - name: verify, activate and health-check it with the device agent
      ansible.builtin.command:
        argv:
          - "{{ install_root }}/bin/edgeship-agent"
          - activate
          - "{{ install_root }}/incoming/{{ deployment }}"
      register: activation
      changed_when: "'\\"result\\": \\"activated\\"' in activation.stdout"
"""


def lo_bytes() -> int:
    """Bytes received on the loopback interface so far (each loopback byte is counted once)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def make_artifacts(work: Path, payload_mb: int) -> tuple[Path, Path]:
    """posture_server's artifact + a random weights file; and the same with a config change."""
    from orchestrator.build.pipeline import run_build
    from orchestrator.spec.compose import compose

    source = ROOT / "artifacts" / "posture_server"
    if not (source / "runtime.json").is_file():
        os.environ["EDGESHIP_ARTIFACTS"] = str(work / "built")
        source = run_build(compose(["deployment=posture_server"], ROOT), record=False).artifact_dir
    first = work / "artifact-v1" / "posture_server"
    shutil.copytree(source, first)
    rng = random.Random(0)
    with (first / "model" / "weights_extra.bin").open("wb") as fh:
        for _ in range(payload_mb):
            fh.write(rng.randbytes(1_000_000))
    second = work / "artifact-v2" / "posture_server"
    shutil.copytree(first, second)
    runtime = json.loads((second / "runtime.json").read_text())
    settings = runtime.setdefault("settings", {})
    threads = int(settings.get("intra_op_num_threads", 1))
    settings["intra_op_num_threads"] = 1 if threads != 1 else 2
    (second / "runtime.json").write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n")
    assert (second / "runtime.json").read_bytes() != (first / "runtime.json").read_bytes()
    return first, second


def fresh_fleet(work: Path, devices: list[Any], name: str, store: Any) -> Any:
    """A fleet file with fresh install roots for ``devices``, enrolled (not timed)."""
    from orchestrator.ship.enroll import enroll
    from orchestrator.sim.simulator import write_fleet
    from orchestrator.spec.fleet import load_fleet_file

    roots = {d.name: work / name / d.name for d in devices}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    path = write_fleet(
        work / name / f"{name}.yaml", devices, roots, known_hosts=work / "known_hosts"
    )
    fleet = load_fleet_file(path, work)
    enroll(fleet, fleet.devices, store, parallel=len(devices))
    return fleet


def edgeship_round(work: Path, fleet: Any, bundle: Any, store: Any, label: str) -> dict[str, Any]:
    from orchestrator.ship.rollout.engine import start_rollout
    from orchestrator.spec.strategy import check_rollout_data

    strategy = check_rollout_data(
        {
            "name": "bench",
            "strategy": "all_at_once",
            "max_parallel": len(fleet.devices),
            "timeouts": {"device": 3600, "health": 600},
        },
        "bench",
    )
    before, t0 = lo_bytes(), time.perf_counter()
    report = start_rollout(
        work, fleet, fleet.name, bundle, strategy, "bench", store=store, record=False
    )
    seconds = time.perf_counter() - t0
    wire = lo_bytes() - before
    done = report.state.done
    assert report.status == "completed" and not report.failed, report.summary()
    return {
        "tool": "edgeship",
        "round": label,
        "seconds": seconds,
        "wire_bytes": wire,
        "payload_bytes": sum(int(e.get("bytes_sent") or 0) for e in done.values()),
        "results": sorted({e["result"] for e in done.values()}),
    }


def ansible_round(work: Path, fleet: Any, bundle: Any, label: str, forks: int) -> dict[str, Any]:
    inventory = work / "ansible" / "inventory.ini"
    inventory.parent.mkdir(parents=True, exist_ok=True)
    lines = ["[fleet]"]
    for d in fleet.devices:
        lines.append(
            f"{d.name} ansible_host={d.address} ansible_port={d.port} install_root={d.install_root}"
        )
    first = fleet.devices[0]
    lines += [
        "",
        "[fleet:vars]",
        f"ansible_user={first.user}",
        f"ansible_ssh_private_key_file={first.identity_file}",
        f"ansible_python_interpreter={first.python}",
        "ansible_ssh_common_args='-o UserKnownHostsFile="
        f"{fleet.known_hosts} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes'",
        f"deployment={bundle.deployment}",
        "",
    ]
    inventory.write_text("\n".join(lines))
    playbook = work / "ansible" / "ship.yml"
    playbook.write_text(PLAYBOOK)
    control = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        ANSIBLE_HOST_KEY_CHECKING="True",
        ANSIBLE_PIPELINING="True",
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(control),
        ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s",
        ANSIBLE_LOCAL_TEMP=str(work / "ansible" / "tmp"),
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_NOCOLOR="1",
    )
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    before, t0 = lo_bytes(), time.perf_counter()
    proc = subprocess.run(
        [
            str(playbook_bin),
            "-i",
            str(inventory),
            "-f",
            str(forks),
            str(playbook),
            "-e",
            f"bundle_dir={bundle.path}",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    # close the persistent connections so that their last bytes are counted too
    for sock in control.iterdir():
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)
    time.sleep(1.0)
    wire = lo_bytes() - before
    shutil.rmtree(control, ignore_errors=True)
    (work / "ansible" / f"{label}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"ansible-playbook failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    recap = [line for line in proc.stdout.splitlines() if "ok=" in line and "failed=0" in line]
    assert len(recap) == len(fleet.devices), proc.stdout[-3000:]
    return {
        "tool": "ansible",
        "round": label,
        "seconds": seconds,
        "wire_bytes": wire,
        "payload_bytes": None,
        "results": ["ok"],
    }


def check_devices(fleet: Any, version: int) -> None:
    """Every device runs ``version`` with a passing health check (after either tool)."""
    from orchestrator.ship.status import fleet_status

    rows = fleet_status(fleet, fleet.devices, timeout=60, parallel=8)
    bad = [(r.device, r.version, r.health) for r in rows if r.version != version or not r.ok]
    assert not bad, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--payload-mb", type=int, default=50)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args()
    if (
        shutil.which("ssh") is None
        or not (Path(sys.executable).parent / "ansible-playbook").exists()
    ):
        print("needs ssh and ansible-core: pip install -c constraints.txt -e '.[bench]'")
        return 2

    from orchestrator.sim.simulator import start_devices, stop_devices
    from registry.bundle import make_bundle
    from registry.keys import KeyStore

    work = args.work or Path(tempfile.mkdtemp(prefix="edgeship-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["EDGESHIP_ROLLOUTS"] = str(work / "rollouts")
    print(f"work folder {work}", flush=True)
    first, second = make_artifacts(work, args.payload_mb)
    store = KeyStore(work / "keys", passphrase=b"")
    store.init()
    v1 = make_bundle(first, store, work / "bundles")
    v2 = make_bundle(second, store, work / "bundles")
    size = sum(int(e["size"]) for e in v1.files())
    print(f"bundle v1: {len(v1.files())} files, {size / 1e6:.1f} MB; v2 changes runtime.json only")
    devices = start_devices(args.devices, work / "devices", first_octet=150)
    rows: list[dict[str, Any]] = []
    try:
        for tool in ("edgeship", "ansible"):
            fleet = fresh_fleet(work, devices, f"fleet_{tool}", store)
            for label, bundle in (("first rollout", v1), ("config-only update", v2)):
                print(f"{tool}: {label} to {len(devices)} devices ...", flush=True)
                if tool == "edgeship":
                    row = edgeship_round(work, fleet, bundle, store, label)
                else:
                    row = ansible_round(work, fleet, bundle, label, forks=len(devices))
                check_devices(fleet, bundle.version)
                print(f"  {row['seconds']:.1f} s, {row['wire_bytes'] / 1e6:.1f} MB on the wire")
                rows.append(row)
    finally:
        stop_devices(devices)
    print()
    print(
        f"{len(devices)} devices, bundle {size / 1e6:.1f} MB ({len(v1.files())} files), "
        f"{os.cpu_count()} CPU cores"
    )
    header = "| round | edgeship | Ansible | Ansible / edgeship | bytes edgeship | bytes Ansible |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|")
    for label in ("first rollout", "config-only update"):
        e = next(r for r in rows if r["tool"] == "edgeship" and r["round"] == label)
        a = next(r for r in rows if r["tool"] == "ansible" and r["round"] == label)
        print(
            f"| {label} | {e['seconds']:.1f} s | {a['seconds']:.1f} s | "
            f"{a['seconds'] / e['seconds']:.2f}x | {e['wire_bytes'] / 1e6:.1f} MB | "
            f"{a['wire_bytes'] / 1e6:.1f} MB |"
        )
    out = ROOT / "bench" / "results" / "rollout_vs_ansible.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"devices": len(devices), "bundle_bytes": size, "rows": rows}, indent=2) + "\n"
    )
    print(f"results: {out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
