"""``edgeship segment``: a built deployment's whole-volume pipeline on a volume file.

The artifact runs through the device runner of its runtime with the pipeline its
runtime.json carries (orchestrator/device/agent/segment.py), as a device would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestrator.errors import BuildError, EdgeshipError
from orchestrator.project import artifacts_root, project_root


def artifact_folder(name: str) -> Path:
    """A deployment's artifact folder by deployment name, or a folder holding runtime.json."""
    path = Path(name)
    if (path / "runtime.json").is_file():
        return path
    folder = artifacts_root(project_root()) / name
    if not (folder / "runtime.json").is_file():
        raise EdgeshipError(
            f"error: no built artifact for '{name}' ({folder}/runtime.json not found); "
            f"run: edgeship build deployment={name}"
        )
    return folder


def cmd_segment(args: argparse.Namespace) -> int:
    from orchestrator.device.agent.runners import RunnerError
    from orchestrator.device.agent.segment import segment_file

    folder = artifact_folder(args.deployment)
    try:
        result = segment_file(str(folder), str(args.source), str(args.dest))
    except RunnerError as exc:
        raise BuildError(f"error: {folder}: {exc}") from exc
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    info = result["pipeline"]
    print(
        f"{result['output']}: {result['deployment']} on {result['input']} "
        f"{'x'.join(map(str, result['shape']))}, {info['windows']} windows "
        f"({info['skipped']} skipped), {info['total_s']:.2f}s with "
        f"{result['runtime']['name']} {result['runtime']['version']}"
    )
    for label, count in result["voxels"].items():
        print(f"  {label:<16} {count:>10} voxels")
    return 0


def register(sub: Any) -> None:
    """Add ``segment`` to the ``edgeship`` parser."""
    p = sub.add_parser("segment", help="a built deployment's pipeline on a volume (NIfTI in, out)")
    p.add_argument("deployment", help="deployment name (artifacts/<name>/) or an artifact folder")
    p.add_argument("source", type=Path, help="volume: .nii, .nii.gz, .npz (volume, spacing), .npy")
    p.add_argument("dest", type=Path, help="label map: .nii.gz (the input's affine), .npz, .npy")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_segment)
