"""Change control through the CLI, on real sshd devices: a fleet that requires an approval by
a second person refuses an unapproved bundle on this host (rollout and deploy) before anything
is sent, and its devices refuse it by themselves when it is pushed past that check; the
two-person flow (a builder bundles, an approver approves, a rollout runs) records who did
what, and `edgeship trace` shows it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import ExitCode
from orchestrator.project import os_user
from tests.sshd import require_sshd, start_devices, stop_devices, write_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["cc-01", "cc-02"]


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two devices of a fleet that requires a two-person approval; a build; env for the CLI."""
    require_sshd()
    base = tmp_path_factory.mktemp("change-control")
    env = {
        "EDGESHIP_ROOT": str(ROOT),
        "EDGESHIP_ARTIFACTS": str(base / "artifacts"),
        "EDGESHIP_BUNDLES": str(base / "bundles"),
        "EDGESHIP_KEYS_DIR": str(base / "keys"),
        "EDGESHIP_ROLLOUTS": str(base / "rollouts"),
    }
    saved = {k: os.environ.get(k) for k in [*env, "EDGESHIP_KEY_PASSPHRASE"]}
    os.environ.update(env)
    os.environ.pop("EDGESHIP_KEY_PASSPHRASE", None)
    devices = start_devices(2, base / "devices", first_octet=150, names=NAMES)
    try:
        from orchestrator.build import reference
        from orchestrator.build.pipeline import run_build
        from orchestrator.spec.compose import compose, load_option

        reference.ensure_weights(load_option("model", "posture_cnn", ROOT), ROOT)
        build = run_build(compose(["deployment=posture_server"], ROOT), record=False)
        fleet = write_fleet(
            base / "fleet" / "guarded.yaml",
            devices,
            known_hosts=base / "fleet" / "known_hosts",
            extra={"requires": ["approved"], "two_person": True},
        )
        yield {"base": base, "fleet": fleet, "build": build}
    finally:
        stop_devices(devices)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _device_refuses(fleet_file: Path, name: str, code: str) -> None:
    """Push the newest bundle to one device past this host's approval check (the deploy
    path below it: trust, envelope, the agent's verify); the device must refuse it."""
    from orchestrator.ship.deploy import DeployOptions, deploy_device
    from orchestrator.ship.results import run_device
    from orchestrator.spec.fleet import load_fleet
    from registry.bundle import bundles_root, find_bundle
    from registry.keys import KeyStore

    fleet = load_fleet(str(fleet_file), ROOT)
    bundle = find_bundle(bundles_root(ROOT), "posture_server")
    store = KeyStore()
    outcome = run_device(
        fleet.device(name),
        lambda dev, out: deploy_device(fleet, dev, bundle, store, DeployOptions(), out),
    )
    assert (outcome.result, outcome.refusal) == ("refused", code), outcome
    assert outcome.files_sent == 0 and outcome.version is None


