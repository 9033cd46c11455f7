"""Enrolment refuses a device whose Python the agent cannot run on (real sshd devices).

The device room runs on Python 3.8+ (``vermin -t=3.8-`` in ``make lint``). A device whose
interpreter is older, or missing, is refused at enrolment with a message naming the
device, the version found and the version needed; nothing of the agent is installed.
The old interpreter is a stand-in script answering the enrolment's version question as
Python 3.6 would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sshd import ShipLab, write_fleet

pytestmark = [pytest.mark.integration]

PYTHON36 = """#!/bin/sh
# answers `python -c 'import sys; print(...)'` as a Python 3.6.15 would
echo 3.6.15
"""


def _lab_with_python(tmp_path: Path, ssh_devices: list, python: str) -> ShipLab:
    lab = ShipLab(tmp_path / "lab", ssh_devices[:1], tmp_path / "no-artifact")
    write_fleet(
        lab.fleet_path,
        ssh_devices[:1],
        lab.roots,
        known_hosts=tmp_path / "lab" / "fleet" / "known_hosts",
        python=python,
    )
    return lab


def test_enrolment_refuses_a_python_older_than_the_agents_floor(
    tmp_path: Path, ssh_devices: list
) -> None:
    old = tmp_path / "python3.6"
    old.write_text(PYTHON36)
    old.chmod(0o755)
    lab = _lab_with_python(tmp_path, ssh_devices, str(old))
    (outcome,) = lab.enroll().outcomes
    name = ssh_devices[0].name
    assert outcome.result == "error"
    assert outcome.message == (
        f"device {name}: '{old}' is Python 3.6.15; the edgeship agent needs Python 3.8 or "
        f"newer (standard library only); install one or set python: in the fleet file "
        f"({name} or defaults) to a Python 3.8+"
    )
    assert not (lab.roots[name] / "bin" / "edgeship_agent.pyz").exists()


def test_enrolment_names_a_missing_interpreter(tmp_path: Path, ssh_devices: list) -> None:
    lab = _lab_with_python(tmp_path, ssh_devices, str(tmp_path / "nowhere" / "python3"))
    (outcome,) = lab.enroll().outcomes
    assert outcome.result == "error"
    assert "no Python at" in outcome.message and "needs Python 3.8 or newer" in outcome.message


def test_enrolment_takes_this_python(tmp_path: Path, ssh_devices: list) -> None:
    import sys

    lab = _lab_with_python(tmp_path, ssh_devices, sys.executable)
    (outcome,) = lab.enroll().outcomes
    assert outcome.result == "enrolled", outcome.message
