"""Builds as Ray tasks: ``edgeship build --ray ADDRESS`` (or ``$EDGESHIP_RAY_ADDRESS``).

Each build of a multirun, and each candidate of ``recipe=auto``, runs as one Ray task
(Ray core: ``ray.remote`` functions, resource requests, ``max_retries``) on a worker of
the cluster. The worker calls the same :func:`orchestrator.build.pipeline.run_build` a
local build calls, with the project root, the artifacts folder and the MLflow tracking
URI given to it explicitly, so it writes the same artifact folder and the same MLflow
records (run params, metrics, tags, the registered version; a candidate's run nested
under the selection's parent run, which the driver records).

A task returns its outcome as data (:class:`TaskOutcome`): a passing build, a build that
missed its gates, or an error with the exit code it would have had locally. A task whose
worker dies is retried by Ray (``max_retries``); once the retries are spent it comes back
as an error that says so (:class:`WorkerLostError`), never lost.

Ray is imported only here, and only when an address is configured: without ``--ray`` and
``$EDGESHIP_RAY_ADDRESS`` nothing of this module runs.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.build.pipeline import BuildResult
from orchestrator.build.ray_task import TaskOutcome, build_task
from orchestrator.build.select import Candidate, SelectionResult
from orchestrator.errors import (
    BuildError,
    EdgeshipError,
    GateFailure,
    MissingDependencyError,
    Problem,
    UsageError,
)
from orchestrator.project import (
    ENV_ARTIFACTS,
    ENV_RAY_ADDRESS,
    ENV_ROOT,
    ENV_TRACKING_URI,
    artifacts_root,
    tracking_uri,
)
from orchestrator.spec.compose import ComposedSpec
from targets.base import registered_targets

log = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'edgeship[ray]'"
GPU_RUNTIMES = frozenset({"tensorrt"})  # runtimes whose passes and validation want a GPU
# what a task carries from the driver's environment (paths, stores, tool environments)
CARRIED_PREFIXES = ("EDGESHIP_", "MLFLOW_")


def ray_address(option: str | None) -> str | None:
    """The Ray cluster to build on: ``--ray`` else ``$EDGESHIP_RAY_ADDRESS``; None: local."""
    return option or os.environ.get(ENV_RAY_ADDRESS) or None


@dataclass(frozen=True)
class Resources:
    """What each build task asks the cluster for (``--ray-resources``)."""

    num_cpus: float = 1.0
    memory_mb: int = 2048  # Ray schedules by it; the task is not limited to it
    num_gpus: float | None = None  # None: 1 for a GPU runtime's build when the cluster has GPUs
    max_retries: int = 2  # how often a task whose worker died runs again

    KEYS = ("cpus", "memory_mb", "gpus", "retries")

    @classmethod
    def parse(cls, text: str | None) -> Resources:
        """``cpus=2,memory_mb=4096,gpus=1,retries=3`` (any subset); problems collected."""
        if not text:
            return cls()
        values: dict[str, Any] = {}
        problems = []
        for word in text.split(","):
            key, sep, value = word.strip().partition("=")
            if not sep or key not in cls.KEYS:
                problems.append(
                    Problem(
                        "command line",
                        "--ray-resources",
                        f"expected KEY=VALUE with KEY one of {', '.join(cls.KEYS)}, "
                        f"found {word.strip()!r}",
                    )
                )
                continue
            try:
                number = float(value)
                if number < 0 or (key in ("memory_mb", "retries") and number != int(number)):
                    raise ValueError(value)
            except ValueError:
                problems.append(
                    Problem(
                        "command line",
                        f"--ray-resources {key}",
                        f"expected a non-negative {'integer' if key != 'cpus' else 'number'}"
                        f", found {value!r}",
                    )
                )
                continue
            values[key] = number
        if problems:
            raise UsageError(problems, title="invalid --ray-resources")
        return cls(
            num_cpus=values.get("cpus", cls.num_cpus),
            memory_mb=int(values.get("memory_mb", cls.memory_mb)),
            num_gpus=values.get("gpus"),
            max_retries=int(values.get("retries", cls.max_retries)),
        )


class RemoteBuildError(EdgeshipError):
    """A build task failed on the cluster; carries the exit code it has locally."""

    def __init__(self, outcome: TaskOutcome) -> None:
        self.outcome = outcome
        self.exit_code = outcome.exit_code or 1
        super().__init__(outcome.message)


class WorkerLostError(BuildError):
    """A build task's worker died (or the task was lost) and its retries are spent."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "Ray (builds on a cluster)", RAY_INSTALL, f"ray cannot be imported: {exc}"
        ) from exc
    return ray


