"""The project: where it is, and every path and environment variable edgeship reads.

An edgeship project is a folder holding ``conf/config.yaml``. Every other module
asks this one for the project root and the folders under it, so the lookup order
(environment variable, then the default beside the project) is written once.

| variable | default | what it is |
|---|---|---|
| ``EDGESHIP_ROOT`` | nearest folder upward with ``conf/config.yaml`` | the project |
| ``EDGESHIP_ARTIFACTS`` | ``<project>/artifacts`` | built artifacts, one folder per deployment |
| ``EDGESHIP_BUNDLES`` | beside the artifacts folder: ``bundles`` | signed bundles |
| ``EDGESHIP_ROLLOUTS`` | ``<project>/.edgeship/rollouts`` | rollout journals and locks |
| ``EDGESHIP_KEYS_DIR`` | ``~/.config/edgeship/keys`` | the signing key store, outside the project |
| ``EDGESHIP_KEY_PASSPHRASE`` | unset | passphrase of encrypted private keys |
| ``EDGESHIP_SIM_STATE`` | ``<project>/.edgeship/sim`` | the device simulator's state |
| ``EDGESHIP_TRT_CACHE`` | ``~/.cache/edgeship/tensorrt`` | engine cache of the TensorRT builder |
| ``EDGESHIP_FULL_ERROR`` | unset | ``1``: print tracebacks (as ``-v``) |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<project>/mlflow.db`` | MLflow tracking server or store |
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.errors import Problem, SpecError

ENV_ROOT = "EDGESHIP_ROOT"
ENV_ARTIFACTS = "EDGESHIP_ARTIFACTS"
ENV_BUNDLES = "EDGESHIP_BUNDLES"
ENV_ROLLOUTS = "EDGESHIP_ROLLOUTS"
ENV_KEYS_DIR = "EDGESHIP_KEYS_DIR"
ENV_KEY_PASSPHRASE = "EDGESHIP_KEY_PASSPHRASE"
ENV_SIM_STATE = "EDGESHIP_SIM_STATE"
ENV_FULL_ERROR = "EDGESHIP_FULL_ERROR"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"

MARKER = Path("conf") / "config.yaml"


def project_root(start: Path | None = None) -> Path:
    """``$EDGESHIP_ROOT``, else the nearest folder upward (from ``start`` or the working
    folder) holding ``conf/config.yaml``."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / MARKER).is_file():
            return candidate
    raise SpecError(
        [Problem(str(here), "", "no conf/config.yaml here or in any parent folder")],
        title="not inside an edgeship project (set EDGESHIP_ROOT or cd into one)",
    )


def conf_dir(root: Path) -> Path:
    """The project's Hydra config folder."""
    return root / "conf"


def artifacts_root(root: Path) -> Path:
    """``$EDGESHIP_ARTIFACTS``, else ``<project>/artifacts``."""
    return Path(os.environ.get(ENV_ARTIFACTS, root / "artifacts"))


def bundles_root(root: Path) -> Path:
    """``$EDGESHIP_BUNDLES``, else the ``bundles`` folder beside the artifacts folder."""
    env = os.environ.get(ENV_BUNDLES)
    return Path(env) if env else artifacts_root(root).parent / "bundles"


def rollouts_dir(root: Path) -> Path:
    """``$EDGESHIP_ROLLOUTS``, else ``<project>/.edgeship/rollouts``."""
    env = os.environ.get(ENV_ROLLOUTS)
    return Path(env) if env else root / ".edgeship" / "rollouts"


def keys_dir() -> Path:
    """``$EDGESHIP_KEYS_DIR``, else ``~/.config/edgeship/keys``."""
    env = os.environ.get(ENV_KEYS_DIR)
    return Path(env).expanduser() if env else Path.home() / ".config" / "edgeship" / "keys"


def key_passphrase() -> bytes | None:
    """``$EDGESHIP_KEY_PASSPHRASE`` as bytes, or None when unset or empty."""
    value = os.environ.get(ENV_KEY_PASSPHRASE)
    return value.encode() if value else None


def sim_state_dir() -> str | None:
    """``$EDGESHIP_SIM_STATE`` when set (the simulator's own default applies otherwise)."""
    return os.environ.get(ENV_SIM_STATE)


def full_errors() -> bool:
    """Whether ``$EDGESHIP_FULL_ERROR=1`` asks for tracebacks."""
    return os.environ.get(ENV_FULL_ERROR) == "1"


def tracking_uri(root: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else the SQLite store ``<project>/mlflow.db``."""
    return os.environ.get(ENV_TRACKING_URI) or f"sqlite:///{root / 'mlflow.db'}"
