"""Fleet files: loading, defaults, selection, and the exact errors a person sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError
from orchestrator.spec.fleet import load_fleet, load_fleet_file

ROOT = Path(__file__).resolve().parents[2]
F = "  conf/fleet/ward.yaml: "

GOOD = """\
name: ward
known_hosts: fleet.known_hosts
defaults:
  family: server
  port: 2222
  identity_file: keys/fleet_ed25519
groups:
  canary: first devices
  ct: CT room
devices:
  - name: bed-01
    address: 127.0.0.2
    labels: {site: st-elsewhere, ward: north, bed: "01"}
    groups: [canary]
  - name: ct-nuc
    address: 127.0.0.3
    family: intel_nuc
    port: 22
    install_root: /srv/edgeship
    python: /usr/bin/python3.11
    groups: [ct]
"""


def _write(root: Path, text: str, name: str = "ward") -> Path:
    folder = root / "conf" / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return root


def _problems(root: Path, name: str = "ward") -> str:
    """The error text, with the target families fixed (the registry grows over time)."""
    path = root / "conf" / "fleet" / f"{name}.yaml"
    with pytest.raises(SpecError) as info:
        if path.exists():
            load_fleet_file(path, root, f"conf/fleet/{name}.yaml", ["intel_nuc", "server"])
        else:
            load_fleet(name, root)
    return str(info.value)


def test_load_fleet_applies_defaults_and_resolves_paths(tmp_path: Path) -> None:
    fleet = load_fleet("ward", _write(tmp_path, GOOD))
    bed, nuc = fleet.devices
    assert (bed.family, bed.port, bed.user, bed.install_root, bed.python) == (
        "server",
        2222,
        "root",
        "/opt/edgeship",
        "python3",
    )
    assert bed.identity_file == str(tmp_path.resolve() / "keys" / "fleet_ed25519")
    assert bed.labels.bed == "01" and bed.groups == ["canary"]
    assert (nuc.family, nuc.port, nuc.install_root, nuc.python) == (
        "intel_nuc",
        22,
        "/srv/edgeship",
        "/usr/bin/python3.11",
    )
    assert fleet.known_hosts == str(tmp_path.resolve() / "fleet.known_hosts")
    assert [d.name for d in fleet.select(groups=["ct"])] == ["ct-nuc"]
    assert [d.name for d in fleet.select(names=["bed-01"], groups=["ct"])] == ["bed-01", "ct-nuc"]


def test_load_fleet_reports_every_problem_at_once(tmp_path: Path) -> None:
    text = """\
name: ward
defaults:
  identity_file: ~/.ssh/id
  prot: 22
groups:
  canary: first
  icu: nobody here
devices:
  - name: bed-01
    address: 127.0.0.2
    family: sever
    groups: [canary, bedside]
  - name: bed-01
    address: 127.0.0.3
    family: server
    port: "2222"
    labels: {bed: 12, room: 3}
  - address: 127.0.0.4
"""
    assert _problems(_write(tmp_path, text)) == "\n".join(
        [
            "error: invalid fleet (10 problems)",
            F + "defaults.prot: unknown key 'prot'; expected one of: agent_user, family, "
            "identity_file, install_root, port, python, user (did you mean 'port'?)",
            F + "devices[1].port: expected int, found str '2222'",
            F + "devices[1].labels.room: unknown key 'room'; expected one of: bed, site, ward",
            F + "devices[1].labels.bed: expected str, found int 12",
            F + "devices[2].name: missing required value; expected str",
            F + "devices[0].family: unknown target family 'sever'; expected one "
            "of: intel_nuc, server (did you mean 'server'?)",
            F + "devices[0].groups[1]: unknown group 'bedside'; expected one of: canary, icu",
            F + "devices[1].name: duplicate device name 'bed-01' (also devices[0])",
            F + "devices[2].family: missing; set it here or in defaults.family; "
            "expected one of: intel_nuc, server",
            F + "groups.icu: declared but no device is in it",
        ]
    )


def test_load_fleet_duplicate_endpoint_and_missing_identity(tmp_path: Path) -> None:
    text = """\
name: ward
defaults: {family: server}
devices:
  - {name: a, address: 10.0.0.5, identity_file: k}
  - {name: b, address: 10.0.0.5}
