"""Through the CLI, with a real MLflow server and real sshd devices: a rollout that completes
sets the fleet's alias, a halted one is recorded as halted and moves nothing; `edgeship status`
shows every device (the unreachable one too); `edgeship trace` follows a device back to its
bundle, MLflow run, git commit, data hashes and gates, also as an HTML report."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from orchestrator.cli.main import main
from orchestrator.errors import ExitCode
from orchestrator.sim.simulator import MINIMAL_RUNTIME_GROUP, SshDevice, profile_env
from tests.sshd import require_sshd, start_devices, stop_devices, write_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["bed-01", "bed-02", "bed-03", "bed-04"]


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[dict[str, Any]]:
    """Four devices (bed-03 with a minimal runtime), a recorded build, keys, env for the CLI."""
    require_sshd()
    base = tmp_path_factory.mktemp("ward-status")
    env = {
        "EDGESHIP_ROOT": str(ROOT),
        "EDGESHIP_ARTIFACTS": str(base / "artifacts"),
        "EDGESHIP_BUNDLES": str(base / "bundles"),
        "EDGESHIP_KEYS_DIR": str(base / "keys"),
        "EDGESHIP_ROLLOUTS": str(base / "rollouts"),
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    saved = {k: os.environ.get(k) for k in [*env, "EDGESHIP_KEY_PASSPHRASE"]}
    os.environ.update(env)
    os.environ.pop("EDGESHIP_KEY_PASSPHRASE", None)
    profile = profile_env(base / "profiles", MINIMAL_RUNTIME_GROUP)
    devices = start_devices(
        4, base / "devices", first_octet=70, names=NAMES, env={"bed-03": profile}
    )
    try:
        from orchestrator.build import reference
        from orchestrator.build.pipeline import run_build
        from orchestrator.spec.compose import compose, load_option

        reference.ensure_weights(load_option("model", "posture_cnn", ROOT), ROOT)
        build = run_build(compose(["deployment=posture_server"], ROOT), record=True)
        fleet = write_fleet(
            base / "fleet" / "north.yaml",
            devices,
            known_hosts=base / "fleet" / "known_hosts",
            labels={
                n: {"site": "north", "ward": ("icu", "cardiology")[i % 2], "bed": f"{i + 1:02d}"}
                for i, n in enumerate(NAMES)
            },
            groups={
                "canary": "first to receive a bundle",
                MINIMAL_RUNTIME_GROUP: "minimal ONNX Runtime build (opset <= 18)",
            },
            device_groups={"bed-01": ["canary"], "bed-03": [MINIMAL_RUNTIME_GROUP]},
            extra={"mlflow_alias": "production-north"},
        )
        yield {
            "base": base,
            "fleet": fleet,
            "devices": {d.name: d for d in devices},
            "build": build,
            "uri": mlflow_server,
        }
    finally:
        stop_devices(devices)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, registry_uri=uri)  # not a registry an earlier test set globally


def _opset21(ward: dict[str, Any]) -> Path:
    """A second build of the model at opset 21, recorded as its own MLflow run and version."""
    import onnx

    from orchestrator.core.model_file import sha256_file
    from registry.tracking import Tracker

    source = ward["build"].artifact_dir
    dest = ward["base"] / "opset21" / "posture_server"
    shutil.copytree(source, dest)
    model = onnx.load(dest / "model" / "model.onnx")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 21
    onnx.save(model, dest / "model" / "model.onnx")
    runtime = json.loads((dest / "runtime.json").read_text())
    runtime["model"]["sha256"] = sha256_file(dest / "model" / "model.onnx")
    (dest / "runtime.json").write_text(json.dumps(runtime))
    build = json.loads((dest / "build.json").read_text())
    tracker = Tracker(ROOT)
    tags = {"edgeship.status": "passed", "git.commit": build["git"]["commit"]}
    with tracker.run("posture_server", "posture_server-opset21", tags) as run:
        run_id = run.info.run_id
    version = tracker.register("posture_server", run_id)
    build["mlflow"] = {"run_id": run_id, "model_version": version, "model_name": "posture_server"}
    (dest / "build.json").write_text(json.dumps(build))
    return dest


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.void = {"meta", "br", "link", "img", "hr", "input"}

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in self.void:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_rollout_records_status_and_trace_follow_a_device_to_its_evidence(
    ward: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = f"fleet={ward['fleet']}"
    client = _client(ward["uri"])
    build = ward["build"]
    assert main(["keys", "init"]) == 0
    dirty = json.loads((build.artifact_dir / "build.json").read_text())["git"].get("dirty")
    assert main(["bundle", "deployment=posture_server", *(["--allow-dirty"] if dirty else [])]) == 0
    assert main(["enroll", fleet]) == 0
    capsys.readouterr()

    # a canary rollout that completes: the model version becomes production-north
    assert main(["rollout", "deployment=posture_server", fleet, "rollout=canary"]) == 0
    out = capsys.readouterr().out
    assert "wave 1/2 (canary): 1 device(s)" in out and "bed-01  health after soak: pass" in out
    assert (
        f"posture_server version {build.model_version} (bundle v1) is now alias production-north"
    ) in out
    assert f"bundle v1 (MLflow model version {build.model_version})" in out
    version_tags = client.get_model_version("posture_server", str(build.model_version)).tags
    assert version_tags["edgeship.bundle.version"] == "1"  # the version names its bundle
    assert version_tags["edgeship.rollout.north"] == "completed"
    alias = client.get_model_version_by_alias("posture_server", "production-north")
    assert str(alias.version) == str(build.model_version)  # int or str, by MLflow store
    runs = client.search_runs(
        [client.get_experiment_by_name("posture_server").experiment_id],
        filter_string="tags.`edgeship.kind` = 'rollout'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    first = runs[0]
    assert first.data.tags["edgeship.rollout.status"] == "completed"
    from orchestrator.project import os_user
    from registry.keys import KeyStore

    assert first.data.tags["edgeship.rollout.operator"] == os_user()  # who ran it, with what key
    assert first.data.tags["edgeship.rollout.operator_key"] == KeyStore().signing_key()[0]
    assert first.data.tags["mlflow.parentRunId"] == build.run_id
    assert first.data.metrics["succeeded"] == 4 and first.data.metrics["failed"] == 0
    assert [a.path for a in client.list_artifacts(first.info.run_id, "rollout")] == [
        f"rollout/{first.data.tags['edgeship.rollout.id']}.jsonl"
    ]
    tags = client.get_run(build.run_id).data.tags
    assert tags["edgeship.rollout.north.status"] == "completed"

    # a halted rollout: recorded as such, the alias stays where it was
    from registry.bundle import make_bundle
    from registry.keys import KeyStore
    from registry.tracking import Tracker

    v2 = make_bundle(
        _opset21(ward),
        KeyStore(),
        Path(os.environ["EDGESHIP_BUNDLES"]),
        tracker=Tracker(ROOT),
        allow_dirty=bool(dirty),  # as the first bundle: a working copy with edits
    )
    code = main(["rollout", "deployment=posture_server", fleet, "rollout=all_at_once"])
    captured = capsys.readouterr()
    assert code == ExitCode.ROLLOUT_HALTED
    assert "HALTED in wave 1" in captured.out and "rollout halted" in captured.out
    assert "bed-03: rolled_back - health check of version 2 failed" in captured.err
    assert "opset 21" in captured.err
    alias = client.get_model_version_by_alias("posture_server", "production-north")
    assert str(alias.version) == str(build.model_version)  # int or str, by MLflow store
    halted = client.search_runs(
        [client.get_experiment_by_name("posture_server").experiment_id],
        filter_string="tags.`edgeship.rollout.status` = 'halted'",
    )
    assert len(halted) == 1 and halted[0].info.status == "FAILED"
    assert halted[0].data.tags["edgeship.bundle.version"] == str(v2.version)
    assert halted[0].data.metrics["rolled_back"] == 3
    v2_run = v2.manifest["provenance"]["mlflow"]["run_id"]
    assert client.get_run(v2_run).data.tags["edgeship.rollout.north.status"] == "halted"
    # the halted version is no longer the candidate, and says why
    v2_version = str(v2.manifest["provenance"]["mlflow"]["model_version"])
    assert (
        client.get_model_version("posture_server", v2_version).tags["edgeship.rollout.north"]
        == "halted"
    )
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("posture_server", "candidate")
    assert "is no longer alias candidate" in captured.out

    # status: every device, the one that does not answer too
    ward["devices"]["bed-04"].stop()
    try:
        assert main(["status", fleet]) == ExitCode.UNREACHABLE
        out = capsys.readouterr().out
        rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
        assert set(rows) == set(NAMES)
        assert "UNREACHABLE" in rows["bed-04"]
        for name in ("bed-01", "bed-02", "bed-03"):
            assert "posture_server  v1" in rows[name] and "pass" in rows[name], rows[name]
            assert "rolled_back v1" in rows[name]
        assert "site=north ward=cardiology bed=02" in rows["bed-02"]
        assert out.splitlines()[-1].startswith("fleet north: 4 device(s): 3 healthy, 1 unreachable")

        # trace of an unreachable device: from the last journal that reached it
        assert main(["trace", "bed-04", fleet, "--format", "json"]) == ExitCode.UNREACHABLE
        unreachable = json.loads(capsys.readouterr().out)
        assert unreachable["source"] == "journal" and unreachable["running"]["version"] == 1
    finally:
        ward["devices"]["bed-04"].start()

    # trace: device -> bundle -> MLflow run -> commit and data -> gates
    assert main(["trace", "bed-02", fleet]) == 0
    text = capsys.readouterr().out
    v1 = json.loads(
        (
            Path(os.environ["EDGESHIP_BUNDLES"]) / "posture_server" / "1" / "manifest.json"
        ).read_text()
    )
    provenance = v1["provenance"]
    assert f"mlflow run  {build.run_id} (experiment posture_server, FINISHED)" in text
    # production-north marks what the fleet runs (candidate moved on to the opset-21 build)
    model_line = next((line for line in text.splitlines() if "aliases:" in line), "")
    assert "production-north" in model_line, text
    assert provenance["git"]["commit"] in text
    assert provenance["validation"]["data"]["eval_data_sha256"] in text
    assert "agreement >= 0.95" in text
    assert "FAIL" not in text
    html_path = ward["base"] / "trace-bed-02.html"
    assert main(["trace", "bed-02", fleet, "--format", "html", "-o", str(html_path)]) == 0
    capsys.readouterr()
    page = html_path.read_text()
    parser = _Html()
    parser.feed(page)
    assert parser.stack == []
    words = " ".join(parser.text)
    for expected in (
        build.run_id,
        provenance["git"]["commit"],
        provenance["validation"]["data"]["weights_sha256"],
        "production-north",
        "Every link that could be checked holds",
        "verifies",
        "accuracy_drop <= 0.05",
    ):
        assert expected in words, expected
    assert page.count('class="bad"') == 0 or provenance["git"]["dirty"]

    # an approval after the fact: tagged on the model version, shown and checked by trace
    assert main(["keys", "add-person", "alice", "--role", "approver"]) == 0
    args = ["approve", "deployment=posture_server", "version=1", "--as", "alice"]
    assert main([*args, "--comment", "reviewed the gates"]) == 0
    version_tags = client.get_model_version("posture_server", str(build.model_version)).tags
    assert version_tags["edgeship.bundle.1.approval.by"] == "alice"
    assert version_tags["edgeship.bundle.1.approval.comment"] == "reviewed the gates"
    capsys.readouterr()
    assert main(["trace", "bed-02", fleet]) == 0
    out = capsys.readouterr().out
    assert "ok   approval: approved by alice (approver) at" in out, out


def test_trace_reports_a_tampered_device_copy(
    ward: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    device: SshDevice = ward["devices"]["bed-01"]
    manifest = device.install_root / "current" / "manifest.json"
    if not manifest.is_file():
        pytest.skip("needs the rollout of the test before")
    original = manifest.read_bytes()
    target = manifest.resolve()
    target.chmod(0o644)
    target.write_bytes(original.replace(b'"version": 1', b'"version": 1 '))
    try:
        assert main(["trace", "bed-01", f"fleet={ward['fleet']}"]) == ExitCode.DEVICES_FAILED
        out = capsys.readouterr().out
        assert "FAIL manifest on the device" in out
    finally:
        target.write_bytes(original)
