"""python-tuf's own client (ngclient) downloads and verifies edgeship bundles over HTTP.

The bundles root is served on loopback by a real HTTP server: ``.tuf/`` as the
metadata URL, the bundles root as the targets URL. The client starts from root
version 1 (as a device ships with it), follows root rotations, and refuses what
the TUF threat model says it must: altered targets, a repository frozen past its
timestamp, metadata signed by a key the root no longer allows.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import ExpiredMetadataError, LengthOrHashMismatchError
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from registry.bundle import make_bundle
from registry.keys import KeyStore
from registry.repository import METADATA_DIR, Repository
from tests.unit.test_bundle import make_artifact

pytestmark = pytest.mark.integration


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    store = KeyStore(tmp_path / "keys", passphrase=b"")
    store.init(root_keys=3, threshold=2)
    bundles = tmp_path / "bundles"
    handler = functools.partial(_Quiet, directory=str(bundles))
    bundles.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield {"store": store, "bundles": bundles, "url": url, "base": tmp_path}
    finally:
        server.shutdown()
        server.server_close()


def _updater(served: dict[str, Any], name: str) -> Updater:
    """A TUF client that ships with root version 1, as a device does."""
    folder = served["base"] / "clients" / name
    (folder / "metadata").mkdir(parents=True)
    (folder / "targets").mkdir()
    return Updater(
        metadata_dir=str(folder / "metadata"),
        metadata_base_url=served["url"] + METADATA_DIR + "/",
        target_dir=str(folder / "targets"),
        target_base_url=served["url"],
        bootstrap=served["store"].root_path(1).read_bytes(),
    )


def _download_bundle(updater: Updater, deployment: str, version: int) -> dict[str, bytes]:
    """Every file of one bundle, each verified by the TUF client; path -> bytes."""
    updater.refresh()
    manifest_info = updater.get_targetinfo(f"{deployment}/{version}/manifest.json")
    assert manifest_info is not None, "the manifest is not a target"
    assert manifest_info.custom["edgeship"] == {"deployment": deployment, "version": version}
    manifest = json.loads(Path(updater.download_target(manifest_info)).read_bytes())
    out = {}
    for entry in [*manifest["files"], {"path": "manifest.json.sig"}]:
        info = updater.get_targetinfo(f"{deployment}/{version}/{entry['path']}")
        assert info is not None, entry["path"]
        out[entry["path"]] = Path(updater.download_target(info)).read_bytes()
    return out


def test_python_tuf_client_downloads_and_verifies_a_bundle(
    served: dict[str, Any], tmp_path: Path
) -> None:
    store, bundles = served["store"], served["bundles"]
    artifact = make_artifact(tmp_path / "artifacts" / "demo")
    first = make_bundle(artifact, store, bundles)
    second = make_bundle(artifact, store, bundles)

    files = _download_bundle(_updater(served, "device-a"), "demo", second.version)
    assert set(files) == {e["path"] for e in second.files()} | {"manifest.json.sig"}
    for path, data in files.items():
        assert data == (second.path / path).read_bytes()
    targets = Metadata.from_file(str(bundles / METADATA_DIR / "targets.json")).signed
    assert f"demo/{first.version}/manifest.json" in targets.targets  # every version listed


def test_python_tuf_client_follows_root_rotations_and_refuses_what_it_must(
    served: dict[str, Any], tmp_path: Path
) -> None:
    store, bundles = served["store"], served["bundles"]
    artifact = make_artifact(tmp_path / "artifacts" / "demo")
    old = make_bundle(artifact, store, bundles)
    old_key = store.signing_key()[0]
    # a new targets key, then the old one revoked: root versions 2 and 3, threshold-signed
    assert store.rotate().published and store.revoke(old_key).published
    Repository(bundles, store).refresh()  # what `edgeship keys rotate/revoke` does
    bundle = make_bundle(artifact, store, bundles)
    updater = _updater(served, "device-b")
    files = _download_bundle(updater, "demo", bundle.version)
    assert files["model/model.onnx"] == (bundle.path / "model" / "model.onnx").read_bytes()
    trusted = json.loads(
        (served["base"] / "clients" / "device-b" / "metadata" / "root.json").read_text()
    )
    assert trusted["signed"]["version"] == 3  # the client walked 1 -> 2 -> 3
    assert old_key not in trusted["signed"]["roles"]["targets"]["keyids"]

    # a target altered on the server after signing
    model = bundles / "demo" / str(old.version) / "model" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    info = _updater(served, "device-c")
    info.refresh()
    target = info.get_targetinfo(f"demo/{old.version}/model/model.onnx")
    assert target is not None
    with pytest.raises(LengthOrHashMismatchError):
        info.download_target(target)

    # a repository whose timestamp nobody renewed (a freeze): refused once it expires
    stamp_path = bundles / METADATA_DIR / "timestamp.json"
    stamp = Metadata.from_file(str(stamp_path))
    stamp.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    stamp.signed.version += 1
    stamp.sign(store.online_signer("timestamp"))
    stamp.to_file(str(stamp_path))
    with pytest.raises(ExpiredMetadataError):
        _updater(served, "device-d").refresh()
    version, expires = Repository(bundles, store).refresh()
    assert expires > datetime.now(UTC) and version > stamp.signed.version
    _updater(served, "device-e").refresh()
