"""The TypeScript client's npm tooling for tests: npm itself, and its dependencies installed
as CI installs them (`npm ci --ignore-scripts`: onnxruntime-node's CPU build)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "react-native"


def npm_or_skip() -> str:
    """Path of npm; fails in CI and skips elsewhere when it is missing."""
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("npm is not installed (install Node.js 20 or later)", pytrace=False)
        pytest.skip("npm is not installed: install Node.js 20 or later (the TypeScript client)")
    return npm


def npm_ci(npm: str, env: dict[str, str] | None = None) -> None:
    """``npm ci --ignore-scripts`` in the client folder (from its package-lock.json)."""
    install = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr
