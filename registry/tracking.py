"""MLflow: one run per build, the model registry, aliases.

Only this module talks to MLflow. The tracking URI is ``$MLFLOW_TRACKING_URI``
when set (a real server), else a SQLite file in the project (``mlflow.db``) with
artifacts under ``mlartifacts/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator import project
from orchestrator.errors import TrackingError

log = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
EXPERIMENT_KIND = "mlflow.experimentKind"
CLASSIC_ML = "custom_model_development"
ARTIFACT_DIGEST = "edgeship.artifact.sha256"


def tracking_uri(root: Path) -> str:
    return project.tracking_uri(root)


_opening: dict[str, tuple[threading.Thread, list[Any]]] = {}
_opening_lock = threading.Lock()


def _store_key(root: Path) -> str:
    """The stores a Tracker of ``root`` talks to: tracking and registry."""
    return f"{tracking_uri(root)} {os.environ.get('MLFLOW_REGISTRY_URI', '')}"


def prepare(root: Path) -> None:
    """Start opening the MLflow store of ``root`` in the background (once per store), for a
    caller with other work to do meanwhile; :func:`open_tracker` then gives that Tracker.

    ``recipe=auto`` opens it once for the selection and every candidate's build, which then
    record in-process (:mod:`registry.recorder`); a single build opens the store in a
    recorder process instead, since importing MLflow is Python-bound work that a thread
    beside the build would only slow down (the GIL)."""
    uri = _store_key(root)
    with _opening_lock:
        if uri in _opening:
            return
        box: list[Any] = []

        def work() -> None:
            try:
                tracker = Tracker(root)
                tracker.client.search_experiments(max_results=1)
                box.append(tracker)
            except Exception as exc:  # opening again in the caller reports it
                log.debug("opening MLflow at %s in the background: %s", uri, exc)

        thread = threading.Thread(target=work, name="edgeship-mlflow-open", daemon=True)
        _opening[uri] = (thread, box)
        thread.start()


def opened(root: Path) -> bool:
    """Whether this process opened (or is opening) the store of ``root`` (:func:`prepare`)."""
    with _opening_lock:
        return _store_key(root) in _opening


def open_tracker(root: Path) -> Tracker:
    """The :class:`Tracker` of ``root``: the one :func:`prepare` opened, else a new one."""
    with _opening_lock:
        started = _opening.get(_store_key(root))
    if started is not None:
        thread, box = started
        thread.join()
        if box and box[0].root == root:
            return box[0]
    return Tracker(root)


# where MLflow keeps absolute locations (table, column); a moved project rewrites them
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
ROOT_MARKER = Path(".edgeship") / "mlflow-root"


def _store_root(db: sqlite3.Connection) -> str | None:
    """The project folder a store's locations point into, read from its experiments (a
    project's experiments keep their artifacts in ``<project>/mlartifacts/<name>``)."""
    for name, location in db.execute("SELECT name, artifact_location FROM experiments"):
        path = str(location or "")
        path = urllib.parse.unquote(path[len("file://") :]) if path.startswith("file://") else path
        tail = f"/mlartifacts/{name}"
        if path.endswith(tail):
            return path[: -len(tail)]
    return None


def follow_move(root: Path) -> str | None:
    """Point the project's own MLflow store at ``root`` when the project folder was moved or
    copied: MLflow records absolute artifact locations, so every location under the old
    folder is rewritten to the same place under ``root`` (in one transaction; locations
    elsewhere stay). Returns the old folder when something was rewritten."""
    db_path = root / "mlflow.db"
    marker = root / ROOT_MARKER
    here = str(root.absolute())
    if not db_path.is_file():  # a new store: its locations will be under ``root``
        _write_marker(marker, here)
        return None
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        try:
            old = marker.read_text().strip() if marker.is_file() else _store_root(db)
        except sqlite3.Error:  # not a store MLflow has set up yet
            return None
        moved = old is not None and old != here
        if moved:
            assert old is not None
            prefixes = [
                (Path(old).as_uri() + "/", Path(here).as_uri() + "/"),
                ("file://" + old + "/", "file://" + here + "/"),
                (old + "/", here + "/"),
            ]
            db.execute("BEGIN IMMEDIATE")
            for table, column in _LOCATION_COLUMNS:
                found = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in found:
                    continue
                rows = db.execute(f"SELECT rowid, {column} FROM {table}").fetchall()
                for rowid, value in rows:
                    for before, after in prefixes:
                        if isinstance(value, str) and value.startswith(before):
                            db.execute(
                                f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                                (after + value[len(before) :], rowid),
                            )
                            break
            db.commit()
            log.warning("project moved from %s: MLflow locations now point into %s", old, here)
    if old != here or not marker.is_file():
        _write_marker(marker, here)
    return old if moved else None


