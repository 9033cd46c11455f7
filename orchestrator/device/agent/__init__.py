"""The device agent, shipped as package data and copied to ``<install root>/bin/`` at enrolment.

``edgeship_agent.py`` runs on devices with the standard library only; edgeship
never imports it (tests run it as a program). :func:`agent_source` and
:func:`wrapper_script` give enrolment what it uploads.
"""

from __future__ import annotations

import shlex
from importlib import resources

AGENT_FILE = "edgeship_agent.py"
WRAPPER = "edgeship-agent"


def agent_source() -> bytes:
    """The agent script's bytes."""
    return resources.files(__package__).joinpath(AGENT_FILE).read_bytes()


def wrapper_script(python: str, install_root: str) -> str:
    """``<root>/bin/edgeship-agent``: runs the agent with the device's Python and root."""
    agent = f"{install_root.rstrip('/')}/bin/{AGENT_FILE}"
    return (
        "#!/bin/sh\n"
        "# edgeship device agent (installed by `edgeship enroll`)\n"
        f'exec {shlex.quote(python)} {shlex.quote(agent)} --root {shlex.quote(install_root)} "$@"\n'
    )
