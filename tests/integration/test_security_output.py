"""`edgeship status` and `device-status` on real sshd devices print one row per device, whatever
the fleet's labels or the device's own answers hold (newlines, ANSI escape sequences)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from tests.sshd import write_fleet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FORGED_ROW = "dev09  127.0.0.9  site=north  posture_server  v9  pass 1.00 ms"
ANSI = "\x1b[2J\x1b[H\x1b[32m"


def test_status_and_device_status_keep_one_row_per_device_when_labels_and_answers_are_hostile(
    tmp_path: Path,
    ssh_devices: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    roots = {d.name: tmp_path / "devices" / d.name for d in ssh_devices}
    fleet = write_fleet(
        tmp_path / "fleet" / "ward.yaml",
        ssh_devices,
        roots,
        labels={
            "dev01": {"site": "north\n" + FORGED_ROW, "ward": ANSI + "icu"},
            "dev02": {"site": "south", "ward": "icu"},
        },
    )
    assert main(["keys", "init"]) == 0
    assert main(["enroll", f"fleet={fleet}", "device=dev01,dev02"]) == 0
    # a compromised device answers with a deployment name that would forge a row
    state = {"deployment": "posture\n" + FORGED_ROW + ANSI, "versions": {}, "history": []}
    (roots["dev01"] / "state.json").write_text(json.dumps(state))
    capsys.readouterr()

    main(["status", f"fleet={fleet}", "device=dev01,dev02"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4, out  # header, dev01, dev02, summary
    assert lines[1].startswith("dev01 ") and lines[2].startswith("dev02 ")
    assert "\x1b" not in out and not any(line.startswith("dev09") for line in lines)
    assert "site=north\\ndev09" in lines[1] and "ward=\\x1b[2J" in lines[1]

    main(["device-status", f"fleet={fleet}", "device=dev01,dev02"])
    out = capsys.readouterr().out
    assert "\x1b" not in out
    rows = [line for line in out.splitlines() if line.startswith("  dev")]
    assert [r.split()[0] for r in rows] == ["dev01", "dev02"], out
