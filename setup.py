"""Build step setuptools' declarative config cannot express: the built-in config groups.

The repository keeps edgeship's built-in recipes, targets and rollout strategies (and the
root ``config.yaml``) under the top-level ``conf/``, which is also this repository's own
project config. A built wheel carries them inside the package, as
``orchestrator/builtin_conf/`` (``orchestrator.project.builtin_conf_dir``); a source
checkout or an editable install reads ``conf/`` directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUILTIN = ["config.yaml", "recipe", "target", "rollout"]  # orchestrator.project.BUILTIN_GROUPS


class BuildPyWithBuiltinConf(build_py):
    """``build_py``, then ``conf/<BUILTIN>`` -> ``<build>/orchestrator/builtin_conf/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "orchestrator" / "builtin_conf"
        shutil.rmtree(dest, ignore_errors=True)
        for name in BUILTIN:
            src = HERE / "conf" / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("*.pyc"))
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": BuildPyWithBuiltinConf})