def connect(address: str) -> Any:
    """Connect this process to the Ray cluster at ``address`` as a driver, unless it already
    is connected (a caller that ran ``ray.init`` keeps its connection and its workers)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    from ray.job_config import JobConfig

    # workers import edgeship from where the driver does (a checkout, an environment)
    package_parent = str(Path(__file__).resolve().parents[2])
    try:
        ray.init(
            address=address,
            namespace="edgeship",
            logging_level=logging.WARNING,
            log_to_driver=False,
            job_config=JobConfig(code_search_path=[package_parent]),
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = f"error: cannot connect to the Ray cluster at {address}: {exc}"
        raise BuildError(why) from exc
    return ray


def needs_gpu(spec: ComposedSpec) -> bool:
    """Whether the build's target runtime wants a GPU (TensorRT engines)."""
    cls = registered_targets().get(spec.config.target.family)
    return cls is not None and cls.runtime in GPU_RUNTIMES


def task_environment(root: Path) -> dict[str, str]:
    """The variables a task builds with: the driver's edgeship and MLflow settings, with the
    project, its artifacts folder and the tracking store spelt out as absolute paths."""
    env = {k: v for k, v in os.environ.items() if k.startswith(CARRIED_PREFIXES)}
    env.pop(ENV_RAY_ADDRESS, None)
    env[ENV_ROOT] = str(root.resolve())
    env[ENV_ARTIFACTS] = str(artifacts_root(root).resolve())
    env[ENV_TRACKING_URI] = tracking_uri(root.resolve())
    return env


@dataclass(eq=False)
class Ticket:
    """A submitted build task."""

    label: str
    ref: Any  # ray.ObjectRef
    submitted: float


