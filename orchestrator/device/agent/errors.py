"""Exit codes, and the exceptions that end a command with one of them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 10
EXIT_UNHEALTHY = 11
EXIT_UNHEALTHY_NO_PREVIOUS = 12
EXIT_NOTHING = 13
EXIT_CRASH = 99


class Refusal(Exception):
    """A bundle (or trust set) the device will not accept. ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, more: list | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.more = more or []  # further (code, message) pairs found in the same check


class AgentError(Exception):
    """Something the agent needs is missing or broken (exit 1)."""


class Nothing(Exception):
    """There is nothing to act on (exit 13)."""
