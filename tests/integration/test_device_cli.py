"""The user's workflow through the real CLI.

keys init -> bundle -> enroll -> deploy -> tamper -> refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import ExitCode
from tests.sshd import write_fleet

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shipping_env(
    tmp_path: Path, ssh_devices: list, built_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setenv("EDGESHIP_ROOT", str(ROOT))
    monkeypatch.setenv("EDGESHIP_ARTIFACTS", str(built_artifact.parent))
    monkeypatch.setenv("EDGESHIP_BUNDLES", str(tmp_path / "bundles"))
    monkeypatch.setenv("EDGESHIP_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.delenv("EDGESHIP_KEY_PASSPHRASE", raising=False)
    roots = {d.name: tmp_path / "devices" / d.name for d in ssh_devices}
    return write_fleet(tmp_path / "fleet" / "ward.yaml", ssh_devices, roots)


def test_cli_keys_bundle_enroll_deploy_tamper_refused(
    shipping_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = f"fleet={shipping_env}"
    assert main(["keys", "init"]) == 0
    out = capsys.readouterr().out
    assert "created the keys of a new root of trust" in out
    assert "root:      3 offline key(s), threshold 2" in out
    key_files = sorted(p.name for p in (tmp_path / "keys" / "online").glob("*.key"))
    root_files = list((tmp_path / "keys" / "root").glob("*.key"))
    assert len(key_files) == 2 and len(root_files) == 3
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in root_files)
    targets_key = next(line.split()[1] for line in out.splitlines() if "targets:" in line)

    assert main(["bundle", "deployment=posture_server", "--export", str(tmp_path / "ps.tar")]) == 0
    out = capsys.readouterr().out
    assert "posture_server: bundle version 1" in out and "exported:" in out
    assert "not recorded (the build has no MLflow run)" in out

    assert main(["enroll", fleet, "device=dev01,dev02"]) == 0
    out = capsys.readouterr().out
    assert out.count("enrolled") == 2 and "2 succeeded, 0 failed" in out

    assert main(["deploy", "deployment=posture_server", fleet, "device=dev01,dev02"]) == 0
    out = capsys.readouterr().out
    assert out.count("activated   v1") == 2 and "health pass" in out

    # someone edits the next bundle's manifest after it was signed
    assert main(["bundle", "deployment=posture_server"]) == 0
    manifest = tmp_path / "bundles" / "posture_server" / "2" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["expires_at"] = "2099-12-31T00:00:00Z"
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    capsys.readouterr()
    # this host checks the signature before it sends anything (the agent would refuse too)
    assert main(["deploy", "deployment=posture_server", fleet, "device=dev01"]) == 7
    captured = capsys.readouterr()
    assert "is refused before anything is sent" in captured.err
    assert "does not verify with any key of the targets role of root version 1" in captured.err
    assert "(bad_signature)" in captured.err

    assert main(["device-status", fleet, "device=dev01,dev02"]) == 0
    assert capsys.readouterr().out.count("running     v1") == 2

    # the exported file deploys too, and is a no-op where it already runs
    assert main(["deploy", fleet, "device=dev02", "--bundle", str(tmp_path / "ps.tar")]) == 0
    assert "unchanged   v1" in capsys.readouterr().out

    assert main(["keys", "rotate"]) == 0
    assert "root version 2 published" in capsys.readouterr().out
    assert main(["keys", "revoke", targets_key]) == 0
    out = capsys.readouterr().out
    assert "root version 3 published" in out and "bundle repository" in out
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert "root version 3, threshold 2 of 3" in out
    assert f"{targets_key}  revoked" in out and "targets (active)" in out
    assert main(["bundle", "deployment=posture_server", "--list"]) == 0
    assert "2 bundle(s)" in capsys.readouterr().out


def test_cli_selection_errors_name_the_device_and_options(
    shipping_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "deploy",
                "deployment=posture_server",
                f"fleet={shipping_env}",
                "device=dev1",
                "grup=x",
            ]
        )
        == ExitCode.USAGE
    )
    err = capsys.readouterr().err
    assert (
        "command line: grup: unknown key 'grup'; expected one of: deployment, device, fleet, "
        "group, "
        "version (did you mean 'group'?)" in err
    )
    assert (
        main(["deploy", "deployment=posture_server", f"fleet={shipping_env}", "device=dev1"]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "command line: device: unknown device 'dev1'; expected one of: dev01, dev02, dev03" in err
    )
