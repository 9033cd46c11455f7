"""Recording a build in MLflow, with the store opened beside the build.

Importing MLflow and opening its store cost seconds of Python work, a large share of a
small model's build. A build that records starts a recorder process first: it imports
MLflow and opens the store on another core while the build loads its data, exports and
optimises, and says when it is ready. The build waits for that before it measures
latency (nothing else runs beside the measurement), and at the end sends one request,
what :func:`record_build` records, as JSON; the answer is the run, the model version and
whether an identical artifact's version was reused.

A process that already has the store open (``recipe=auto`` opens it once for all its
candidates) records in-process through the same :func:`record_build`. A recorder that
cannot start, or dies, leaves the build to record in-process: the build never depends on
it. One recorder per process serves every build of the same store (a multirun).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from orchestrator.core.fsutil import write_json
from orchestrator.errors import TrackingError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def record_build(tracker: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Record one build through ``tracker`` (a :class:`registry.tracking.Tracker`): the run
    (nested under ``parent``), build.json naming it, params, metrics, the artifact, the
    datasets, the description, the MLflow model and the registered version."""
    import numpy as np

    staging = Path(req["staging"])
    with tracker.run(
        req["deployment"],
        req["run_name"],
        req["tags"],
        parent=req["parent"],
        started=req["started"],
    ) as run:
        run_id = run.info.run_id
        info = dict(req["build_info"])
        info["mlflow"] = dict(info.get("mlflow") or {}, run_id=run_id)
        write_json(staging / "build.json", info)
        tracker.log_build(run_id, req["params"], req["metrics"], staging, req["lineage_tags"])
        datasets = []
        for name, context, path, digest, loader in req["datasets"]:
            with np.load(path) as npz:
                datasets.append((name, context, {k: npz[k] for k in npz.files}, digest, loader))
        tracker.log_datasets(run_id, datasets)
        tracker.set_tags(run_id, {"mlflow.note.content": req["description"]})
        version, reused = None, False
        if req["log_model"]:
            tracker.log_model(run_id, staging)
        if req["register"]:
            version, reused = tracker.register_artifact(
                req["deployment"], run_id, req["digest"], req["lineage_tags"], req["description"]
            )
            tracker.set_tags(run_id, {"edgeship.model_version": version})
    return {"run_id": run_id, "version": version, "reused": reused}


class InProcess:
    """Records in this process (the store is, or will be, open here)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ready(self) -> None:
        pass

    def record(self, req: dict[str, Any]) -> dict[str, Any]:
        from registry.tracking import open_tracker

        return record_build(open_tracker(self.root), req)


class Recorder:
    """A child process with MLflow imported and the store open (``python -m registry.recorder``)."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.key = key
        self.lock = threading.Lock()
        self.fallback = False
        self._ready: bool | None = None
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
             "import os; from registry.recorder import serve; os._exit(serve())", str(root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true"),
        )  # fmt: skip

    def _read(self) -> dict[str, Any] | None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return None
        line = proc.stdout.readline()
        if not line:
            return None
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ready(self) -> None:
        """Wait until the child has opened the store (or failed to: then record in-process)."""
        with self.lock:
            if self._ready is not None:
                return
            answer = self._read()
            self._ready = bool(answer and answer.get("ready"))
            if not self._ready:
                log.info("MLflow recorder not ready (%s); recording in-process", answer)
                self.close()
                self.fallback = True

    def record(self, req: dict[str, Any]) -> dict[str, Any]:
        self.ready()
        if self.fallback:
            return InProcess(self.root).record(req)
        with self.lock:
            proc = self.proc
            assert proc is not None and proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(req, default=str) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                answer = None
            else:
                answer = self._read()
        if answer is None:  # the child died: the build records here
            self.close()
            self.fallback = True
            return InProcess(self.root).record(req)
        if "error" in answer:
            raise TrackingError(str(answer["error"]))
        return answer

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.fallback

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)  # it leaves at once: no interpreter teardown (os._exit)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()


_current: list[Recorder] = []
_lock = threading.Lock()


def begin(root: Path) -> InProcess | Recorder:
    """What records this build: the store already open in this process, else the recorder of
    this process for the store (started now, opening it while the build works)."""
    from registry import tracking

    if tracking.opened(root):
        return InProcess(root)
    key = f"{root.resolve()} {tracking._store_key(root)}"
    with _lock:
        if _current and _current[0].key == key and _current[0].alive():
            return _current[0]
        while _current:
            _current.pop().close()
        try:
            recorder = Recorder(root, key)
        except OSError as exc:
            log.info("MLflow recorder not started (%s); recording in-process", exc)
            return InProcess(root)
        _current.append(recorder)
        return recorder


@atexit.register
def _close_all() -> None:
    with _lock:
        while _current:
            _current.pop().close()


def serve(argv: list[str] | None = None) -> int:
    """The recorder process: open the store of the project ``argv[0]``, say ready, then
    record each request read from stdin (one JSON line each) until stdin closes. Its
    answers are flushed as written, so the caller may leave with ``os._exit``."""
    args = sys.argv[1:] if argv is None else argv
    out: IO[str] = sys.stdout
    sys.stdout = sys.stderr  # only answers go to the build, whatever a library prints
    try:
        from registry.tracking import Tracker

        tracker = Tracker(Path(args[0]))
        tracker.client.search_experiments(max_results=1)
        import numpy  # noqa: F401  (the datasets' arrays)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            try:
                answer = record_build(tracker, json.loads(line))
            except Exception as exc:
                why = f"error: recording in MLflow: {type(exc).__name__}: {exc}"
                answer = {"error": str(exc) if isinstance(exc, TrackingError) else why}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    except KeyboardInterrupt:
        return 130
    return 0
