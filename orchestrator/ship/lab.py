"""Lab devices: measure a build's candidate on the target hardware (``validate_on=lab``).

A fleet marks devices ``lab: true``. When a deployment validates on a lab device, the
build hands each candidate folder (runtime.json, the model files and ``measure/``: the
evaluation inputs and the latency plan) to :class:`LabMeasurer`, which

1. signs it as a measurement candidate (``edgeship.measure``: no version, no ledger
   entry, refused by activation) with the key store's online key, and checks it as a
   deploy checks a bundle before anything leaves this host;
2. connects to the lab device (host key pinned at enrolment), brings its root of trust
   up to date, and stages the candidate as a deploy stages a bundle (the agent judges
   the signed manifest before any file travels; files it already holds are copied there);
3. runs ``edgeship-agent measure``: the agent verifies it as activation would, runs it
   in a scratch folder with the device's runtime and settings, reports latency and
   where it ran, and writes the evaluation outputs, which are fetched back over SFTP
   (checked against the hash the agent reported) and then removed from the device.

Nothing installed on the device changes: ``current``, ``previous``, installed versions
and state.json stay as they were.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import LabMeasurementError
from orchestrator.ship.deploy import DeployOptions, bundle_problems, stage_bundle
from orchestrator.ship.enroll import agent_status, sync_trust
from orchestrator.ship.results import DeviceDone, DeviceOutcome
from orchestrator.ship.ssh import CONNECT_TIMEOUT, connect
from orchestrator.spec.fleet import DeviceConfig, FleetConfig, find_lab_device
from registry.bundle import MEASURE_KIND, make_measure_bundle
from registry.keys import KeyStore

log = logging.getLogger(__name__)

MAX_OUTPUTS_BYTES = 4 * 1024**3  # the most a device's evaluation outputs may be


@dataclass
class LabMeasurer:
    """Measures candidate folders on one lab device of a fleet."""

    fleet: FleetConfig
    device: DeviceConfig
    store: KeyStore
    timeout: float = 1800.0  # seconds the agent allows the measurement
    connect_timeout: float = CONNECT_TIMEOUT

    @property
    def where(self) -> dict[str, str]:
        return {"device": self.device.name, "fleet": self.fleet.name}

    def __call__(self, candidate: Path, workdir: Path) -> dict[str, Any]:
        """Measure ``candidate`` on the device; the agent's answer plus ``outputs_npz``
        (the evaluation outputs, fetched into ``workdir``)."""
        bundle = make_measure_bundle(candidate, self.store, workdir / "signed")
        problems = bundle_problems(bundle, self.store, kinds=(MEASURE_KIND,))
        if problems:
            raise LabMeasurementError(
                f"error: the measurement candidate of {bundle.deployment} is refused before "
                "anything is sent: " + "; ".join(f"{m} ({c})" for c, m in problems)
            )
        name = self.device.name
        with connect(self.device, Path(self.fleet.known_hosts), self.connect_timeout) as session:
            status = agent_status(session, inventory=True)
            if status is None or not status.get("enrolled"):
                raise LabMeasurementError(
                    f"error: lab device {name} is not enrolled; run: edgeship enroll "
                    f"fleet={self.fleet.name} device={name}"
                )
            outcome = DeviceOutcome(name, self.device.address)
            try:
                sync_trust(session, self.store, outcome, status)
                folder = stage_bundle(
                    session, bundle, outcome, DeployOptions(), status.get("inventory") or {}
                )
            except DeviceDone:
                raise LabMeasurementError(
                    f"error: lab device {name} refused the measurement candidate of "
                    f"{bundle.deployment}: {outcome.message} ({outcome.refusal or outcome.result})"
                ) from None
            res = session.agent(
                f"measure {shlex.quote(folder)} --timeout {self.timeout:g}",
                timeout=self.timeout + 120,
            )
            answer = res.json_or_none()
            if answer is None or res.code != 0:
                said = (answer or {}).get("message") or (answer or {}).get("reason")
                raise LabMeasurementError(
                    f"error: lab device {name}: the measurement of {bundle.deployment} failed "
                    f"(agent exit {res.code}): "
                    + str(said or res.stderr.strip()[-500:] or "no answer")
                    + (f" ({answer.get('refusal')})" if answer and answer.get("refusal") else "")
                )
            local = workdir / "device_outputs.npz"
            self._fetch_outputs(session, answer, local)
        answer["outputs_npz"] = str(local)
        answer["fleet"] = self.fleet.name
        answer["bytes_sent"] = outcome.bytes_sent
        log.info(
            "measured %s on lab device %s: p50 %.3f ms",
            bundle.deployment,
            name,
            float((answer.get("metrics") or {}).get("p50_ms", float("nan"))),
        )
        return answer

    def _fetch_outputs(self, session: Any, answer: dict[str, Any], local: Path) -> None:
        info = answer.get("outputs") or {}
        remote = str(info.get("file") or "")
        staging = PurePosixPath(session.root, "staging")
        if PurePosixPath(remote).parent != staging or not remote.endswith(".outputs.npz"):
            raise LabMeasurementError(
                f"error: lab device {self.device.name} names its outputs at {remote!r}; "
                f"expected a file in {staging}"
            )
        try:
            size = int(info.get("size", -1))
            if not 0 <= size <= MAX_OUTPUTS_BYTES:
                raise LabMeasurementError(
                    f"error: lab device {self.device.name}: outputs of {size} bytes; expected "
                    f"0 to {MAX_OUTPUTS_BYTES}"
                )
            session.sftp().get(remote, str(local))
        finally:
            session.run_as_agent_user(f"rm -f -- {shlex.quote(remote)}", timeout=60)
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        if digest != info.get("sha256"):
            raise LabMeasurementError(
                f"error: lab device {self.device.name}: the outputs fetched from {remote} have "
                f"sha256 {digest}; the agent reported {info.get('sha256')}"
            )


def lab_measurer(
    root: Path, family: str, fleet_name: str, device_name: str, store: KeyStore, timeout: float
) -> LabMeasurer:
    """The measurer of a deployment's ``validate_on``: the lab device of ``family`` that
    :func:`orchestrator.spec.fleet.find_lab_device` names."""
    fleet, device = find_lab_device(root, family, fleet_name, device_name)
    return LabMeasurer(fleet, device, store, timeout=timeout)