class RayBuilds:
    """Builds on a Ray cluster: connects on creation, submits build tasks, collects outcomes."""

    def __init__(self, address: str, root: Path, resources: Resources | None = None) -> None:
        self.ray = _import_ray()
        self.root = root.resolve()
        self.resources = resources or Resources()
        self.address = address
        self._owned = not self.ray.is_initialized()  # else: this process's own connection
        connect(address)
        self.gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        self.env = task_environment(self.root)
        self._remote = self.ray.remote(build_task)
        self.outcomes: list[TaskOutcome] = []
        self._pending: dict[Any, Ticket] = {}  # ray.ObjectRef -> its ticket, not yet fetched
        self._done: dict[Ticket, TaskOutcome] = {}  # fetched, not yet asked for

    def options(self, spec: ComposedSpec) -> dict[str, Any]:
        """The Ray task options of a build of ``spec``."""
        res = self.resources
        gpus = res.num_gpus
        if gpus is None:
            gpus = 1.0 if needs_gpu(spec) and self.gpus >= 1 else 0.0
        return {
            "num_cpus": res.num_cpus,
            "memory": int(res.memory_mb) * 1024 * 1024,
            "num_gpus": gpus,
            "max_retries": res.max_retries,
            "retry_exceptions": False,  # an error of the build is its outcome, not retried
            "name": f"edgeship-build:{spec.name}:{spec.choices.get('recipe', '')}",
        }

    def submit(self, spec: ComposedSpec, label: str | None = None, **build_options: Any) -> Ticket:
        """Start a build of ``spec`` on the cluster (``build_options``: :func:`run_build`'s)."""
        label = label or spec.name
        # a worker's working folder is not the driver's: every path goes absolute
        build_options = {
            k: v.absolute() if isinstance(v, Path) else v for k, v in build_options.items()
        }
        payload = pickle.dumps((spec, build_options))  # unpickled in the task, timed there
        submitted = time.time()
        ref = self._remote.options(**self.options(spec)).remote(payload, self.env, label, submitted)
        ticket = Ticket(label, ref, submitted)
        self._pending[ref] = ticket
        return ticket

    def outcome(self, ticket: Ticket) -> TaskOutcome:
        """Wait for a task's outcome; a task lost with its worker is an error outcome.

        Every task that ends meanwhile is fetched as it ends, so each outcome's ``returned``
        is when it reached the driver, whatever order the outcomes are asked for in."""
        while ticket not in self._done:
            ready, _ = self.ray.wait(list(self._pending), num_returns=1)
            for ref in ready:
                done = self._pending.pop(ref)
                self._done[done] = self._fetch(done)
        return self._done.pop(ticket)

    def _fetch(self, ticket: Ticket) -> TaskOutcome:
        ray = self.ray
        try:
            outcome: TaskOutcome = ray.get(ticket.ref)
        except ray.exceptions.RayError as exc:
            tries = self.resources.max_retries + 1
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err = WorkerLostError(
                f"error: {ticket.label}: its Ray task failed on the cluster after {tries} "
                f"attempt(s) ({type(exc).__name__}): {reason}"
            )
            outcome = TaskOutcome(
                ticket.label,
                "error",
                error_type=type(err).__name__,
                exit_code=int(err.exit_code),
                message=str(err),
                submitted=ticket.submitted,
                candidate_error=True,
            )
        outcome.returned = time.time()
        self.outcomes.append(outcome)
        if outcome.started:
            log.info(
                "ray task %s on %s: %s; started %.2fs after submit, built in %.2fs, "
                "outcome back in %.2fs [epoch s: %.3f %.3f %.3f %.3f]",
                outcome.label,
                outcome.worker,
                outcome.status,
                outcome.started - outcome.submitted,
                outcome.finished - outcome.started,
                outcome.returned - outcome.finished,
                outcome.submitted,
                outcome.started,
                outcome.finished,
                outcome.returned,
            )
        return outcome

    def result(self, ticket: Ticket) -> BuildResult:
        """The build of a task, raising as a local build does: GateFailure, or its error."""
        outcome = self.outcome(ticket)
        if outcome.status == "passed":
            assert outcome.build is not None
            return outcome.build
        if outcome.status == "failed":
            raise GateFailure(ticket.label, outcome.failed_gates, outcome.run_id)
        raise RemoteBuildError(outcome)

    def candidates(
        self,
        result: SelectionResult,
        usable: list[ComposedSpec],
        scratch: Path,
        on_step: Callable[[str], None] | None,
        record: bool,
    ) -> None:
        """Build every candidate of a selection as its own task, all at once; their outcomes
        join ``result.candidates`` in the order of ``usable``, as a local selection's do."""
        tickets = []
        for candidate in usable:
            recipe = candidate.choices["recipe"]
            tickets.append(
                self.submit(
                    candidate,
                    label=recipe,
                    record=record,
                    artifacts_dir=scratch / recipe,
                    parent_run=result.parent_run_id,
                    register=False,
                )
            )
        if on_step:
            on_step(f"{len(tickets)} candidate(s) submitted to the Ray cluster at {self.address}")
        for ticket in tickets:
            outcome = self.outcome(ticket)
            if outcome.status == "error" and not outcome.candidate_error:
                raise RemoteBuildError(outcome)  # what stops a local selection stops this one
            result.candidates.append(_candidate(outcome, scratch, result.deployment))
            if on_step:
                c = result.candidates[-1]
                why = "; ".join(c.failed_gates) or c.message
                text = f"  {c.recipe}: {c.status.upper()} in {c.seconds:.1f}s on {outcome.worker}"
                on_step(text + (f" ({why})" if why and c.status != "passed" else ""))

    def close(self) -> None:
        """Disconnect from the cluster if this connected (the cluster keeps running)."""
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()


def _candidate(outcome: TaskOutcome, scratch: Path, deployment: str) -> Candidate:
    """A selection candidate from its task's outcome (as a local candidate build makes it)."""
    import json

    recipe = outcome.label
    seconds = max(0.0, outcome.finished - outcome.started)
    if outcome.status == "passed":
        build = outcome.build
        assert build is not None
        return Candidate(
            recipe,
            "passed",
            dict(build.validation.metrics),
            run_id=build.run_id,
            artifact_dir=build.artifact_dir,
            seconds=seconds,
            build=build,
        )
    if outcome.status == "failed":
        failed_dir = scratch / recipe / ".failed" / deployment
        metrics = json.loads((failed_dir / "metrics.json").read_text())
        return Candidate(
            recipe,
            "failed",
            metrics,
            list(outcome.failed_gates),
            run_id=outcome.run_id,
            artifact_dir=failed_dir,
            seconds=seconds,
        )
    status = "skipped" if outcome.error_type == MissingDependencyError.__name__ else "error"
    first = outcome.message.splitlines()[0].removeprefix("error: ") if outcome.message else ""
    log.warning("candidate %s: %s", recipe, first)
    return Candidate(recipe, status, message=first, seconds=seconds)
