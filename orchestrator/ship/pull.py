"""Rollouts to fleets that pull: publish each wave into the signed repository, watch reports.

A fleet with a ``pull:`` section has devices that only make outgoing connections
(``edgeship-agent pull``, orchestrator/device/agent/pull.py). The orchestrator
never connects to them. Instead it publishes the fleet's rollout document
``fleets/<fleet>/rollout.json`` as a TUF target of the bundles repository (new
targets, snapshot and timestamp metadata, signed with the online keys): the
bundle version, the waves of the same plan a push rollout makes (canary, waves,
selectors, target family) and how many waves are open. Devices of an open wave
install the version, health-check it (rolling back on their own when it fails)
and report. A wave is done when every device of it has reported (or its timeout
passed: a silent device counts as a failure). Within the failure budget the next
wave opens; beyond it the rollout halts by publishing the document again with
``halted`` (and ``rollback`` to the version the fleet ran before, when the
strategy says ``on_failure: rollback``): devices of waves not yet opened never
download anything, and devices that took the new version switch back.

Reports arrive over HTTP at the fleet's ``pull.reports_listen`` (a
:class:`ReportReceiver`, which this rollout runs for its duration; put a TLS
proxy in front for HTTPS) and are kept, one JSON line each, in
``.edgeship/rollouts/pull/<fleet>/reports.jsonl``; the rollout's own events go to
``.edgeship/rollouts/pull/<fleet>/<rollout id>.jsonl``.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from orchestrator.device.agent.pull import DONE as FINAL
from orchestrator.device.agent.pull import ROLLOUT_KIND, rollout_target
from orchestrator.errors import Problem, SpecError
from orchestrator.project import rollouts_dir
from orchestrator.ship.deploy import require_approval
from orchestrator.ship.rollout.plan import Plan, Selection, plan_rollout
from orchestrator.spec.fleet import FleetConfig
from orchestrator.spec.strategy import RolloutConfig
from registry.bundle import Bundle, bundles_root
from registry.keys import KeyStore
from registry.repository import Repository

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 64 * 1024
FAILED = ("failed", "refused")


def pull_dir(root: Path, fleet: str) -> Path:
    """A pull fleet's reports and rollout events: ``<rollouts folder>/pull/<fleet>/``."""
    return rollouts_dir(root) / "pull" / fleet


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


