"""Where a build came from: git commit, dirty tree, versions of the tools."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(root: Path) -> dict[str, Any]:
    """The commit of the project tree and whether it had uncommitted changes."""
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit or "unknown",
        "dirty": bool(status) if status is not None else None,
        "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD") or "unknown",
    }


def package_versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "packages": package_versions(
            "edgeship", "torch", "onnx", "onnxruntime", "openvino", "nncf", "mlflow"
        ),
    }