def _write_marker(marker: Path, root: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(root + "\n")
    os.replace(tmp, marker)


def _is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "l": [x]}`` -> ``{"a.b": "1", "l.0.x": ...}}``, values as strings."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                out.update(flatten(v, f"{name}.{i}"))
        else:
            out[name] = str(value)
    return out


class Tracker:
    """A thin, typed facade over the MLflow client for edgeship's records."""

    def __init__(self, root: Path) -> None:
        # edgeship prints its own run lines; MLflow's "View run ... at" on stdout would be
        # mixed into tables and --json answers
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.root = root
        self.uri = tracking_uri(root)
        if not os.environ.get(project.ENV_TRACKING_URI):  # the project's own store
            follow_move(root)
        mlflow.set_tracking_uri(self.uri)
        self.mlflow = mlflow
        # the registry is the tracking store unless MLFLOW_REGISTRY_URI names another; never
        # the process-wide default another caller may have set
        self.registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or self.uri
        self.client = MlflowClient(self.uri, registry_uri=self.registry_uri)

    def experiment_id(self, deployment: str) -> str:
        """The experiment that groups every build of one deployment (created on first use)."""
        try:
            exp = self.client.get_experiment_by_name(deployment)
            if exp is not None:
                if exp.tags.get(EXPERIMENT_KIND) != CLASSIC_ML:
                    self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, CLASSIC_ML)
                return str(exp.experiment_id)
            location = None
            if _is_local(self.uri):
                location = (self.root / "mlartifacts" / deployment).as_uri()
            # models built and validated, not GenAI traces: MLflow's classic ML views
            tags = {"edgeship.deployment": deployment, EXPERIMENT_KIND: CLASSIC_ML}
            return str(
                self.client.create_experiment(deployment, artifact_location=location, tags=tags)
            )
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: {exc}") from exc

    @contextmanager
    def run(
        self,
        deployment: str,
        run_name: str,
        tags: Mapping[str, str],
        parent: str | None = None,
        started: float | None = None,
    ) -> Iterator[Any]:
        """An MLflow run that ends FAILED if the block raises and KILLED on Ctrl-C.

        ``started`` (seconds since the epoch): when the work the run records began, so the
        run's duration is the build's, not the recording's."""
        exp = self.experiment_id(deployment)
        all_tags = {"mlflow.user": _user(), **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        start_ms = int(started * 1000) if started is not None else None
        try:
            run = self.client.create_run(exp, start_time=start_ms, run_name=run_name, tags=all_tags)
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: {exc}") from exc
        run_id = run.info.run_id
        status = "FINISHED"
        try:
            yield run
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self.client.set_terminated(run_id, status)

    def log_build(
        self,
        run_id: str,
        params: Mapping[str, str],
        metrics: Mapping[str, float],
        artifact_dir: Path | None,
        tags: Mapping[str, str],
    ) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])
        metric_items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(metric_items), 500):
            self.client.log_batch(run_id, metrics=metric_items[i : i + 500])
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if artifact_dir is not None:
            self.client.log_artifacts(run_id, str(artifact_dir), artifact_path="artifact")

    def log_live(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Live monitoring figures of a deployed version, on its build's run, as one step."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(
                run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
            )
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: live metrics: {exc}") from exc

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_model(self, run_id: str, artifact_dir: Path) -> str:
        """Log the artifact as an MLflow model under the run's ``model/`` (see
        :mod:`registry.mlflow_model`); returns its flavour."""
        import tempfile

        from registry.mlflow_model import save_artifact_model

        with tempfile.TemporaryDirectory(prefix="edgeship-mlmodel-") as tmp:
            try:
                flavour = save_artifact_model(artifact_dir, Path(tmp) / "model")
                self.client.log_artifacts(run_id, str(Path(tmp) / "model"), artifact_path="model")
            except Exception as exc:
                raise TrackingError(
                    f"error: MLflow at {self.uri}: logging the MLflow model of {artifact_dir}: "
                    f"{exc}"
                ) from exc
        return flavour

    def log_datasets(self, run_id: str, datasets: list[tuple[str, str, Any, str, str]]) -> None:
        """Record the run's data as MLflow datasets: (name, context, features, sha256, loader)
        each, ``features`` a mapping of input name to array, ``loader`` the project's function
        that returned it (MLflow keeps the schema, profile and digest; the data itself stays
        where the project keeps it)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for name, context, features, digest, loader in datasets:
            source = CodeDatasetSource({"edgeship.loader": loader})
            dataset = from_numpy(dict(features), source=source, name=name)
            dataset._digest = digest[:36]  # edgeship's own hash of exactly these arrays
            tags = [InputTag("mlflow.data.context", context)]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: logging datasets: {exc}") from exc

    def version_with_digest(self, deployment: str, digest: str) -> str | None:
        """The newest registered version whose artifact has content digest ``digest``."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(
                f"name = '{deployment}' and tags.`{ARTIFACT_DIGEST}` = '{digest}'"
            )
        except MlflowException:
            return None
        return max((str(v.version) for v in found), key=int, default=None)

    def register_artifact(
        self,
        deployment: str,
        run_id: str,
        digest: str,
        tags: Mapping[str, str],
        description: str | None = None,
    ) -> tuple[str, bool]:
        """Register the run's MLflow model as the ``candidate`` of ``deployment``, unless a
        version with the same artifact digest exists: then that version becomes the
        candidate again and nothing new is registered. Returns (version, reused)."""
        version = self.version_with_digest(deployment, digest)
        if version is not None:
            self.set_alias(deployment, CANDIDATE_ALIAS, version)
            return version, True
        version = self.register(
            deployment,
            run_id,
            tags={**tags, ARTIFACT_DIGEST: digest},
            description=description,
            model=True,
        )
        return version, False

    def register(
        self,
        deployment: str,
        run_id: str,
        alias: str = CANDIDATE_ALIAS,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        model: bool = False,
    ) -> str:
        """Register the run's artifact as a new version of model ``deployment``; set ``alias``.

        ``tags`` land on the model version (e.g. the source model it was built from);
        ``model``: the run logged an MLflow model (:meth:`log_model`), which the version
        then points at (else the raw artifact folder)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(deployment)
        except MlflowException:
            self.client.create_registered_model(
                deployment, description=f"edgeship deployment {deployment}"
            )
        folder = "model" if model else "artifact"
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{folder}"
        version = self.client.create_model_version(
            deployment, source, run_id=run_id, tags=dict(tags or {}), description=description
        )
        self.client.set_registered_model_alias(deployment, alias, version.version)
        return str(version.version)

    def set_alias(self, deployment: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(deployment, alias, version)

    def alias_version(self, deployment: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(deployment, alias).version)
        except MlflowException:
            return None

    # -- bundles (edgeship bundle) -----------------------------------------------------------

    def record_bundle(
        self,
        run_id: str,
        manifest: Path,
        digest: str,
        signature: bytes,
        version: int,
        key_id: str,
    ) -> None:
        """Record a signed bundle on its build's run: tags, plus the manifest and signature."""
        import base64

        tags = {
            "edgeship.bundle.version": str(version),
            "edgeship.bundle.sha256": digest,
            "edgeship.bundle.signature": base64.b64encode(signature).decode(),
            "edgeship.bundle.key_id": key_id,
            f"edgeship.bundle.{version}.sha256": digest,
        }
        try:
            self.set_tags(run_id, tags)
            self.client.log_artifact(run_id, str(manifest), artifact_path=f"bundle/{version}")
            sig = manifest.with_name(manifest.name + ".sig")
            if sig.is_file():
                self.client.log_artifact(run_id, str(sig), artifact_path=f"bundle/{version}")
        except Exception as exc:
            raise TrackingError(
                f"error: MLflow at {self.uri}: recording bundle {version}: {exc}"
            ) from exc

    def max_bundle_version(self, deployment: str) -> int:
        """The highest bundle version recorded on any run of ``deployment`` (0 if none)."""
        try:
            exp = self.client.get_experiment_by_name(deployment)
            if exp is None:
                return 0
            runs = self.client.search_runs(
                [exp.experiment_id],
                filter_string="tags.`edgeship.bundle.version` != ''",
                max_results=1000,
            )
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: {exc}") from exc
        versions = [int(r.data.tags.get("edgeship.bundle.version", "0") or 0) for r in runs]
        return max([0, *versions])

    # -- recipe selection (recipe=auto) -------------------------------------------------------

    def log_files(self, run_id: str, files: list[Path], artifact_path: str) -> None:
        """Attach files (tables, plots) to a run under ``artifact_path``."""
        try:
            for path in files:
                self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        except Exception as exc:
            raise TrackingError(
                f"error: MLflow at {self.uri}: logging {artifact_path}: {exc}"
            ) from exc

    # -- rollouts (edgeship rollout, status, trace) ----------------------------------------------

    def start_rollout_run(
        self,
        deployment: str,
        rollout_id: str,
        tags: Mapping[str, str],
        build_run_id: str | None = None,
    ) -> str:
        """Open the run that records one rollout (a child of the build's run when known)."""
        exp = self.experiment_id(deployment)
        all_tags = {"edgeship.kind": "rollout", "edgeship.rollout.id": rollout_id, **tags}
        if build_run_id:
            all_tags["mlflow.parentRunId"] = build_run_id
        try:
            run = self.client.create_run(exp, run_name=f"rollout-{rollout_id}", tags=all_tags)
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: recording rollout: {exc}") from exc
        return str(run.info.run_id)

    def finish_rollout_run(
        self,
        run_id: str,
        status: str,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        journal: Path | None = None,
    ) -> None:
        """Close a rollout's run: its metrics, its status (``completed`` finishes the run,
        anything else fails it) and the journal as an artifact."""
        import time

        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                tags=[
                    RunTag(k, str(v))
                    for k, v in {**tags, "edgeship.rollout.status": status}.items()
                ],
            )
            if journal is not None and journal.is_file():
                self.client.log_artifact(run_id, str(journal), artifact_path="rollout")
            self.client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: recording rollout: {exc}") from exc

    def tag_build_rollout(
        self, build_run_id: str, fleet: str, rollout_id: str, status: str, version: int
    ) -> None:
        """Say on the build's run how its bundle's latest rollout to ``fleet`` ended."""
        prefix = f"edgeship.rollout.{fleet}"
        try:
            self.set_tags(
                build_run_id,
                {
                    f"{prefix}.id": rollout_id,
                    f"{prefix}.status": status,
                    f"{prefix}.bundle_version": str(version),
                },
            )
        except Exception as exc:
            raise TrackingError(
                f"error: MLflow at {self.uri}: tagging the build run: {exc}"
            ) from exc

    def tag_version(self, model: str, version: str, tags: Mapping[str, str]) -> bool:
        """Tags on a registered model version (bundles issued from it, rollouts of it);
        False when that version is not (or no longer) in the registry."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(model, version)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise TrackingError(f"error: MLflow at {self.uri}: {exc}") from exc
            log.warning("MLflow: %s version %s is not registered; not tagged", model, version)
            return False
        try:
            for k, v in tags.items():
                self.client.set_model_version_tag(model, version, k, str(v))
            return True
        except Exception as exc:
            raise TrackingError(
                f"error: MLflow at {self.uri}: tagging {model} v{version}: {exc}"
            ) from exc

    def withdraw_alias(self, model: str, alias: str, version: str) -> bool:
        """Remove ``alias`` when it points at ``version`` (a version whose rollout halted is
        no longer a candidate); returns whether it did."""
        if self.alias_version(model, alias) != str(version):
            return False
        try:
            self.client.delete_registered_model_alias(model, alias)
        except Exception as exc:
            raise TrackingError(
                f"error: MLflow at {self.uri}: removing alias {alias} of {model}: {exc}"
            ) from exc
        return True

    def promote(self, model: str, version: str, alias: str) -> None:
        """Point ``alias`` (e.g. ``production-north``) at ``model`` version ``version``."""
        try:
            self.client.set_registered_model_alias(model, alias, version)
        except Exception as exc:
            raise TrackingError(
                f"error: MLflow at {self.uri}: setting alias {alias} on {model} v{version}: {exc}"
            ) from exc

    def run_evidence(self, run_id: str) -> dict[str, Any]:
        """A run as evidence: status, times, tags, params, metrics, where its artifacts are."""
        try:
            run = self.client.get_run(run_id)
            exp = self.client.get_experiment(run.info.experiment_id)
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: run {run_id}: {exc}") from exc
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment": exp.name if exp is not None else run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "artifact_uri": run.info.artifact_uri,
            "tags": dict(run.data.tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "tracking_uri": self.uri,
        }

    def version_evidence(self, model: str, version: str) -> dict[str, Any] | None:
        """A registered model version with its aliases (None when it is not registered)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(model, version)
        except MlflowException:
            return None
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: {model} v{version}: {exc}") from exc
        return {
            "name": mv.name,
            "version": str(mv.version),
            "aliases": sorted(mv.aliases or []),
            "run_id": mv.run_id,
            "status": mv.status,
            "source": mv.source,
        }

    def rollout_runs(self, deployment: str, max_results: int = 50) -> list[dict[str, Any]]:
        """The latest rollout runs of a deployment: id, status, tags, times."""
        try:
            exp = self.client.get_experiment_by_name(deployment)
            if exp is None:
                return []
            runs = self.client.search_runs(
                [exp.experiment_id],
                filter_string="tags.`edgeship.kind` = 'rollout'",
                max_results=max_results,
                order_by=["attributes.start_time DESC"],
            )
        except Exception as exc:
            raise TrackingError(f"error: MLflow at {self.uri}: {exc}") from exc
        return [
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "tags": dict(r.data.tags),
                "metrics": dict(r.data.metrics),
            }
            for r in runs
        ]
