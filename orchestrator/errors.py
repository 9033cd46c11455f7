"""Every error edgeship raises on purpose, and the one table of exit codes.

Each error derives from :class:`EdgeshipError` and carries one code of
:class:`ExitCode`. The CLI prints ``str(error)`` and exits with ``error.exit_code``;
with ``-v`` (or ``EDGESHIP_FULL_ERROR=1``) it shows the traceback too. The same
table is printed by ``edgeship --help`` and in the README (a unit test keeps
the README's copy in step with this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """What ``edgeship`` exits with. Scripts may rely on these numbers."""

    OK = 0
    FAILED = 1  # a build step failed, or an unexpected error
    INVALID_SPEC = 2  # a spec (YAML under conf/ or a Hydra override) is invalid
    MISSING_DEPENDENCY = 3  # a runtime or SDK a step needs is not installed
    GATES_FAILED = 4  # an artifact was built and validated but missed its gates
    TRACKING = 5  # MLflow could not be reached or refused a write
    KEY_STORE = 6  # the signing key store is missing, unsafe or has no such key
    BUNDLE = 7  # a bundle cannot be made, read or verified
    HOST_KEY = 8  # a device's SSH host key is unknown or changed
    DEVICES_FAILED = 9  # one or more devices refused, failed or rolled back
    LOCKED = 10  # devices are held by another rollout (a lock was refused)
    SIMULATOR = 11  # the device simulator cannot start, find or stop its devices
    FEED = 12  # a phone update feed cannot be read or refuses what was asked
    UNREACHABLE = 13  # one or more devices did not answer (status, trace)
    ROLLOUT_HALTED = 14  # a rollout's failure budget was exceeded: halted, rolled back
    ROLLOUT_STATE = 15  # a rollout cannot be started or resumed as asked (journal, id)
    USER_CODE = 16  # the project's own code named in a spec raised or cannot be imported
    NOT_APPROVED = 17  # the fleet requires an approval the bundle lacks, or one cannot be made
    USAGE = 64  # a bad command line: unknown verb, flag or KEY=VALUE word
    INTERRUPTED = 130  # Ctrl-C: nothing half-written was kept


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "a build step failed, or an unexpected error",
    ExitCode.INVALID_SPEC: "invalid spec (YAML under conf/ or an override)",
    ExitCode.MISSING_DEPENDENCY: "a runtime or SDK a step needs is not installed",
    ExitCode.GATES_FAILED: "built and validated, but an acceptance gate failed",
    ExitCode.TRACKING: "MLflow could not be reached or refused a write",
    ExitCode.KEY_STORE: "signing key store missing, unsafe, or no such key",
    ExitCode.BUNDLE: "a bundle cannot be made, read or verified",
    ExitCode.HOST_KEY: "a device's SSH host key is unknown or changed",
    ExitCode.DEVICES_FAILED: "one or more devices refused, failed or rolled back",
    ExitCode.LOCKED: "devices are locked by another running rollout",
    ExitCode.SIMULATOR: "the device simulator cannot start, find or stop devices",
    ExitCode.FEED: "a phone update feed cannot be read or refuses the request",
    ExitCode.UNREACHABLE: "one or more devices did not answer",
    ExitCode.ROLLOUT_HALTED: "a rollout halted (failure budget exceeded) and rolled back",
    ExitCode.ROLLOUT_STATE: "a rollout cannot be started or resumed as asked",
    ExitCode.USER_CODE: "the project's code named in a spec (factory, loader, train) failed",
    ExitCode.NOT_APPROVED: "the fleet requires an approval the bundle lacks (or approving failed)",
    ExitCode.USAGE: "bad command line (unknown verb, flag or KEY=VALUE word)",
    ExitCode.INTERRUPTED: "interrupted; nothing half-written was kept",
}


def exit_code_table() -> str:
    """The table as plain text, for ``edgeship --help``."""
    return "\n".join(f"  {int(c):>3}  {EXIT_CODE_MEANINGS[c]}" for c in ExitCode)


class EdgeshipError(Exception):
    """Root of every error edgeship raises on purpose."""

    exit_code: int = ExitCode.FAILED


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where it is, what was expected, what was found."""

    source: str  # a file relative to the project root, or "command line"
    key: str  # dotted key, e.g. "recipe.passes[1].options.method"
    message: str  # "expected X, found Y" or a sentence

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class SpecError(EdgeshipError):
    """A spec (or the command-line overrides composing it) is invalid.

    Carries every problem found, so the user fixes them all in one go.
    """

    exit_code = ExitCode.INVALID_SPEC

    def __init__(self, problems: list[Problem], title: str = "invalid spec") -> None:
        self.problems = list(problems)
        self.title = title
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"error: {title} ({count} {noun})"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UsageError(SpecError):
    """The command line itself is wrong (a verb's KEY=VALUE words, a missing argument)."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[Problem], title: str = "invalid arguments") -> None:
        super().__init__(problems, title)


class MissingDependencyError(EdgeshipError):
    """A runtime or SDK a step needs is not installed; the message says how to get it."""

    exit_code = ExitCode.MISSING_DEPENDENCY

    def __init__(self, what: str, install: str, reason: str = "") -> None:
        self.what = what
        self.install = install
        msg = f"error: {what} is not available"
        if reason:
            msg += f" ({reason})"
        msg += f"; install it with: {install}"
        super().__init__(msg)


class BuildError(EdgeshipError):
    """A pass or an export failed while building an artifact."""

    exit_code = ExitCode.FAILED


class LabMeasurementError(BuildError):
    """A lab device refused a candidate or could not measure it (validate_on=lab)."""

    exit_code = ExitCode.DEVICES_FAILED


class UserCodeError(EdgeshipError):
    """Code of the project named in a spec (a model factory, a data loader, preprocessing,
    a train function, the model's own forward) raised or cannot be imported.

    ``key`` is the spec key that names the code, ``where`` the user's ``file:line``.
    """

    exit_code = ExitCode.USER_CODE

    def __init__(self, key: str, message: str, where: str | None = None) -> None:
        self.key = key
        self.where = where
        lines = [f"error: {key}: {message}"]
        if where:
            lines.append(f"  at {where}")
        lines.append("  (run with -v or EDGESHIP_FULL_ERROR=1 for the full traceback)")
        super().__init__("\n".join(lines))


class GateFailure(EdgeshipError):
    """An artifact was built and validated but missed one or more acceptance gates."""

    exit_code = ExitCode.GATES_FAILED

    def __init__(self, deployment: str, failed: list[str], run_id: str | None) -> None:
        self.deployment = deployment
        self.failed = failed
        self.run_id = run_id
        lines = [f"error: {deployment}: {len(failed)} gate(s) failed"]
        lines += [f"  {f}" for f in failed]
        if run_id:
            lines.append(f"  recorded as failed in MLflow run {run_id}")
        super().__init__("\n".join(lines))


class TrackingError(EdgeshipError):
    """MLflow could not be reached or refused a write."""

    exit_code = ExitCode.TRACKING


class KeyStoreError(EdgeshipError):
    """The signing key store is missing, unreadable, unsafe, or has no such key."""

    exit_code = ExitCode.KEY_STORE


class ApprovalError(EdgeshipError):
    """A bundle lacks the approval its fleet requires, or an approval cannot be made."""

    exit_code = ExitCode.NOT_APPROVED


class BundleError(EdgeshipError):
    """A bundle cannot be made, read or verified."""

    exit_code = ExitCode.BUNDLE


class HostKeyError(EdgeshipError):
    """A device's SSH host key is unknown or differs from the pinned one."""

    exit_code = ExitCode.HOST_KEY


class DeviceUnreachableError(EdgeshipError):
    """The device did not answer or refused the login (not a host-key problem)."""

    exit_code = ExitCode.UNREACHABLE


class DeviceTimeoutError(EdgeshipError):
    """A device took longer than its time limit; its connection was closed."""

    exit_code = ExitCode.UNREACHABLE


class DeviceDiskFullError(EdgeshipError):
    """The device has no room for the bundle; what was staged is removed again."""

    exit_code = ExitCode.DEVICES_FAILED


class DeviceRequirementError(EdgeshipError):
    """A device lacks what the agent needs (a Python it runs on, openssl, sha256sum)."""

    exit_code = ExitCode.DEVICES_FAILED


class RolloutError(EdgeshipError):
    """One or more devices failed; carries every device's outcome (like Fabric's GroupException).

    ``result`` is the whole picture: which devices succeeded, which failed and why.
    """

    exit_code = ExitCode.DEVICES_FAILED

    def __init__(self, verb: str, result: Any) -> None:
        self.result = result
        failed = result.failed
        lines = [f"error: {verb}: {len(failed)} of {len(result.outcomes)} device(s) failed"]
        lines += [f"  {o.device}: {o.summary()}" for o in failed]
        super().__init__("\n".join(lines))


class RolloutLockedError(EdgeshipError):
    """Devices are held by a rollout (or a deploy) that is running or can still be resumed.

    ``held`` maps each device to its lock holder (anything with ``describe()``);
    ``title`` and ``hints`` replace the default first line and advice.
    """

    exit_code = ExitCode.LOCKED

    def __init__(
        self, held: dict[str, Any], title: str = "", hints: list[str] | None = None
    ) -> None:
        self.held = held
        owners: dict[str, list[str]] = {}
        for device, holder in held.items():
            owners.setdefault(holder.describe(), []).append(device)
        lines = [title or f"error: {len(held)} device(s) are locked by a running rollout"]
        for who, devices in owners.items():
            lines.append(f"  {who}")
            lines.append(f"    devices: {', '.join(sorted(devices))}")
        lines += [f"  {h}" for h in hints or ["wait for it to finish, or select other devices"]]
        super().__init__("\n".join(lines))


class RolloutStateError(EdgeshipError):
    """A rollout cannot be started or resumed as asked (unknown id, changed bundle, journal)."""

    exit_code = ExitCode.ROLLOUT_STATE


class RolloutJournalError(RolloutStateError, ValueError):
    """A rollout journal is damaged: a line is not the JSON entry it must be.

    Names the file and line, what was expected and what was found, and how to recover.
    """

    def __init__(self, path: Any, line: int, expected: str, found: str) -> None:
        self.path = path
        self.line = line
        rollout = getattr(path, "stem", str(path))
        lines = [
            f"error: {path}:{line}: damaged rollout journal: expected {expected}; found {found}",
            "  a resume trusts every line of the journal, so edgeship does not guess past this one",
            f"  to give up on rollout {rollout} (its devices keep what they run now, its device "
            "locks are released, the journal is moved to damaged/ next to it and kept): "
            f"edgeship rollout --abandon {rollout}",
            "  then see what the devices run: edgeship status fleet=NAME",
        ]
        super().__init__("\n".join(lines))


class RolloutHaltedError(EdgeshipError):
    """The failure budget of a wave was exceeded; carries the whole report.

    ``report`` is the rollout's report (its ``halt_message()`` is the error text).
    """

    exit_code = ExitCode.ROLLOUT_HALTED

    def __init__(self, report: Any) -> None:
        self.report = report
        super().__init__(report.halt_message())


class TraceError(EdgeshipError):
    """Nothing runs on the device, and no journal says what did."""

    exit_code = ExitCode.UNREACHABLE


class FeedError(EdgeshipError):
    """The feed cannot be read, or refuses what was asked."""

    exit_code = ExitCode.FEED


class SimError(EdgeshipError):
    """The simulator cannot start, find or stop its devices."""

    exit_code = ExitCode.SIMULATOR