class ReportReceiver:
    """Takes devices' JSON reports over HTTP POST; keeps the latest per device and a log."""

    def __init__(self, listen: str, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "reports.jsonl"
        self.latest: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_REPORT_BYTES:
                    self.send_error(413 if length else 411)
                    return
                try:
                    report = json.loads(self.rfile.read(length))
                except ValueError:
                    self.send_error(400, "expected a JSON object")
                    return
                if not isinstance(report, dict) or not isinstance(report.get("device"), str):
                    self.send_error(400, "expected a JSON object with a device name")
                    return
                receiver.take(report)
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                body = json.dumps(receiver.snapshot(), sort_keys=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(_split(listen), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None
        self._log = self.path.open("a", encoding="utf-8")

    def take(self, report: dict[str, Any]) -> None:
        report["received_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        with self.changed:
            self._log.write(json.dumps(report, sort_keys=True) + "\n")
            self._log.flush()
            self.latest[report["device"]] = report
            self.count += 1
            self.changed.notify_all()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.changed:
            return dict(self.latest)

    def wait(self, done: Callable[[dict[str, dict[str, Any]]], bool], timeout: float) -> bool:
        """Wait until ``done(latest reports)`` holds; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.latest):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
            return True

    def start(self) -> ReportReceiver:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._log.close()


@dataclass
class PullWave:
    name: str
    devices: list[str]
    opened_at: float = 0.0
    seconds: float = 0.0
    healthy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # device -> reason
    silent: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": len(self.devices),
            "seconds": round(self.seconds, 2),
            "healthy": len(self.healthy),
            "failed": self.failed,
            "silent": self.silent,
        }


@dataclass
class PullReport:
    id: str
    fleet: str
    deployment: str
    version: int
    previous: int | None
    status: str = "running"  # completed | halted
    waves: list[PullWave] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    not_rolled_back: list[str] = field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fleet": self.fleet,
            "deployment": self.deployment,
            "version": self.version,
            "previous": self.previous,
            "status": self.status,
            "reason": self.reason,
            "waves": [w.to_json() for w in self.waves],
            "rolled_back": len(self.rolled_back),
            "not_rolled_back": self.not_rolled_back,
        }


def latest_reports(root: Path, fleet: str) -> dict[str, dict[str, Any]]:
    """Device -> its latest report kept by the rollouts' report receivers."""
    path = pull_dir(root, fleet) / "reports.jsonl"
    out: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                report = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if isinstance(report, dict) and isinstance(report.get("device"), str):
                out[report["device"]] = report
    return out


def published_rollout(root: Path, fleet: str) -> dict[str, Any] | None:
    path = bundles_root(root) / rollout_target(fleet)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else None


def fleet_version(doc: dict[str, Any] | None) -> int | None:
    """The version a fleet runs after the rollout ``doc`` (None: none known)."""
    if doc is None:
        return None
    if doc.get("completed"):
        return int(doc["version"])
    return doc.get("previous") if isinstance(doc.get("previous"), int) else None


class PullRollout:
    """One rollout to a pull fleet; :meth:`run` publishes wave after wave and watches."""

    def __init__(
        self,
        root: Path,
        fleet: FleetConfig,
        bundle: Bundle,
        strategy: RolloutConfig,
        store: KeyStore,
        plan: Plan,
        receiver: ReportReceiver,
        listeners: list[Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        if fleet.pull is None:
            raise SpecError([Problem("command line", "fleet", f"{fleet.name} has no `pull:`")])
        self.root = root
        self.fleet = fleet
        self.pull = fleet.pull
        self.bundle = bundle
        self.strategy = strategy
        self.plan = plan
        self.receiver = receiver
        self.listeners = listeners or []
        self.repo = Repository(bundles_root(root), store)
        m = bundle.manifest
        previous = fleet_version(published_rollout(root, fleet.name))
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.report = PullReport(
            id=f"{stamp}-{m['deployment']}-v{m['version']}",
            fleet=fleet.name,
            deployment=str(m["deployment"]),
            version=int(m["version"]),
            previous=previous if previous != int(m["version"]) else None,
        )
        self.doc: dict[str, Any] = {
            "_type": ROLLOUT_KIND,
            "id": self.report.id,
            "fleet": fleet.name,
            "deployment": self.report.deployment,
            "version": self.report.version,
            "previous": self.report.previous,
            "waves": [{"name": w.name, "devices": list(w.devices)} for w in plan.waves],
            "open_waves": 0,
            "halted": False,
            "rollback": False,
            "completed": False,
        }
        folder = pull_dir(root, fleet.name)
        folder.mkdir(parents=True, exist_ok=True)
        self.journal = (folder / f"{self.report.id}.jsonl").open("a", encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> None:
        e = {"event": event, "at": datetime.now(UTC).isoformat(timespec="seconds"), **fields}
        self.journal.write(json.dumps(e, sort_keys=True) + "\n")
        self.journal.flush()
        for listener in self.listeners:
            listener(e)

    def publish(self) -> int:
        self.doc["published_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        data = json.dumps(self.doc, sort_keys=True, indent=1).encode()
        version = self.repo.publish_document(rollout_target(self.fleet.name), data)
        self.emit(
            "published",
            timestamp_version=version,
            open_waves=self.doc["open_waves"],
            halted=self.doc["halted"],
            rollback=self.doc["rollback"],
        )
        return version

    def _mine(self, reports: dict[str, dict[str, Any]], device: str) -> dict[str, Any] | None:
        r = reports.get(device)
        return r if r is not None and r.get("rollout") == self.report.id else None

    def _wave_done(self, devices: list[str]) -> Callable[[dict[str, dict[str, Any]]], bool]:
        def done(reports: dict[str, dict[str, Any]]) -> bool:
            for d in devices:
                r = self._mine(reports, d)
                if r is None or r.get("result") not in FINAL or r.get("desired") is None:
                    return False
            return True

        return done

    def run(self) -> PullReport:
        try:
            return self._run()
        finally:
            self.journal.close()

    def _run(self) -> PullReport:
        r = self.report
        self.emit("rollout_started", id=r.id, version=r.version, previous=r.previous,
                  waves=[len(w.devices) for w in self.plan.waves])  # fmt: skip
        for i, planned in enumerate(self.plan.waves):
            wave = PullWave(planned.name, list(planned.devices))
            r.waves.append(wave)
            self.doc["open_waves"] = i + 1
            wave.opened_at = time.monotonic()
            self.publish()
            self.emit("wave_started", wave=wave.name, devices=len(wave.devices))
            self.receiver.wait(self._wave_done(wave.devices), self.pull.wave_timeout_seconds)
            wave.seconds = time.monotonic() - wave.opened_at
            reports = self.receiver.snapshot()
            for d in wave.devices:
                rep = self._mine(reports, d)
                if rep is None or rep.get("result") not in FINAL:
                    wave.silent.append(d)
                elif rep["result"] in FAILED or rep.get("running") != r.version:
                    wave.failed[d] = str(rep.get("reason") or rep.get("result"))
                else:
                    wave.healthy.append(d)
            failures = len(wave.failed) + len(wave.silent)
            self.emit("wave_done", **wave.to_json())
            if failures > planned.allowed_failures:
                allowed = planned.allowed_failures
                why = f"wave {wave.name}: {failures} failed or silent (allowed {allowed})"
                return self._halt(why)
            if planned.soak_seconds and i + 1 < len(self.plan.waves):
                time.sleep(planned.soak_seconds)
        self.doc["completed"] = True
        self.publish()
        r.status = "completed"
        self.emit("rollout_finished", status=r.status)
        return r

    def _halt(self, reason: str) -> PullReport:
        r = self.report
        r.status, r.reason = "halted", reason
        back = self.strategy.on_failure == "rollback" and r.previous is not None
        self.doc["halted"], self.doc["rollback"] = True, back
        self.publish()
        self.emit("rollout_halted", reason=reason, rollback=back)
        if back:
            opened = [d for w in r.waves for d in w.devices]

            def back_done(reports: dict[str, dict[str, Any]]) -> bool:
                for d in opened:
                    rep = self._mine(reports, d)
                    if rep is None or rep.get("running") == r.version:
                        return False
                return True

            self.receiver.wait(back_done, self.pull.wave_timeout_seconds)
            reports = self.receiver.snapshot()
            for d in opened:
                rep = self._mine(reports, d)
                if rep is not None and rep.get("running") != r.version:
                    r.rolled_back.append(d)
                else:
                    r.not_rolled_back.append(d)
        self.emit("rollout_finished", status=r.status, rolled_back=len(r.rolled_back))
        return r


def pull_rollout(
    root: Path,
    fleet: FleetConfig,
    bundle: Bundle,
    strategy: RolloutConfig,
    source: str,
    selection: Selection | None,
    store: KeyStore,
    listeners: list[Callable[[dict[str, Any]], None]] | None = None,
    receiver: ReportReceiver | None = None,
    record: bool = True,
) -> PullReport:
    """Roll ``bundle`` out to the pull fleet ``fleet`` (see the module's text)."""
    require_approval(fleet, bundle, store)  # before anything is published
    if fleet.pull is None:
        raise SpecError([Problem("command line", "fleet", f"{fleet.name} has no `pull:` section")])
    published = bundles_root(root) / bundle.manifest["deployment"] / str(bundle.manifest["version"])
    if bundle.path.resolve() != published.resolve():
        raise SpecError(
            [
                Problem(
                    "command line",
                    "deployment",
                    f"the bundle {bundle.path} is not in the repository the fleet pulls from "
                    f"({bundles_root(root)})",
                )
            ]
        )
    family = str((bundle.manifest.get("target") or {}).get("family"))
    plan = plan_rollout(fleet, strategy, family, selection, source)
    whole = selection is None or selection.empty()
    own = receiver is None
    receiver = (
        receiver or ReportReceiver(fleet.pull.reports_listen, pull_dir(root, fleet.name)).start()
    )
    try:
        report = PullRollout(root, fleet, bundle, strategy, store, plan, receiver, listeners).run()
    finally:
        if own:
            receiver.stop()
    if record:
        record_in_mlflow(root, fleet, bundle, report, whole)
    return report


def record_in_mlflow(
    root: Path, fleet: FleetConfig, bundle: Bundle, report: PullReport, whole: bool
) -> None:
    """As a pushed rollout does: the model version is tagged with the rollout's outcome; a
    completed rollout of the whole fleet moves the fleet's alias to it, a halted one withdraws
    the candidate alias. Nothing when the bundle came from no registered model version."""
    from registry.tracking import CANDIDATE_ALIAS, Tracker, TrackingError

    source = (bundle.manifest.get("provenance") or {}).get("mlflow") or {}
    name, version = source.get("model_name"), source.get("model_version")
    if not (name and version):
        return
    tracker = Tracker(root)
    try:
        tracker.tag_version(
            str(name),
            str(version),
            {
                f"edgeship.rollout.{fleet.name}": report.status,
                f"edgeship.rollout.{fleet.name}.id": report.id,
                "edgeship.bundle.version": str(report.version),
            },
        )
        if report.status == "completed" and whole:
            tracker.promote(str(name), str(version), fleet.alias)
        elif report.status != "completed":
            tracker.withdraw_alias(str(name), CANDIDATE_ALIAS, str(version))
    except TrackingError as exc:
        report.reason = (report.reason + "; " if report.reason else "") + f"MLflow: {exc}"


SERVICE = "edgeship-agent-pull"


def pull_package(fleet: FleetConfig, store: KeyStore, out: Path) -> list[Path]:
    """What a device of the pull fleet ``fleet`` needs, in ``out``: the agent, the root of
    trust, and ``install.sh NAME`` (run as root on the device) that creates the agent user,
    installs the agent under ``$EDGESHIP_ROOT`` (default /opt/edgeship), enrols it and
    starts the polling service (systemd, when the device has it)."""
    from orchestrator.device.agent import AGENT_FILE, WRAPPER, agent_source
    from orchestrator.ship.agent_user import prepare_script

    if fleet.pull is None:
        raise SpecError([Problem("command line", "fleet", f"{fleet.name} has no `pull:` section")])
    out.mkdir(parents=True, exist_ok=True)
    d = fleet.defaults
    files = {
        AGENT_FILE: agent_source(),
        "root.json": store.trust_files(),
        "prepare.py": prepare_script().encode(),
        "install.sh": _install_script(fleet, d.family, d.agent_user, d.python).encode(),
        f"{SERVICE}.service": _service_unit(fleet).encode(),
    }
    written = []
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        path.chmod(0o755 if name.endswith((".sh", ".pyz")) else 0o644)
        written.append(path)
    del WRAPPER
    return written


def _service_unit(fleet: FleetConfig) -> str:
    assert fleet.pull is not None
    p = fleet.pull
    return (
        f"# edgeship pull agent of fleet {fleet.name} (written by edgeship enroll --pull-package)\n"
        "[Unit]\nDescription=edgeship device agent (pull mode)\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart=/opt/edgeship/bin/edgeship-agent pull --repository {p.base_url} "
        f"--reports {p.reports_url} --interval {p.poll_seconds:g}\n"
        "Restart=always\nRestartSec=30\n\n[Install]\nWantedBy=multi-user.target\n"
    )


_INSTALL = r"""#!/bin/sh
# Install the edgeship agent on a device of pull fleet @FLEET@; run as root:
#   sh install.sh DEVICE_NAME [FAMILY]
# EDGESHIP_ROOT (default /opt/edgeship), EDGESHIP_PYTHON (default @PYTHON@) and
# EDGESHIP_AGENT_USER (default @USER@) change where, with which Python and as whom;
# EDGESHIP_NO_SERVICE=1 installs no systemd service.
set -eu
name="${1:?usage: sh install.sh DEVICE_NAME [FAMILY]}"
family="${2:-@FAMILY@}"
here="$(cd "$(dirname "$0")" && pwd)"
root="${EDGESHIP_ROOT:-/opt/edgeship}"
python="${EDGESHIP_PYTHON:-@PYTHON@}"
user="${EDGESHIP_AGENT_USER:-@USER@}"
mkdir -p "$root"
"$python" "$here/prepare.py" "{\"root\": \"$root\", \"user\": \"$user\"}" >/dev/null
install -m 0755 "$here/edgeship_agent.pyz" "$root/bin/.edgeship_agent.pyz.new"
mv "$root/bin/.edgeship_agent.pyz.new" "$root/bin/edgeship_agent.pyz"
printf '#!/bin/sh\n# edgeship device agent (pull fleet @FLEET@); only root may change this file\n' \
  > "$root/bin/.edgeship-agent.new"
printf 'exec "%s" "%s" --root "%s" --user "%s" "$@"\n' \
  "$python" "$root/bin/edgeship_agent.pyz" "$root" "$user" >> "$root/bin/.edgeship-agent.new"
chmod 0755 "$root/bin/.edgeship-agent.new"
mv "$root/bin/.edgeship-agent.new" "$root/bin/edgeship-agent"
install -m 0644 "$here/root.json" "$root/staging/root.json"
chown "$user" "$root/staging/root.json"
"$root/bin/edgeship-agent" init --name "$name" --family "$family" \
  --trust "$root/staging/root.json" --fleet @FLEET@
if [ -z "${EDGESHIP_NO_SERVICE:-}" ] && command -v systemctl >/dev/null 2>&1; then
  sed "s#/opt/edgeship#$root#" "$here/@SERVICE@.service" > /etc/systemd/system/@SERVICE@.service
  systemctl daemon-reload
  systemctl enable --now @SERVICE@
  echo "$name: enrolled in pull fleet @FLEET@; service @SERVICE@ polls @BASE@"
else
  echo "$name: enrolled in pull fleet @FLEET@; poll with:"
  echo "  $root/bin/edgeship-agent pull --repository @BASE@ --reports @REPORTS@ --interval @POLL@"
fi
"""


def _install_script(fleet: FleetConfig, family: str, user: str, python: str) -> str:
    assert fleet.pull is not None
    p = fleet.pull
    values = {
        "@FLEET@": fleet.name,
        "@FAMILY@": family,
        "@USER@": user,
        "@PYTHON@": python,
        "@SERVICE@": SERVICE,
        "@BASE@": p.base_url,
        "@REPORTS@": p.reports_url,
        "@POLL@": f"{p.poll_seconds:g}",
    }
    text = _INSTALL
    for key, value in values.items():
        text = text.replace(key, shlex.quote(value) if key != "@SERVICE@" else value)
    return text
