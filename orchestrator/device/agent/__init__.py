"""The device agent: a package of standard-library modules, shipped to devices as one zipapp.

The modules beside this file run ON THE DEVICE (Python 3.8+, standard library
only, relative imports only); ``python -m orchestrator.device.agent`` runs them
from a checkout. Edgeship itself never imports them: it imports this file, whose
:func:`agent_source` builds them into ``edgeship_agent.pyz`` (:data:`AGENT_FILE`)
and whose :func:`wrapper_script` gives enrolment the ``edgeship-agent`` wrapper
that runs it with the device's Python and install root.

Inside the zipapp the package is ``edgeship_agent/`` beside a ``__main__.py``
that calls its :func:`main`; this file is replaced there by a bare ``__init__.py``
(the builder stays with edgeship). The bytes are deterministic: entries sorted,
fixed timestamps and modes, stored uncompressed (no dependence on the zlib build).
"""

from __future__ import annotations

import io
import pkgutil
import shlex
import zipapp
import zipfile

AGENT_FILE = "edgeship_agent.pyz"
WRAPPER = "edgeship-agent"
PACKAGE = "edgeship_agent"  # the package's name inside the zipapp
INTERPRETER = "/usr/bin/env python3"  # the wrapper names the device's Python anyway
_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can say: no build time inside
_MAIN = (
    "# edgeship device agent, built by edgeship at enrolment: python3 edgeship_agent.pyz --help\n"
    "import sys\n"
    "\n"
    f"from {PACKAGE}.__main__ import main\n"
    "\n"
    "sys.exit(main())\n"
)
_INIT = '"""edgeship device agent (see __main__.py); built into a zipapp by edgeship."""\n'


def agent_files() -> dict[str, bytes]:
    """Zipapp entry name -> bytes: the top-level ``__main__.py`` and the agent package."""
    files = {"__main__.py": _MAIN.encode(), f"{PACKAGE}/__init__.py": _INIT.encode()}
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            raise RuntimeError(f"the agent package is flat; {module.name} is a package")
        data = pkgutil.get_data(__name__, module.name + ".py")
        if data is None:
            raise RuntimeError(f"cannot read the agent module {module.name}")
        files[f"{PACKAGE}/{module.name}.py"] = data
    return files


def agent_source() -> bytes:
    """The agent as one zipapp's bytes (``edgeship_agent.pyz``), the same for the same sources."""
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w", zipfile.ZIP_STORED) as archive:
        for name, data in sorted(agent_files().items()):
            info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.create_system = 3  # Unix, whatever builds it
            archive.writestr(info, data)
    body.seek(0)
    out = io.BytesIO()
    zipapp.create_archive(body, out, interpreter=INTERPRETER)  # the shebang line, then the zip
    return out.getvalue()


def wrapper_script(python: str, install_root: str, user: str | None = None) -> str:
    """``<root>/bin/edgeship-agent``: runs the agent with the device's Python and root.

    ``user`` is the agent user: started as root, the agent drops to it before anything
    else (and refuses to run as root without it). The wrapper is root-owned where
    enrolment logs in as root, so only root can change whom the agent runs as.
    """
    agent = f"{install_root.rstrip('/')}/bin/{AGENT_FILE}"
    as_user = f" --user {shlex.quote(user)}" if user else ""
    return (
        "#!/bin/sh\n"
        "# edgeship device agent (installed by `edgeship enroll`)\n"
        f"# runs as {user or 'its caller'}; only root may change this file\n"
        f"exec {shlex.quote(python)} {shlex.quote(agent)} --root {shlex.quote(install_root)}"
        f'{as_user} "$@"\n'
    )
