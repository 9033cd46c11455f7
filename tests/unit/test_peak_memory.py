"""Peak memory of a measuring process counts that process only, not the build that started it.

On Linux ``ru_maxrss`` survives exec: a measurement process started by a build holding
hundreds of megabytes would report the build's peak as the artifact's cost."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

CHILD = (
    "import json, resource\n"
    "from orchestrator.device.agent.generate import peak_rss_mb\n"
    "print(json.dumps({'peak': peak_rss_mb(),"
    " 'ru_maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))\n"
)


def test_a_child_of_a_large_process_reports_its_own_peak() -> None:
    held = np.ones(400 << 20, dtype=np.uint8)  # 400 MB resident in this (the parent) process
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    import json

    figures = json.loads(out)
    assert held.sum() == held.size
    # the child (an interpreter importing one small module) is far below the parent's 400 MB
    assert figures["peak"] < 150, figures
    if sys.platform.startswith("linux"):
        assert figures["ru_maxrss"] > 400, figures  # what the old figure would have said
