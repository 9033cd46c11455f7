"""Phone clients agree: the Python reference client and the TypeScript client (React Native)
give the same report on every shared feed fixture (``make_phone_fixtures.py``).

The fixtures are generated once per session from a real posture_phone build, published with
``edgeship publish`` and served by a real HTTP server on loopback. The TypeScript side runs
as ``npm ci --ignore-scripts`` then ``npm test`` in ``clients/react-native`` (its ``.ort``
smoke tests in ``onnxruntime-node``), reading the same fixtures folder.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.device.phone_client import PhoneClient, UpdateRefused
from tests.conformance.make_phone_fixtures import generate
from tests.npm import npm_ci, npm_or_skip
from tests.sshd import require_sshd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "react-native"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory, built_phone_artifact: Path) -> Path:
    """The shared fixtures folder (feeds/, trust/, cases.json), generated from a real build."""
    require_sshd()
    out = tmp_path_factory.mktemp("phone-conformance") / "fixtures"
    generate(built_phone_artifact, out)
    return out


@pytest.fixture(scope="module")
def served(fixtures: Path) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(fixtures))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def _run_case(case: dict[str, Any], fixtures: Path, url: str, state: Path) -> list[dict[str, Any]]:
    """The reports of a case's polls, as ``{result, version, refusal}`` (and the message)."""
    got = []
    for poll in case["polls"]:
        try:
            client = PhoneClient(
                url + poll["feed"],
                case["channel"],
                state,
                case["family"],
                trust_file=fixtures / case["trust"],
                install_id=case["install_id"],
            )
        except UpdateRefused as exc:
            got.append({"result": "refused", "version": None, "refusal": exc.code})
            continue
        report = client.poll()
        if report["result"] in ("activated", "rolled_back"):
            assert report["health"]["result"] == "pass", report
        got.append(
            {
                "result": report["result"],
                "version": report.get("version"),
                "refusal": report.get("refusal"),
            }
        )
    return got


def test_python_client_gives_every_fixture_its_verdict(
    fixtures: Path, served: str, tmp_path: Path
) -> None:
    cases = json.loads((fixtures / "cases.json").read_text())["cases"]
    assert len(cases) >= 25
    mismatches = []
    for case in cases:
        got = _run_case(case, fixtures, served, tmp_path / case["name"])
        want = [poll["expect"] for poll in case["polls"]]
        if got != want:
            mismatches.append(f"{case['name']}: expected {want}, found {got}")
    assert not mismatches, "\n".join(mismatches)


def test_typescript_client_gives_every_fixture_the_same_verdict(fixtures: Path) -> None:
    npm = npm_or_skip()
    env = dict(os.environ, EDGESHIP_PHONE_FIXTURES=str(fixtures))
    npm_ci(npm, env)
    proc = subprocess.run(
        [npm, "test"], cwd=CLIENT, capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    # every case ran (node's test runner prints one line per test)
    cases = json.loads((fixtures / "cases.json").read_text())["cases"]
    for case in cases:
        assert f"conformance: {case['name']}" in proc.stdout, proc.stdout[-5000:]
    assert "# fail 0" in proc.stdout and "# skipped 0" in proc.stdout, proc.stdout[-3000:]
