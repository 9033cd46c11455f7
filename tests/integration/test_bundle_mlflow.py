"""Bundles are recorded on their build's MLflow run (digest, signature, manifest), and
version numbers continue from MLflow when the local ledger is gone."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from registry.bundle import make_bundle
from registry.keys import KeyStore
from registry.signing import load_public_pem, verify

pytestmark = pytest.mark.integration


def test_bundle_is_recorded_on_the_build_run(
    tmp_path: Path, built_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from registry.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker = Tracker(tmp_path)
    with tracker.run("posture_server", "posture_server-test", {"edgeship.status": "passed"}) as run:
        run_id = run.info.run_id
    artifact = tmp_path / "artifact"
    shutil.copytree(built_artifact, artifact)
    build = json.loads((artifact / "build.json").read_text())
    build["mlflow"] = {"run_id": run_id, "model_version": "7", "model_name": "posture_server"}
    (artifact / "build.json").write_text(json.dumps(build))
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init()

    bundle = make_bundle(artifact, store, tmp_path / "bundles", tracker=tracker)

    client = MlflowClient()
    tags = client.get_run(run_id).data.tags
    assert tags["edgeship.bundle.version"] == str(bundle.version) == "1"
    assert tags["edgeship.bundle.sha256"] == bundle.digest
    assert tags["edgeship.bundle.key_id"] == bundle.key_id
    signature = base64.b64decode(tags["edgeship.bundle.signature"])
    pub = load_public_pem(store.pub_path(bundle.key_id).read_bytes())
    assert verify(pub, (bundle.path / "manifest.json").read_bytes(), signature)
    logged = {f.path for f in client.list_artifacts(run_id, "bundle/1")}
    assert logged == {"bundle/1/manifest.json", "bundle/1/manifest.json.sig"}
    assert bundle.manifest["provenance"]["mlflow"]["model_version"] == "7"

    # the bundle folder and its ledger are lost: MLflow still knows version 1 was issued
    shutil.rmtree(tmp_path / "bundles")
    again = make_bundle(artifact, store, tmp_path / "bundles", tracker=tracker)
    assert again.version == 2
    assert tracker.max_bundle_version("posture_server") == 2
