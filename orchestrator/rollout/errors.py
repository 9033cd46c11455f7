"""Errors of signing keys, bundles, fleets and rollouts (all :class:`EdgeshipError`)."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import EdgeshipError


class KeyStoreError(EdgeshipError):
    """The signing key store is missing, unreadable, unsafe, or has no such key."""

    exit_code = 6


class BundleError(EdgeshipError):
    """A bundle cannot be made, read or verified."""

    exit_code = 7


class HostKeyError(EdgeshipError):
    """A device's SSH host key is unknown or differs from the pinned one."""

    exit_code = 8


class RolloutError(EdgeshipError):
    """One or more devices failed; carries every device's outcome (like Fabric's GroupException).

    ``result`` is the whole picture: which devices succeeded, which failed and why.
    """

    exit_code = 9

    def __init__(self, verb: str, result: Any) -> None:
        self.result = result
        failed = result.failed
        lines = [f"error: {verb}: {len(failed)} of {len(result.outcomes)} device(s) failed"]
        lines += [f"  {o.device}: {o.summary()}" for o in failed]
        super().__init__("\n".join(lines))
