"""Phones: `edgeship publish` uploads a signed feed over SSH to a real sshd feed host; a real HTTP
server on loopback serves the folder that upload wrote; reference clients poll it, verify the
index and bundle signatures, take a staged rollout by install-id bucket, activate the .ort model
and run its smoke test with ONNX Runtime, and refuse tampered or replayed feeds."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.device.phone_client import PhoneClient
from orchestrator.ship.feed import bucket
from registry.bundle import make_bundle
from registry.keys import KeyStore
from registry.signing import canonical_json, sign
from tests.sshd import require_sshd, start_devices, stop_devices

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
INSTALLS = [f"install-{i:03d}" for i in range(40)]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def feed(
    tmp_path_factory: pytest.TempPathFactory, built_phone_artifact: Path
) -> Iterator[dict[str, Any]]:
    """A feed host (sshd), a web server for its folder, a phone fleet, keys and two bundles."""
    require_sshd()
    base = tmp_path_factory.mktemp("phones")
    (host,) = start_devices(1, base / "host", first_octet=90, names=["feedhost"])
    www = host.install_root
    handler = functools.partial(_Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    fleet = base / "phones.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "name": "phones",
                "known_hosts": str(base / "known_hosts"),
                "defaults": {"family": "android_phone", "identity_file": str(host.client_key)},
                "feed": {
                    "host": host.address,
                    "port": host.port,
                    "path": str(www),
                    "base_url": url,
                    "channels": ["stable", "beta"],
                },
                "devices": [],
            }
        )
    )
    env = {
        "EDGESHIP_ROOT": str(ROOT),
        "EDGESHIP_BUNDLES": str(base / "bundles"),
        "EDGESHIP_KEYS_DIR": str(base / "keys"),
    }
    saved = {k: os.environ.get(k) for k in [*env, "EDGESHIP_KEY_PASSPHRASE"]}
    os.environ.update(env)
    os.environ.pop("EDGESHIP_KEY_PASSPHRASE", None)
    try:
        store = KeyStore()
        store.init()
        bundles = [make_bundle(built_phone_artifact, store, base / "bundles") for _ in range(3)]
        yield {
            "base": base,
            "fleet": fleet,
            "url": url,
            "www": www,
            "store": store,
            "bundles": bundles,
        }
    finally:
        server.shutdown()
        stop_devices([host])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(feed: dict[str, Any], install: str, channel: str = "beta") -> PhoneClient:
    return PhoneClient(
        feed["url"],
        channel,
        feed["base"] / "apps" / install,
        "android_phone",
        trust_file=feed["store"].root_path(1),
        install_id=install,
    )


def _index(feed: dict[str, Any]) -> dict[str, Any]:
    www: Path = feed["www"]
    serial = int((www / "index" / "latest").read_text())
    return dict(json.loads((www / "index" / f"{serial}.json").read_text()))


def test_publish_staged_rollout_and_reference_clients(
    feed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = f"fleet={feed['fleet']}"
    assert [b.version for b in feed["bundles"]] == [1, 2, 3]
    assert main(["enroll", fleet]) == 0
    assert "feed host 127.0.0.90" in capsys.readouterr().out

    # v1 to every beta installation
    assert main(["publish", "deployment=posture_phone", fleet, "channel=beta", "version=1"]) == 0
    out = capsys.readouterr().out
    assert "published posture_phone v1" in out and "on phones/beta to 100% of installations" in out
    assert (feed["www"] / "bundles" / "posture_phone" / "1" / "model" / "model.ort").is_file()
    reports = {i: _client(feed, i).poll() for i in INSTALLS}
    assert {r["result"] for r in reports.values()} == {"activated"}
    first = reports[INSTALLS[0]]
    assert first["version"] == 1 and first["health"]["result"] == "pass"
    assert first["health"]["runtime"]["name"] == "onnxruntime_mobile"
    assert first["health"]["providers"][-1] == "CPUExecutionProvider"

    # v2 to 20%: exactly the installations the publisher's bucket puts below 0.2
    assert (
        main(
            [
                "publish",
                "deployment=posture_phone",
                fleet,
                "channel=beta",
                "version=2",
                "--fraction",
                "0.2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "to 20% of installations" in out and "80% of installations keep v1" in out
    entry = _index(feed)["channels"]["beta"]
    assert entry["fallback"]["version"] == 1 and entry["rollout_fraction"] == 0.2
    salt = entry["bucket_salt"]
    expected = {i for i in INSTALLS if bucket(salt, i) < 0.2}
    assert 0 < len(expected) < len(INSTALLS)
    reports = {i: _client(feed, i).poll() for i in INSTALLS}
    on_v2 = {i for i, r in reports.items() if r["result"] == "activated" and r["version"] == 2}
    assert on_v2 == expected
    assert {r["result"] for i, r in reports.items() if i not in expected} == {"unchanged"}

    # raising the fraction keeps everyone who has it
    assert (
        main(
            [
                "publish",
                "deployment=posture_phone",
                fleet,
                "channel=beta",
                "version=2",
                "--fraction",
                "0.5",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert _index(feed)["channels"]["beta"]["bucket_salt"] == salt
    reports = {i: _client(feed, i).poll() for i in INSTALLS}
    now_v2 = {i for i, r in reports.items() if r["version"] == 2}
    assert expected < now_v2 and now_v2 == {i for i in INSTALLS if bucket(salt, i) < 0.5}
    assert all(reports[i]["result"] == "unchanged" for i in expected)

    # the client as a program: one poll, a JSON report
    state = feed["base"] / "apps" / "cli-install"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.device.phone_client",
            "--feed",
            feed["url"],
            "--channel",
            "beta",
            "--state",
            str(state),
            "--trust",
            str(feed["store"].root_path(1)),
            "--install-id",
            sorted(now_v2)[0],  # an installation the staged fraction includes
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["result"] == "activated" and report["version"] == 2
    assert (state / "current").resolve() == (state / "versions" / "posture_phone" / "2").resolve()

    assert main(["publish", fleet, "--show"]) == 0
    assert "beta     posture_phone v2" in capsys.readouterr().out


def test_clients_refuse_tampered_and_replayed_feeds(
    feed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = f"fleet={feed['fleet']}"
    if not (feed["www"] / "index" / "latest").is_file():
        pytest.skip("needs the feed published by the test before")
    install = "tamper-check"
    client = _client(feed, install, channel="stable")
    assert main(["publish", "deployment=posture_phone", fleet, "channel=stable", "version=2"]) == 0
    assert client.poll()["result"] == "activated"

    stamp = feed["www"] / "index" / "timestamp.json"
    old_stamp = (stamp.read_bytes(), stamp.with_name("timestamp.json.sig").read_bytes())
    # v3 on the feed host is altered after publication: the app refuses it and keeps v2
    assert main(["publish", "deployment=posture_phone", fleet, "channel=stable", "version=3"]) == 0
    capsys.readouterr()
    model = feed["www"] / "bundles" / "posture_phone" / "3" / "model" / "model.ort"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    report = client.poll()
    assert (report["result"], report["refusal"], report["version"]) == (
        "refused",
        "hash_mismatch",
        2,
    )
    assert "model/model.ort differs from the manifest" in report["message"]
    assert (client.state / "current").resolve().name == "2"

    # a forged index (channel edited after signing) is refused: the timestamp names its digest
    latest = int((feed["www"] / "index" / "latest").read_text())
    index_path = feed["www"] / "index" / f"{latest}.json"
    signed = index_path.read_bytes()
    forged = json.loads(signed)
    forged["channels"]["stable"]["rollout_fraction"] = 0.01
    index_path.write_text(json.dumps(forged, indent=2, sort_keys=True) + "\n")
    report = client.poll()
    assert (report["result"], report["refusal"]) == ("refused", "hash_mismatch")
    index_path.write_bytes(signed)

    # an older signed index served again with its timestamp (a replay) is refused
    new_stamp = (stamp.read_bytes(), stamp.with_name("timestamp.json.sig").read_bytes())
    stamp.with_name("timestamp.json.sig").write_bytes(old_stamp[1])
    stamp.write_bytes(old_stamp[0])
    report = client.poll()
    assert (report["result"], report["refusal"]) == ("refused", "stale_index")
    assert (client.state / "current").resolve().name == "2"

    # ... and a fresh installation refuses it once that timestamp has expired (a freeze):
    # the old index re-served with a timestamp the attacker cannot make fresh
    expired = json.loads(old_stamp[0])
    expired["expires_at"] = "2020-01-01T00:00:00Z"
    data = canonical_json(expired)
    stamp.with_name("timestamp.json.sig").write_bytes(sign(feed["store"].timestamp_key()[1], data))
    stamp.write_bytes(data)
    fresh = _client(feed, "fresh-install", channel="stable").poll()
    assert (fresh["result"], fresh["refusal"]) == ("refused", "stale_feed")
    assert "expired at 2020-01-01T00:00:00Z" in fresh["message"]
    # a timestamp signed by the targets key (not the timestamp role) is refused too
    stamp.with_name("timestamp.json.sig").write_bytes(sign(feed["store"].signing_key()[1], data))
    fresh = _client(feed, "fresh-install-2", channel="stable").poll()
    assert (fresh["result"], fresh["refusal"]) == ("refused", "bad_signature")
    stamp.with_name("timestamp.json.sig").write_bytes(new_stamp[1])
    stamp.write_bytes(new_stamp[0])
    # with the real timestamp back, the fresh installation gets as far as v3's files (altered)
    restored = _client(feed, "fresh-install-3", channel="stable").poll()
    assert (restored["result"], restored["refusal"]) == ("refused", "hash_mismatch")
