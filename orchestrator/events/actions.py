"""Actions a rule fires: an HTTP POST with a JSON body, retried with back-off.

Deliveries run on one worker thread, in the order the rules fired, so a slow
receiver never holds up the storing of events.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from orchestrator.core.schema import WebhookConfig

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


class Dispatcher:
    """Delivers fired actions on a worker thread; ``outcomes`` records each delivery."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[WebhookConfig, dict[str, Any]] | None] = queue.Queue()
        self.outcomes: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._work, name="edgeship-actions", daemon=True)
        self.thread.start()

    def submit(self, hook: WebhookConfig, body: dict[str, Any]) -> None:
        self.jobs.put((hook, body))

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            hook, body = job
            outcome = dict(post(hook, body), rule=body.get("rule"), device=body.get("device"))
            self.outcomes.append(outcome)
            if not outcome["delivered"]:
                log.error("webhook %s for rule %s failed: %s", hook.url, body.get("rule"), outcome)

    def close(self, timeout: float = 30.0) -> None:
        self.jobs.put(None)
        self.thread.join(timeout)
