"""The exceptions edgeship raises. Every one derives from :class:`EdgeshipError`.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; with ``-v`` (or
``EDGESHIP_FULL_ERROR=1``) it shows the traceback too.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgeshipError(Exception):
    """Root of every error edgeship raises on purpose."""

    exit_code = 1


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

    exit_code = 2

    def __init__(self, problems: list[Problem], title: str = "invalid spec") -> None:
        self.problems = list(problems)
        self.title = title
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"error: {title} ({count} {noun})"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class MissingDependencyError(EdgeshipError):
    """A runtime or SDK a step needs is not installed; the message says how to get it."""

    exit_code = 3

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

    exit_code = 1


class GateFailure(EdgeshipError):
    """An artifact was built and validated but missed one or more acceptance gates."""

    exit_code = 4

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

    exit_code = 5
