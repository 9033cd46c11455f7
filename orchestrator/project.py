"""The project: where it is, and every path and environment variable edgeship reads.

An edgeship project is a folder whose ``conf/`` holds a ``deployment/`` folder (what
``edgeship init`` makes) or a ``config.yaml``. Every other module asks this one for the
project root and the folders under it, so the lookup order (environment variable, then
the default beside the project) is written once.

The built-in config groups (``conf/recipe``, ``conf/target``, ``conf/rollout`` and the
root ``conf/config.yaml`` of edgeship's repository) ship inside the package as
``orchestrator/builtin_conf/`` (copied there when the wheel is built); a source checkout
uses the repository's ``conf/`` itself. A project's own ``conf/`` adds options to them
and overrides a built-in option of the same name.

The project root is importable while edgeship works on it (:func:`importable`), so a
spec names the project's own Python (``mypkg.model:build``) without ``PYTHONPATH``.

| variable | default | what it is |
|---|---|---|
| ``EDGESHIP_ROOT`` | nearest folder upward that :func:`is_project` | the project |
| ``EDGESHIP_ARTIFACTS`` | ``<project>/artifacts`` | built artifacts, one folder per deployment |
| ``EDGESHIP_BUNDLES`` | beside the artifacts folder: ``bundles`` | signed bundles |
| ``EDGESHIP_ROLLOUTS`` | ``<project>/.edgeship/rollouts`` | rollout journals and locks |
| ``EDGESHIP_KEYS_DIR`` | ``~/.config/edgeship/keys`` | the signing key store, outside the project |
| ``EDGESHIP_KEY_PASSPHRASE`` | unset | passphrase of encrypted private keys |
| ``EDGESHIP_SIM_STATE`` | ``<project>/.edgeship/sim`` | the device simulator's state |
| ``EDGESHIP_TRT_CACHE`` | ``~/.cache/edgeship/tensorrt`` | engine cache of the TensorRT builder |
| ``EDGESHIP_TOOLENV_DIR`` | ``~/.cache/edgeship/toolenvs`` | tool environments (toolenv verb) |
| ``EDGESHIP_FULL_ERROR`` | unset | ``1``: print tracebacks (as ``-v``) |
| ``EDGESHIP_RAY_ADDRESS`` | unset | a Ray cluster ``edgeship build`` builds on (as ``--ray``) |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<project>/mlflow.db`` | MLflow tracking server or store |
"""

from __future__ import annotations

import importlib
import os
import sys
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
ENV_EVENTS_DB = "EDGESHIP_EVENTS_DB"
ENV_TOOLENV_DIR = "EDGESHIP_TOOLENV_DIR"
ENV_ALLOW_DIRTY = "EDGESHIP_ALLOW_DIRTY"  # "1": bundle dirty-tree builds (as --allow-dirty)
ENV_RAY_ADDRESS = "EDGESHIP_RAY_ADDRESS"  # a Ray cluster that `edgeship build` builds on

MARKER = Path("conf") / "config.yaml"
MARKER_DIR = Path("conf") / "deployment"
BUILTIN_GROUPS = ("recipe", "target", "rollout")  # config groups edgeship ships options of
BUILTIN_PACKAGE_DIR = "builtin_conf"  # orchestrator/<this>/ in a built wheel


def os_user() -> str:
    """The operating-system user running this process (who built, bundled, rolled out)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())


def is_project(folder: Path) -> bool:
    """Whether ``folder`` is an edgeship project: ``conf/deployment/`` or ``conf/config.yaml``."""
    return (folder / MARKER_DIR).is_dir() or (folder / MARKER).is_file()


def project_root(start: Path | None = None) -> Path:
    """``$EDGESHIP_ROOT``, else the nearest folder upward (from ``start`` or the working
    folder) that :func:`is_project`."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if is_project(candidate):
            return candidate
    raise SpecError(
        [
            Problem(
                str(here),
                "",
                "expected conf/deployment/ or conf/config.yaml here or in a parent folder, "
                "found neither",
            )
        ],
        title="not inside an edgeship project (run `edgeship init`, set EDGESHIP_ROOT "
        "or cd into one)",
    )


def builtin_conf_dir() -> Path:
    """The built-in config groups: ``orchestrator/builtin_conf`` in an installed wheel,
    the repository's ``conf/`` in a source checkout (or an editable install)."""
    package = Path(__file__).resolve().parent
    packaged = package / BUILTIN_PACKAGE_DIR
    return packaged if packaged.is_dir() else package.parent / "conf"


def importable(root: Path) -> None:
    """Put the project root first on ``sys.path``: specs name the project's own modules."""
    entry = str(root.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)
        importlib.invalidate_caches()


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


def toolenvs_dir() -> Path:
    """``$EDGESHIP_TOOLENV_DIR``, else ``~/.cache/edgeship/toolenvs``."""
    env = os.environ.get(ENV_TOOLENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeship" / "toolenvs"


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


def events_db_url(root: Path) -> str:
    """``$EDGESHIP_EVENTS_DB`` (a SQLAlchemy URL), else ``<project>/.edgeship/events.db``."""
    env = os.environ.get(ENV_EVENTS_DB)
    if env:
        return env
    (root / ".edgeship").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / '.edgeship' / 'events.db'}"
