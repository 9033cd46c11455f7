"""Pull mode's decisions, fleet files and report receiver, without a repository."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.device.agent.pull import Puller
from orchestrator.errors import SpecError
from orchestrator.ship.pull import ReportReceiver, latest_reports, pull_dir
from orchestrator.spec.fleet import load_fleet_file


def _rollout(**over: object) -> dict:
    base = {"wave": 0, "open_waves": 1, "halted": False, "rollback": False, "version": 5,
            "previous": 4}  # fmt: skip
    return {**base, **over}


@pytest.mark.parametrize(
    ("rollout", "want"),
    [
        (_rollout(), 5),  # in an open wave
        (_rollout(wave=1), None),  # its wave has not opened
        (_rollout(wave=None), None),  # not addressed
        (_rollout(halted=True), None),  # halted without rollback: keep what runs
        (_rollout(halted=True, rollback=True), 4),  # halted with rollback: the previous
        (_rollout(wave=1, halted=True, rollback=True), None),  # never opened: untouched
    ],
)
def test_the_version_a_device_should_run(rollout: dict, want: int | None) -> None:
    assert Puller.desired(rollout) == want


def _fleet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    return path


def test_ssh_devices_need_an_address_pull_devices_do_not(tmp_path: Path) -> None:
    ssh = "name: f\ndefaults: {family: server, identity_file: k}\ndevices:\n  - {name: a}\n"
    with pytest.raises(SpecError) as err:
        load_fleet_file(_fleet(tmp_path, ssh), tmp_path)
    assert "devices[0].address: missing" in str(err.value)
    pull = (
        "name: f\ndefaults: {family: server}\n"
        "pull: {base_url: 'http://h/', reports_url: 'http://h/r'}\ndevices:\n  - {name: a}\n"
    )
    fleet = load_fleet_file(_fleet(tmp_path, pull), tmp_path)
    assert fleet.pull is not None and fleet.pull.poll_seconds == 60.0
    missing = "name: f\ndefaults: {family: server}\npull: {reports_url: x}\ndevices: []\n"
    with pytest.raises(SpecError) as err:
        load_fleet_file(_fleet(tmp_path, missing), tmp_path)
    assert "pull.base_url" in str(err.value)


def test_report_receiver_keeps_the_latest_report_per_device(tmp_path: Path) -> None:
    folder = pull_dir(tmp_path, "f")
    receiver = ReportReceiver("127.0.0.1:0", folder).start()
    url = f"http://127.0.0.1:{receiver.port}/report"
    try:

        def post(body: bytes) -> int:
            req = urllib.request.Request(url, data=body, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert post(b"not json") == 400
        assert post(json.dumps({"no": "device"}).encode()) == 400
        assert post(json.dumps({"device": "a", "result": "waiting"}).encode()) == 204
        assert post(json.dumps({"device": "a", "result": "healthy"}).encode()) == 204
        assert receiver.wait(lambda r: r.get("a", {}).get("result") == "healthy", 5)
        assert not receiver.wait(lambda r: "b" in r, 0.2)
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert json.loads(resp.read())["a"]["result"] == "healthy"
        lines = (folder / "reports.jsonl").read_text().splitlines()
        assert [json.loads(x)["result"] for x in lines] == ["waiting", "healthy"]
        with (folder / "reports.jsonl").open("a") as fh:
            fh.write('{"device": "b", "resu')  # torn by a crash: skipped, the rest kept
        latest = latest_reports(tmp_path, "f")
        assert list(latest) == ["a"] and latest["a"]["result"] == "healthy"
        assert latest_reports(tmp_path, "other") == {}
    finally:
        receiver.stop()


def test_a_pull_rollout_is_recorded_on_the_model_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from orchestrator.ship.pull import PullReport, record_in_mlflow
    from registry.bundle import Bundle

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("demo")
    for _ in range(2):
        client.create_model_version("demo", source=str(tmp_path))
    client.set_registered_model_alias("demo", "candidate", "2")
    fleet = load_fleet_file(
        _fleet(
            tmp_path,
            "name: f\ndefaults: {family: server}\n"
            "pull: {base_url: 'http://h/', reports_url: 'http://h/r'}\ndevices: [{name: a}]\n",
        ),
        tmp_path,
    )
    for version, status in (("1", "completed"), ("2", "halted")):
        manifest = {"provenance": {"mlflow": {"model_name": "demo", "model_version": version}}}
        bundle = Bundle(tmp_path, manifest, "d" * 64)
        report = PullReport(f"r{version}", "f", "demo", int(version), None, status=status)
        record_in_mlflow(tmp_path, fleet, bundle, report, whole=True)
    model = client.get_registered_model("demo")
    assert {k: str(v) for k, v in model.aliases.items()} == {"production-f": "1"}  # no candidate
    tags = client.get_model_version("demo", "2").tags
    assert (tags["edgeship.rollout.f"], tags["edgeship.rollout.f.id"]) == ("halted", "r2")
