"""`edgeship sim up|status|down`: devices that outlive the command, a fleet file with spread
labels, host keys and ports kept across down/up, every process stopped by down."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.sim.simulator import Simulator, pid_alive
from tests.sshd import require_sshd

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_sim_up_status_down_keeps_keys_and_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_sshd()
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    state = tmp_path / "sim"
    fleet_file = tmp_path / "fleet" / "t.yaml"
    common = ["--name", "t", "--state", str(state)]
    sim = Simulator(ROOT, "t", state)
    try:
        assert (
            main(
                [
                    "sim",
                    "up",
                    "--devices",
                    "6",
                    "--first-octet",
                    "110",
                    "--feed",
                    "--fleet-file",
                    str(fleet_file),
                    *common,
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert "simulation t: 6 device(s) up" in out and "(ort-minimal-op18)" in out
        assert (
            "next: edgeship keys init (this project has no signing keys yet), "
            f"then edgeship enroll fleet={fleet_file}"
        ) in out
        fleet = yaml.safe_load(fleet_file.read_text())
        labels = [d["labels"] for d in fleet["devices"]]
        assert {(lab["site"], lab["ward"]) for lab in labels} == {
            (site, ward) for site in ("north", "south") for ward in ("icu", "cardiology", "general")
        }
        assert [d["name"] for d in fleet["devices"] if "ort-minimal-op18" in d["groups"]] == [
            "bed-05"
        ]
        assert fleet["defaults"]["python"].startswith(str(Path(sys.executable).parent))
        phones = yaml.safe_load((tmp_path / "fleet" / "t_phones.yaml").read_text())
        assert phones["devices"] == [] and phones["feed"]["base_url"].startswith("http://")

        assert main(["sim", "status", *common]) == 0
        assert "7 of 7 device(s) up" in capsys.readouterr().out

        assert main(["keys", "init"]) == 0
        assert main(["enroll", f"fleet={fleet_file}", "--parallel", "6"]) == 0
        assert "6 succeeded, 0 failed" in capsys.readouterr().out
        before = {d.name: (d.port, d.host_public_key()) for d in sim.devices()}
        pids = [d.pid for d in sim.devices()]

        assert main(["sim", "down", *common]) == 0
        assert "stopped 7 device(s)" in capsys.readouterr().out
        assert not any(pid_alive(p) for p in pids if p)
        assert main(["sim", "status", *common]) == 11
        assert "0 of 7 device(s) up" in capsys.readouterr().out

        # up again: same ports and host keys, so the pinned known_hosts still hold
        assert (
            main(
                [
                    "sim",
                    "up",
                    "--devices",
                    "6",
                    "--first-octet",
                    "110",
                    "--fleet-file",
                    str(fleet_file),
                    *common,
                ]
            )
            == 0
        )
        after = {d.name: (d.port, d.host_public_key()) for d in sim.devices() if d.name != "feed"}
        assert after == {k: v for k, v in before.items() if k != "feed"}
        capsys.readouterr()
        assert main(["device-status", f"fleet={fleet_file}"]) == 0
        assert capsys.readouterr().out.count("idle") == 6
    finally:
        if sim.read_state() is not None:
            sim.down(purge=True)
    assert not state.joinpath("t").exists() and not fleet_file.exists()
