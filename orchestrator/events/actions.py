"""Actions a rule fires: an HTTP POST with a JSON body, or a program that reads that body
on its standard input; both retried with back-off.

Deliveries run on one worker thread, in the order the rules fired, so a slow
receiver never holds up the storing of events.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.core.schema import CommandActionConfig, WebhookConfig

Action = WebhookConfig | CommandActionConfig

log = logging.getLogger(__name__)


def post(hook: WebhookConfig, body: dict[str, Any], sleep: Any = time.sleep) -> dict[str, Any]:
    """POST ``body`` to the hook; retries on a network error or a 5xx/429 answer, waiting
    ``backoff`` seconds, doubled after each attempt. Returns the outcome (never raises)."""
    data = json.dumps(body, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", **hook.headers}
    wait = hook.backoff
    error = ""
    for attempt in range(1, hook.retries + 2):
        request = urllib.request.Request(hook.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=hook.timeout) as resp:
                return {"delivered": True, "status": resp.status, "attempts": attempt}
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if exc.code < 500 and exc.code != 429:
                return {"delivered": False, "status": exc.code, "attempts": attempt, "error": error}
        except (urllib.error.URLError, OSError) as exc:
            error = str(getattr(exc, "reason", exc))
        if attempt <= hook.retries:
            log.warning("webhook %s: %s; retrying in %.1fs", hook.url, error, wait)
            sleep(wait)
            wait *= 2
    return {"delivered": False, "attempts": hook.retries + 1, "error": error}


def run_command(
    action: CommandActionConfig,
    body: dict[str, Any],
    cwd: Path | None = None,
    sleep: Any = time.sleep,
) -> dict[str, Any]:
    """Run the action's program (no shell) with ``body`` as one JSON line on its standard
    input; retried after a non-zero exit, a timeout or a program that cannot start. Returns
    the outcome (never raises)."""
    data = (json.dumps(body, sort_keys=True) + "\n").encode()
    wait = action.backoff
    error = ""
    for attempt in range(1, action.retries + 2):
        try:
            done = subprocess.run(
                list(action.argv),
                input=data,
                cwd=cwd,
                capture_output=True,
                timeout=action.timeout,
                check=False,
            )
            if done.returncode == 0:
                return {"delivered": True, "exit": 0, "attempts": attempt}
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            error = f"exit {done.returncode}" + (f": {tail[0]}" if tail else "")
        except subprocess.TimeoutExpired:
            error = f"still running after {action.timeout:g}s; stopped"
        except OSError as exc:
            error = f"cannot run {action.argv[0]}: {exc.strerror or exc}"
        if attempt <= action.retries:
            log.warning("command %s: %s; retrying in %.1fs", action.argv[0], error, wait)
            sleep(wait)
            wait *= 2
    return {"delivered": False, "attempts": action.retries + 1, "error": error}


def deliver(action: Action, body: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    if isinstance(action, CommandActionConfig):
        return run_command(action, body, cwd)
    return post(action, body)


def describe(action: Action) -> str:
    if isinstance(action, CommandActionConfig):
        return "command " + " ".join(action.argv)
    return f"webhook {action.url}"


class Dispatcher:
    """Delivers fired actions on a worker thread; ``outcomes`` records each delivery.
    Commands run from ``cwd`` (the project folder)."""

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd
        self.jobs: queue.Queue[tuple[Action, dict[str, Any]] | None] = queue.Queue()
        self.outcomes: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._work, name="edgeship-actions", daemon=True)
        self.thread.start()

    def submit(self, action: Action, body: dict[str, Any]) -> None:
        self.jobs.put((action, body))

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            action, body = job
            outcome = dict(
                deliver(action, body, self.cwd), rule=body.get("rule"), device=body.get("device")
            )
            self.outcomes.append(outcome)
            if not outcome["delivered"]:
                log.error("%s for rule %s failed: %s", describe(action), body.get("rule"), outcome)

    def close(self, timeout: float = 30.0) -> None:
        self.jobs.put(None)
        self.thread.join(timeout)
