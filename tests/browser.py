"""Headless Chromium for tests: the rendered DOM of a page, and screenshots."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestrator.ship.audit import HEADLESS_FLAGS
from orchestrator.ship.audit import chromium as find_chromium

FLAGS = [
    *HEADLESS_FLAGS,
    "--disable-quic",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
]


def chromium() -> str:
    """Path of Debian's chromium; fails in CI and skips elsewhere when it is missing."""
    path = find_chromium()
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing; tools/system-deps.sh installs it with apt-get")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


def page_text(url: str) -> str:
    """The visible text of ``url`` after its scripts ran."""
    dom = _run(["--dump-dom", url]).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


def screenshot(url: str, out: Path) -> Path:
    """A PNG screenshot of ``url``."""
    _run([f"--screenshot={out}", url])
    return out
