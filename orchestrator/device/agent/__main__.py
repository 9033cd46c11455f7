"""edgeship device agent: verify, activate, health-check and roll back signed bundles.

This package runs ON THE DEVICE, built into one zipapp (``edgeship_agent.pyz``)
at enrolment. It needs only the Python standard library (3.8+), ``openssl`` and
``sha256sum``; the health check runs the bundle through the device runner of the
runtime its runtime.json names (runners.py: onnxruntime, onnxruntime_mobile, openvino,
tensorrt), which imports that runtime and numpy. It never imports edgeship.

Commands (JSON on stdout)::

    verify BUNDLE          check signature, key, hashes, family, version, expiry, runtime
                           (--manifest-only: all but the files, before uploading them)
    activate BUNDLE        verify, install, switch `current`, health check, roll back on failure
    health                 run the current bundle's smoke test with the device runtime
    measure CANDIDATE      lab devices: verify a signed measurement candidate (kind
                           edgeship.measure), run its evaluation inputs and a latency loop
                           in a scratch folder, report; nothing is installed or switched
    pull --repository URL  pull mode: poll the fleet's signed repository (TUF metadata), install
                           what its rollout document addresses to this device, report it
                           (--reports URL; --interval S polls forever, as a service)
    rollback [--to V]      switch `current` back to `previous` (or to installed version V)
    status                 what is installed and active, trust set, runtimes
    update-trust FILE      accept a new trust set signed by a trusted key with a higher serial
    init --name N --family F --trust FILE    enrolment (first trust set)
    inventory              sha256 -> path of every installed file (for deduplicated uploads)
    link --plan FILE       copy installed files into a staging folder (checked, never linked)
    sftp-server            OpenSSH's sftp-server as the agent user (uploads into staging/)
    as-agent-user CMD      a shell command as the agent user (the sender's checks of staged
                           files: sha256sum, removal of a refused upload)
    segment IN OUT         the current bundle's whole-volume pipeline on a volume (NIfTI with
                           nibabel, or .npy/.npz); the label map to OUT (NIfTI: input's affine)
    infer --inputs FILE    run the current bundle on every sample of an .npz; one prediction
                           event each into the outbox (runtime.json's events, docs/events.md)
    send                   publish the outbox to the MQTT broker (QoS 1; needs paho-mqtt)
    run --replay FILE      infer sample after sample and send as the network allows
    events                 the outbox: waiting, sent and dropped events

``--user NAME`` (set by the wrapper ``<root>/bin/edgeship-agent``) is the agent
user: started as root, the agent drops to it before anything else, and it
refuses to run as root without it (see privilege.py).

BUNDLE is a bundle folder or an exported bundle ``.tar``.

Exit codes::

    0   done (including "already installed": activation is idempotent)
    1   agent error (a tool missing, a file unreadable)
    2   usage error
    10  refused: nothing was changed; the JSON says why (``refusal``)
    11  health check failed (activate: rolled back to the previous version); measure: the
        candidate did not run (the JSON says why)
    12  health check failed and there is no previous version to go back to
    13  nothing to act on (not enrolled, no current or previous version)
    99  stopped on purpose at an activation step (EDGESHIP_AGENT_CRASH_AT, for tests)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys

from .agent import Agent
from .errors import (
    EXIT_ERROR,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    AgentError,
    Nothing,
    Refusal,
)
from .events import events_command
from .health import engine_cache, health_run
from .log import emit
from .measure import measure_run
from .privilege import enter, exec_sftp_server
from .pull import pull_command
from .rules import BUNDLE_KIND, MEASURE_KIND
from .runners import RunnerError
from .segment import segment_file


class _Once(argparse.Action):
    """An option that may be given once (the wrapper's --user cannot be overridden)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice (the wrapper sets it at enrolment)")
        setattr(namespace, self.dest, values)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeship-agent", description="edgeship device agent")
    p.add_argument("--root", default=os.environ.get("EDGESHIP_AGENT_ROOT", "/opt/edgeship"))
    p.add_argument("--user", action=_Once, default=None, help="the agent user (set by the wrapper)")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("verify", help="verify a bundle folder or exported .tar")
    s.add_argument("bundle")
    s.add_argument("--manifest-only", action="store_true", help="signature and policy, not files")
    s = sub.add_parser("activate", help="verify, install, switch, health-check")
    s.add_argument("bundle")
    s.add_argument("--timeout", type=float, default=300.0, help="health check timeout (seconds)")
    s = sub.add_parser("health", help="health check of the current version")
    s.add_argument("--timeout", type=float, default=300.0)
    s = sub.add_parser("measure", help="measure a signed candidate (lab devices); installs nothing")
    s.add_argument("bundle")
    s.add_argument("--timeout", type=float, default=1800.0, help="measurement timeout (seconds)")
    s = sub.add_parser("rollback", help="switch back to previous (or --to VERSION)")
    s.add_argument("--to", type=int, default=None)
    s = sub.add_parser("status", help="JSON status")
    s.add_argument(
        "--inventory", action="store_true", help="include sha256 -> path of installed files"
    )
    s = sub.add_parser("update-trust", help="install a newer trust set")
    s.add_argument("file")
    s.add_argument("--sig", default=None)
    s = sub.add_parser("init", help="enrolment")
    s.add_argument("--name", required=True)
    s.add_argument("--family", required=True)
    s.add_argument("--trust", required=True)
    s.add_argument("--fleet", default=None, help="the fleet this device belongs to")
    s.add_argument("--reset-trust", action="store_true")
    sub.add_parser("inventory", help="sha256 -> path of installed files")
    s = sub.add_parser("link", help="copy installed files into staging")
    s.add_argument("--plan", required=True)
    sub.add_parser("sftp-server", help="OpenSSH's sftp-server as the agent user")
    s = sub.add_parser("as-agent-user", help="a shell command as the agent user")
    s.add_argument("shell_command")
    s = sub.add_parser("segment", help="the current bundle's pipeline on a volume file")
    s.add_argument("source", help="volume: .nii, .nii.gz (nibabel), .npz (volume, spacing), .npy")
    s.add_argument("dest", help="label map: .nii/.nii.gz (the input's affine), .npz or .npy")
    s = sub.add_parser("infer", help="run the current bundle on an .npz; queue one event each")
    s.add_argument("--inputs", required=True, help=".npz of runtime.json's inputs, batch first")
    for name in ("send", "run"):
        s = sub.add_parser(name, help="publish the event outbox" if name == "send" else "replay")
        s.add_argument("--broker", default=None, metavar="HOST:PORT")
        s.add_argument("--username", default=None)
        s.add_argument("--password-file", default=None)
        s.add_argument("--ca-file", default=None, help="CA of the broker's TLS certificate")
        s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")
    s.add_argument("--replay", required=True, help=".npz whose samples are inferred in turn")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between inferences")
    s.add_argument("--drain", type=float, default=60.0, help="seconds to keep sending after")
    sub.add_parser("events", help="the event outbox: waiting, sent, dropped")
    s = sub.add_parser("pull", help="poll the fleet's signed repository; install, report")
    s.add_argument("--repository", required=True, help="URL of the bundles repository")
    s.add_argument("--reports", default=None, help="URL that takes this device's reports")
    s.add_argument("--interval", type=float, default=0.0, help="poll every N s (0: once)")
    s.add_argument("--timeout", type=float, default=300.0, help="health check timeout (seconds)")
    s.add_argument("--http-timeout", type=float, default=30.0, help="seconds per request")
    s = sub.add_parser("health-run", help=argparse.SUPPRESS)
    s.add_argument("folder")
    s = sub.add_parser("measure-run", help=argparse.SUPPRESS)
    s.add_argument("folder")
    s.add_argument("out")
    return p


def main(argv: list | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.command:
        parser().print_usage(sys.stderr)
        return EXIT_USAGE
    try:
        user = enter(args.user, args.root)  # before anything reads the install root
        if args.command == "sftp-server":
            exec_sftp_server()
        if args.command == "as-agent-user":  # never with root's rights on the agent's folders
            sys.stdout.flush()
            os.execv("/bin/sh", ["/bin/sh", "-c", args.shell_command])
    except (AgentError, OSError) as exc:
        emit({"result": "error", "message": f"{exc}"})
        return EXIT_ERROR
    agent = Agent(args.root)
    agent.command = args.command
    agent.user = user
    if args.command == "init":
        os.makedirs(agent.root, exist_ok=True)
    if args.command in (
        "activate",
        "rollback",
        "health",
        "update-trust",
        "init",
        "link",
        "measure",
    ):
        agent.lock(wait=True)
    elif args.command in ("status", "verify", "inventory"):
        agent.lock(wait=False)  # busy: answer without repairing anything
    try:
        if args.command == "health-run":
            try:
                result = health_run(args.folder, agent.root)
            except Exception as exc:  # the runtime refused the model: report it as the reason
                result = {"result": "fail", "reason": f"{type(exc).__name__}: {exc}"}
            emit(result)
            return EXIT_OK if result["result"] == "pass" else EXIT_UNHEALTHY
        if args.command == "measure-run":
            try:
                result = measure_run(args.folder, args.out, agent.root)
            except Exception as exc:  # the runtime refused the model: report it as the reason
                result = {"result": "fail", "reason": f"{type(exc).__name__}: {exc}"}
            emit(result)
            return EXIT_OK if result["result"] == "measured" else EXIT_UNHEALTHY
        if args.command == "measure":
            result = agent.measure(args.bundle, args.timeout)
            emit(result)
            return EXIT_OK if result["result"] == "measured" else EXIT_UNHEALTHY
        if args.command == "verify":
            agent.recover()
            agent.device()
            folder, extracted = agent.open_bundle(args.bundle)
            try:
                kinds = (BUNDLE_KIND, MEASURE_KIND)  # a sender asks before uploading either
                info = agent.verify(folder, files=not args.manifest_only, kinds=kinds)
            finally:
                if extracted:
                    shutil.rmtree(extracted, ignore_errors=True)
            info.pop("manifest")
            agent.log("verified", version=info["version"], deployment=info["deployment"])
            emit(dict(info, result="ok"))
            return EXIT_OK
        if args.command == "activate":
            result, code = agent.activate(args.bundle, args.timeout)
            emit(result)
            return code
        if args.command == "health":
            result, code = agent.health(args.timeout)
            emit(result)
            return code
        if args.command == "rollback":
            emit(agent.rollback(args.to))
            return EXIT_OK
        if args.command == "status":
            status = agent.status()
            if args.inventory:
                status["inventory"] = agent.inventory()["files"]
            emit(status)
            return EXIT_OK
        if args.command == "update-trust":
            agent.device()
            emit(agent.update_trust(args.file, args.sig))
            return EXIT_OK
        if args.command == "segment":
            version = agent.link_version(agent.current)
            folder = agent.version_dir(version) if version is not None else None
            if folder is None or not os.path.isdir(folder):
                raise Nothing("no current version on this device")
            try:
                result = segment_file(folder, args.source, args.dest, engine_cache(agent.root))
            except RunnerError as exc:  # no pipeline, a runtime missing, a volume refused
                emit({"result": "error", "message": str(exc), "version": version})
                return EXIT_ERROR
            emit(dict(result, version=version))
            return EXIT_OK
        if args.command in ("infer", "send", "run", "events"):
            result = events_command(agent, args)
            emit(result)
            return EXIT_OK if result["result"] == "ok" else EXIT_ERROR
        if args.command == "pull":
            report, code = pull_command(agent, args)
            emit(report)
            return code
        if args.command == "init":
            emit(agent.init(args.name, args.family, args.trust, args.reset_trust, args.fleet))
            return EXIT_OK
        if args.command == "inventory":
            emit(agent.inventory())
            return EXIT_OK
        if args.command == "link":
            emit(agent.link(args.plan))
            return EXIT_OK
    except (RecursionError, MemoryError) as exc:  # a hostile input got past the limits
        refusal = Refusal("too_large", f"{type(exc).__name__} while reading the input; refused")
        agent.drop_refused(getattr(args, "bundle", None))
        agent.log("refused", refusal=refusal.code, message=refusal.message, more=[])
        emit(agent.refusal_result(refusal))
        return EXIT_REFUSED
    except Refusal as exc:
        agent.drop_refused(getattr(args, "bundle", None))
        agent.log("refused", refusal=exc.code, message=exc.message, more=[m for _, m in exc.more])
        emit(agent.refusal_result(exc))
        return EXIT_REFUSED
    except Nothing as exc:
        agent.log("nothing", message=str(exc))
        emit({"result": "nothing", "message": str(exc)})
        return EXIT_NOTHING
    except (AgentError, OSError, ValueError, KeyError) as exc:
        with contextlib.suppress(OSError):
            agent.log("error", message=f"{type(exc).__name__}: {exc}")
        emit({"result": "error", "message": f"{type(exc).__name__}: {exc}"})
        return EXIT_ERROR
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