"""
    assert _problems(_write(tmp_path, text)) == "\n".join(
        [
            "error: invalid fleet (2 problems)",
            F + "devices[1].identity_file: missing; set it here or in defaults.identity_file",
            F + "devices[1].address: 10.0.0.5:22 is already devices[0]",
        ]
    )


def test_load_fleet_unknown_name_lists_fleets(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    assert _problems(tmp_path, "wrad") == (
        "error: invalid spec (1 problem)\n"
        "  command line: fleet: unknown fleet 'wrad'; expected one of: ward (did you mean 'ward'?)"
    )


def test_load_fleet_name_must_match_file(tmp_path: Path) -> None:
    _write(tmp_path, GOOD.replace("name: ward", "name: east"))
    assert "name: expected 'ward' (the file's name), found 'east'" in _problems(tmp_path)


def test_select_unknown_device_and_group(tmp_path: Path) -> None:
    fleet = load_fleet("ward", _write(tmp_path, GOOD))
    with pytest.raises(SpecError) as info:
        fleet.select(names=["bed-1"], groups=["canery"])
    assert str(info.value) == "\n".join(
        [
            "error: invalid device selection for fleet ward (2 problems)",
            "  command line: device: unknown device 'bed-1'; expected one of: bed-01, ct-nuc "
            "(did you mean 'bed-01'?)",
            "  command line: group: unknown group 'canery'; expected one of: canary, ct "
            "(did you mean 'canary'?)",
        ]
    )


def test_shipped_example_fleet_is_valid_and_on_loopback() -> None:
    fleet = load_fleet("ward_north", ROOT)
    assert fleet.devices and all(d.address.startswith("127.0.0.") for d in fleet.devices)
    assert "simulator" in (ROOT / "conf" / "fleet" / "ward_north.yaml").read_text()


def test_load_fleet_agent_user_defaults_to_a_dedicated_user(tmp_path: Path) -> None:
    fleet = load_fleet("ward", _write(tmp_path, GOOD))
    assert [d.agent_user for d in fleet.devices] == ["edgeship", "edgeship"]
    text = GOOD.replace("  port: 2222\n", "  port: 2222\n  agent_user: root\n").replace(
        "    python: /usr/bin/python3.11\n",
        "    python: /usr/bin/python3.11\n    agent_user: ml-agent\n",
    )
    fleet = load_fleet("ward", _write(tmp_path, text))
    assert [d.agent_user for d in fleet.devices] == ["root", "ml-agent"]


def test_load_fleet_agent_user_must_be_a_user_name(tmp_path: Path) -> None:
    text = (
        GOOD.replace("  port: 2222\n", "  port: 2222\n  agent_user: ''\n")
        .replace(
            "    python: /usr/bin/python3.11\n",
            "    python: /usr/bin/python3.11\n    agent_user: Edge Ship\n",
        )
        .replace("    groups: [canary]\n", "    groups: [canary]\n    agent_user: 7\n")
    )
    assert _problems(_write(tmp_path, text)) == "\n".join(
        [
            "error: invalid fleet (3 problems)",
            F + "devices[0].agent_user: expected str, found int 7",
            F + "defaults.agent_user: expected a user name (default edgeship), found ''",
            F + "devices[1].agent_user: expected a user name (lower-case letters, digits, '_' "
            "and '-', starting with a letter or '_', at most 32 characters), found 'Edge Ship'",
        ]
    )


def test_load_fleet_events_broker(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    good = GOOD.replace(
        "groups:\n",
        "events:\n  broker: mqtt.ward:8883\n  ca_file: broker/ca.pem\n"
        "  password_file: broker/passwords\n  acl_file: broker/acl\ngroups:\n",
        1,
    )
    fleet = load_fleet("ward", _write(tmp_path, good))
    assert fleet.events is not None
    assert fleet.events.broker == "mqtt.ward:8883"
    assert fleet.events.password_file == str(tmp_path.resolve() / "broker" / "passwords")
    bad = GOOD.replace(
        "groups:\n",
        "events:\n  broker: mqtt.ward\n  ca_file: nowhere/ca.pem\n"
        "  acl_file: gone/acl\n  retain: true\ngroups:\n",
        1,
    )
    assert _problems(_write(tmp_path, bad)) == "\n".join(
        [
            "error: invalid fleet (5 problems)",
            F + "events.retain: unknown key 'retain'; expected one of: acl_file, broker, "
            "ca_file, password_file, pid_file, reload",
            F + "events.password_file: missing required value; expected str",
            F + "events.broker: expected HOST:PORT (port 1-65535), found 'mqtt.ward'",
            F + "events.ca_file: expected an existing CA certificate file, found 'nowhere/ca.pem'",
            F + "events.acl_file: expected a file in an existing folder, found 'gone/acl' "
            f"(no folder {tmp_path.resolve() / 'gone'})",
        ]
    )


def test_enrolment_makes_the_broker_read_its_files_as_the_fleet_says(tmp_path: Path) -> None:
    import subprocess
    import sys

    from orchestrator.ship.broker_auth import reload_broker
    from orchestrator.spec.fleet import FleetEventsConfig

    both = GOOD.replace(
        "groups:\n",
        "events:\n  broker: mqtt.ward:8883\n  password_file: p\n  acl_file: a\n"
        "  pid_file: broker.pid\n  reload: [systemctl, '']\ngroups:\n",
        1,
    )
    assert _problems(_write(tmp_path, both)).splitlines()[1:] == [
        F + "events.reload: expected a program and its arguments (strings), found "
        "['systemctl', '']",
        F + "events.reload: expected pid_file or reload (how the broker reads its files "
        "again), found both",
    ]
    events = FleetEventsConfig(broker="h:1", password_file="p", acl_file="a")
    assert "reload it by hand" not in reload_broker(events)
    assert "set events.pid_file or events.reload" in reload_broker(events)
    # a process that counts SIGHUPs stands in for the broker
    proc = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGHUP, lambda *_: (print('reloaded', flush=True), sys.exit(0)))\n"
         "print('ready', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        (tmp_path / "broker.pid").write_text(f"{proc.pid}\n")
        events.pid_file = str(tmp_path / "broker.pid")
        note = reload_broker(events)
        assert note == f"broker (pid {proc.pid}) reloaded its password and ACL files (SIGHUP)"
        assert proc.stdout.readline().strip() == "reloaded" and proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    (tmp_path / "broker.pid").write_text("not a pid\n")
    assert reload_broker(events).startswith(f"broker not reloaded: {tmp_path / 'broker.pid'}")
    events.pid_file = ""
    events.reload = ["sh", "-c", "echo mosquitto.service not found >&2; exit 5"]
    assert reload_broker(events) == (
        "broker not reloaded: sh -c echo mosquitto.service not found >&2; exit 5 exited 5: "
        "mosquitto.service not found"
    )
    events.reload = ["true"]
    assert reload_broker(events) == "broker reloaded: true"
