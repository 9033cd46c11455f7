"""The Ray task of a build: what a worker runs, and the outcome it sends back.

Kept apart from :mod:`orchestrator.build.distributed` (the driver's side) and light to
import: a worker imports this module to run its first task, and the build's own modules
load inside the task, where their time counts as the build's, as in a local build.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from orchestrator.errors import BuildError, EdgeshipError, GateFailure, MissingDependencyError

if TYPE_CHECKING:
    from orchestrator.build.pipeline import BuildResult


@dataclass
class TaskOutcome:
    """What a build task sent back: its build, its failed gates, or its error."""

    label: str  # the deployment, or the candidate recipe
    status: str  # passed | failed (a gate) | error
    build: BuildResult | None = None
    failed_gates: list[str] = field(default_factory=list)
    run_id: str | None = None
    error_type: str = ""  # the error's class (MissingDependencyError, BuildError, ...)
    exit_code: int = 0
    message: str = ""
    submitted: float = 0.0  # time.time() on the driver
    started: float = 0.0  # time.time() in the task, before the build
    finished: float = 0.0  # time.time() in the task, after the build
    returned: float = 0.0  # time.time() on the driver, the outcome in hand
    worker: str = ""  # host:pid of the worker that built it
    candidate_error: bool = False  # an error a selection records as its candidate's outcome


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def build_task(payload: bytes, env: dict[str, str], label: str, submitted: float) -> TaskOutcome:
    """One build on a worker: ``run_build(spec, **options)`` of the pickled ``(spec,
    options)``, under the driver's settings ``env``.

    Every outcome is data: GateFailure and every other error are caught and returned.
    """
    started = time.time()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    outcome = TaskOutcome(label, "error", submitted=submitted, started=started)
    outcome.worker = _worker_name()
    try:
        from orchestrator.build.pipeline import run_build

        spec, options = pickle.loads(payload)
        build = run_build(spec, **options)
        build.validation = replace(build.validation, outputs=[])  # used; large, not sent back
        outcome.status, outcome.build, outcome.run_id = "passed", build, build.run_id
    except GateFailure as exc:
        outcome.status, outcome.run_id = "failed", exc.run_id
        outcome.failed_gates = list(exc.failed)
        outcome.exit_code, outcome.message = int(exc.exit_code), str(exc)
    except EdgeshipError as exc:
        outcome.error_type, outcome.exit_code = type(exc).__name__, int(exc.exit_code)
        outcome.message = str(exc)
        outcome.candidate_error = isinstance(exc, (BuildError, MissingDependencyError))
    except Exception as exc:  # an unexpected error: exit code 1, as the CLI gives it
        outcome.error_type, outcome.exit_code = type(exc).__name__, 1
        outcome.message = f"error: {label}: {type(exc).__name__}: {exc}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    outcome.finished = time.time()
    return outcome