def test_two_person_flow_and_refusals_on_host_and_device(
    ward: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = f"fleet={ward['fleet']}"
    me = os_user()
    git = json.loads((ward["build"].artifact_dir / "build.json").read_text())["git"]
    dirty = ["--allow-dirty"] if git.get("dirty") else []

    assert main(["keys", "init"]) == 0
    assert main(["keys", "add-person", "alice", "--role", "approver"]) == 0
    assert main(["keys", "add-person", me, "--role", "builder,approver"]) == 0
    assert main(["keys", "publish-policy", str(ward["fleet"])]) == 0
    assert main(["bundle", "deployment=posture_server", "--no-record", *dirty]) == 0
    assert main(["enroll", fleet]) == 0
    out = capsys.readouterr().out
    assert "fleet guarded requires approved (two_person) on its devices" in out

    # unapproved: refused here before anything starts (no journal, no lock)
    assert main(["rollout", "deployment=posture_server", fleet, "rollout=all_at_once"]) == (
        ExitCode.NOT_APPROVED
    )
    err = capsys.readouterr().err
    assert "fleet guarded requires an approval by a second person (two_person)" in err
    assert "no approval" in err and "edgeship approve deployment=posture_server" in err
    assert not list(Path(os.environ["EDGESHIP_ROLLOUTS"]).glob("*.jsonl"))
    assert main(["deploy", "deployment=posture_server", fleet]) == ExitCode.NOT_APPROVED
    capsys.readouterr()
    assert main(["deploy", "deployment=posture_server", fleet, "--dry-run"]) == (
        ExitCode.NOT_APPROVED
    )
    out = capsys.readouterr().out
    assert "would be refused before anything is sent:" in out and "requires an approval" in out
    # pushed past that check, each device refuses it by itself
    _device_refuses(ward["fleet"], "cc-01", "not_approved")

    # the bundler approving their own bundle: refused by the two-person rule, here and there
    assert main(["approve", "deployment=posture_server", "--comment", "mine", "--as", me]) == 0
    assert main(["rollout", "deployment=posture_server", fleet, "rollout=all_at_once"]) == (
        ExitCode.NOT_APPROVED
    )
    assert f"approved by {me}, who also" in capsys.readouterr().err
    _device_refuses(ward["fleet"], "cc-02", "two_person")

    # a builder cannot approve; an approver who is another person can
    code = main(["approve", "deployment=posture_server", "--comment", "x", "--as", "nobody"])
    assert code == ExitCode.KEY_STORE
    comment = "gates pass on the TEST split; reviewed"
    code = main(["approve", "deployment=posture_server", "version=1", "--comment", comment])
    assert code == 0  # (as the login name: the bundler) replaced below
    assert (
        main(["approve", "deployment=posture_server", "--as", "alice", "--comment", comment]) == 0
    )
    out = capsys.readouterr().out
    assert "posture_server: version 1 approved by alice (approver; key" in out
    # the approval is a target of the signed repository too (pull devices fetch it there)
    tuf = Path(os.environ["EDGESHIP_BUNDLES"]) / ".tuf" / "targets.json"
    listed = json.loads(tuf.read_text())["signed"]["targets"]
    assert {"posture_server/1/approval.json", "posture_server/1/approval.json.sig"} <= set(listed)

    assert main(["rollout", "deployment=posture_server", fleet, "rollout=all_at_once"]) == 0
    capsys.readouterr()
    journal = next(Path(os.environ["EDGESHIP_ROLLOUTS"]).glob("*.jsonl"))
    started = json.loads(journal.read_text().splitlines()[0])
    from registry.keys import KeyStore

    assert started["operator"]["user"] == me
    assert started["operator"]["key_id"] == KeyStore().signing_key()[0]

    ledger = json.loads(
        (Path(os.environ["EDGESHIP_BUNDLES"]) / "posture_server" / "ledger.json").read_text()
    )
    assert [a["approver"]["name"] for a in ledger["approvals"]] == [me, me, "alice"]
    assert ledger["issued"][0]["allow_dirty"] == bool(git.get("dirty"))

    assert main(["trace", "cc-01", fleet]) == 0
    out = capsys.readouterr().out
    assert "approved    by alice (approver, key" in out and comment in out
    assert f"people      built by {me}, bundled by {me}" in out
    assert f"            run by {me}@" in out and "with key" in out
    assert "ok   approval: approved by alice (approver)" in out
    assert "data        train_data examples.posture_cnn.data:train_set" in out

    # the change record a reviewer files: people, roles, approval, where it runs
    html = ward["base"] / "audit.html"
    args = ["audit", "deployment=posture_server", "version=1", fleet, "-o", str(html)]
    assert main(args) == 0
    page = html.read_text()
    assert "Change record: posture_server version 1" in page
    assert "<b>alice</b> (approver)" in page and comment in page
    assert f"<td>{me}</td>" in page  # built by, bundled by
    assert f"{me}@" in page  # rolled out by
    assert "guarded/cc-01" in page and "guarded/cc-02" in page
    assert "train_data_sha256" in page and "eval_data_sha256" in page
    assert "Movement classifier" in page and "agreement &gt;= 0.95" in page
    assert "no approval recorded" not in page and "signature verifies" in page


def test_audit_prints_to_a_pdf_a_reviewer_can_read(ward: dict[str, Any]) -> None:
    """The record of the bundle the flow above approved and rolled out, as a PDF."""
    import shutil
    import subprocess

    from tests.browser import chromium

    chromium()  # skips (fails under CI) when Chromium is missing
    for tool in ("pdftoppm", "pdftotext"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing (apt-get install poppler-utils)")
    html, pdf = ward["base"] / "record.html", ward["base"] / "record.pdf"
    args = ["audit", "deployment=posture_server", "version=1", "-o", str(html), "--pdf", str(pdf)]
    assert main(args) == 0
    assert pdf.read_bytes().startswith(b"%PDF-")
    pages = ward["base"] / "pages"
    pages.mkdir()
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(pages / "p")], check=True)
    assert 1 <= len(list(pages.glob("p*.png"))) <= 10
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Change record: posture_server version 1" in text
    assert "alice" in text and "approver" in text and "Where it runs" in text
