"""A Python with numpy and onnxruntime that an unprivileged agent user can run."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# run as nobody: can it import what the agent and its health check need?
PROBE = (
    "import os; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
    "import _strptime, tarfile, numpy, onnxruntime; os.stat(os.__file__)"
)


def unprivileged_python(base: Path) -> str | None:
    """This environment's own interpreter when others can run it; else the system's
    interpreter of the same version with this environment's packages (a small shim written
    into ``base``, a folder others can read); None when neither works."""
    if subprocess.run([sys.executable, "-c", PROBE], capture_output=True).returncode == 0:
        return sys.executable
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    packages = sysconfig.get_paths()["purelib"]
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.access(candidate, os.X_OK):
            continue
        env = {"PYTHONPATH": packages}
        if subprocess.run([candidate, "-c", PROBE], capture_output=True, env=env).returncode == 0:
            shim = base / "python"
            shim.write_text(
                "#!/bin/sh\n"
                f'PYTHONPATH={packages}${{PYTHONPATH:+:$PYTHONPATH}} exec {candidate} "$@"\n'
            )
            shim.chmod(0o755)
            return str(shim)
    return None
