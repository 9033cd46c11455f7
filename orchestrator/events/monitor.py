"""Live monitoring from the collector's store: per deployment version and device, latency
percentiles, event rate, error share, the prediction distribution and its drift from the
distribution measured at validation (population stability index, PSI).

The reference is the artifact's own predictions on the evaluation set, recorded by the build
in ``validation.json`` (``details.prediction_distribution``) and read from the version's
bundle. PSI = sum over classes of (live - reference) * ln(live / reference), shares floored
at 1e-4; below 0.1 is usually read as stable, above 0.25 as a shift.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orchestrator.events.store import EventStore, events_table

FLOOR = 1e-4
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def psi(live: Mapping[str, int], reference: Mapping[str, float]) -> float | None:
    """Population stability index of the live class counts against the reference's."""
    total, ref_total = sum(live.values()), sum(reference.values())
    if not total or not ref_total:
        return None
    out = 0.0
    for label in set(live) | set(reference):
        a = max(live.get(label, 0) / total, FLOOR)
        b = max(reference.get(label, 0) / ref_total, FLOOR)
        out += (a - b) * math.log(a / b)
    return out


def labels_of(prediction: Any) -> list[str]:
    """The class labels a prediction names (one, or several for multi-label); else none."""
    if isinstance(prediction, str):
        return [prediction]
    if isinstance(prediction, list) and all(isinstance(p, str) for p in prediction):
        return list(prediction)
    return []


@dataclass
class LiveStats:
    """One group of events (a version on a device, or on every device: ``device`` '*')."""

    deployment: str
    version: int | None
    device: str
    fleet: str = ""
    events: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    per_minute: float | None = None
    first: str = ""
    last: str = ""
    distribution: dict[str, int] = field(default_factory=dict)
    psi: float | None = None

    @property
    def error_share(self) -> float:
        return self.errors / self.events if self.events else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"error_share": self.error_share}


def _minutes(first: str, last: str) -> float:
    try:
        a = datetime.fromisoformat(first.replace("Z", "+00:00"))
        b = datetime.fromisoformat(last.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (b - a).total_seconds() / 60.0


def since_minutes(minutes: float, now: datetime | None = None) -> str:
    """The ISO time ``minutes`` before now (the start of a window)."""
    return ((now or datetime.now(UTC)) - timedelta(minutes=minutes)).strftime(TIME_FORMAT)


def _stats(key: tuple[str, int | None, str, str], rows: list[tuple[Any, ...]]) -> LiveStats:
    deployment, version, device, fleet = key
    out = LiveStats(deployment, version, device, fleet)
    latencies = [float(r[1]) for r in rows if r[1] is not None]
    times = sorted(str(r[0]) for r in rows if r[0])
    counts: Counter[str] = Counter()
    for _, _, prediction, body in rows:
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        if isinstance(event, dict) and event.get("error"):
            out.errors += 1
        with contextlib.suppress(ValueError):
            counts.update(labels_of(json.loads(prediction) if prediction else None))
    out.events = len(rows)
    out.p50_ms, out.p95_ms = percentile(latencies, 50), percentile(latencies, 95)
    if times:
        out.first, out.last = times[0], times[-1]
        span = _minutes(times[0], times[-1])
        out.per_minute = (len(times) - 1) / span if span > 0 else None
    out.distribution = dict(sorted(counts.items()))
    return out


def live_stats(
    store: EventStore,
    since: str = "",
    deployment: str = "",
    fleet: str = "",
    devices: Iterable[str] = (),
    version: int | None = None,
    per_device: bool = True,
    not_version: int | None = None,
    until: str = "",
    pool_versions: bool = False,
) -> list[LiveStats]:
    """Stats per (deployment, version, device) and per (deployment, version) over all devices
    (device ``*``), of the events whose device time is at or after ``since``."""
    t = events_table
    stmt = sa.select(
        t.c.deployment, t.c.version, t.c.device, t.c.fleet,
        t.c.time, t.c.latency_ms, t.c.prediction, t.c.body,
    )  # fmt: skip
    if since:
        stmt = stmt.where(t.c.time >= since)
    if deployment:
        stmt = stmt.where(t.c.deployment == deployment)
    if fleet:
        stmt = stmt.where(t.c.fleet == fleet)
    if version is not None:
        stmt = stmt.where(t.c.version == version)
    if not_version is not None:
        stmt = stmt.where(t.c.version != not_version)
    if until:
        stmt = stmt.where(t.c.time < until)
    chosen = list(devices)
    if chosen:
        stmt = stmt.where(t.c.device.in_(chosen))
    groups: dict[tuple[str, int | None, str, str], list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for dep, ver, dev, flt, *rest in conn.execute(stmt):
            row = tuple(rest)
            if per_device:
                groups.setdefault((str(dep), ver, str(dev), str(flt)), []).append(row)
            groups.setdefault((str(dep), None if pool_versions else ver, "*", ""), []).append(row)
    return [_stats(key, rows) for key, rows in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def reference_distribution(bundle: Path) -> dict[str, float] | None:
    """The class counts of the artifact's predictions at validation, from a bundle folder."""
    try:
        data = json.loads((bundle / "validation.json").read_text())
    except (OSError, ValueError):
        return None
    dist = ((data.get("details") or {}) if isinstance(data, dict) else {}).get(
        "prediction_distribution"
    )
    if not isinstance(dist, dict):
        return None
    labels, counts = dist.get("labels"), dist.get("counts")
    if not isinstance(labels, list) or not isinstance(counts, list) or len(labels) != len(counts):
        return None
    return {str(k): float(v) for k, v in zip(labels, counts, strict=True)}


class References:
    """Reference distributions of issued bundles, by (deployment, version), read once."""

    def __init__(self, bundles: Path) -> None:
        self.bundles = bundles
        self.cache: dict[tuple[str, int], dict[str, float] | None] = {}

    def get(self, deployment: str, version: int | None) -> dict[str, float] | None:
        if version is None:
            return None
        key = (deployment, version)
        if key not in self.cache:
            self.cache[key] = reference_distribution(self.bundles / deployment / str(version))
        return self.cache[key]

    def fill(self, stats: list[LiveStats]) -> list[LiveStats]:
        """Set each group's PSI against its version's reference (None when there is none)."""
        for s in stats:
            ref = self.get(s.deployment, s.version)
            s.psi = psi(s.distribution, ref) if ref else None
        return stats


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def pooled(stats: list[LiveStats]) -> dict[str, Any]:
    """The all-device figures (``{"events": 0}`` when there were no events)."""
    groups = [s for s in stats if s.device == "*"]
    return groups[0].to_json() if groups else {"events": 0}


class EventsAnalyst:
    """Live canary analysis figures from the collector's database (see
    :mod:`orchestrator.ship.rollout.analysis`)."""

    def __init__(self, db_url: str, bundles: Path) -> None:
        self.db_url = db_url  # unless the strategy names its own
        self.references = References(bundles)

    def __call__(
        self,
        devices: list[str],
        baseline: list[str],
        deployment: str,
        version: int,
        since: str,
        db: str = "",
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        store = EventStore(db or self.db_url)
        try:
            wave = live_stats(
                store, since=since, deployment=deployment, devices=devices or ["-"],
                version=version, per_device=False,
            )  # fmt: skip
            base = []
            if baseline:
                base = live_stats(
                    store, since=since, deployment=deployment, devices=baseline,
                    not_version=version, per_device=False, pool_versions=True,
                )  # fmt: skip
        finally:
            store.close()
        self.references.fill(wave)
        return pooled(wave), pooled(base)


def build_run_id(bundle: Path) -> str | None:
    """The MLflow run of the build a bundle was made from (its ``build.json``)."""
    try:
        data = json.loads((bundle / "build.json").read_text())
    except (OSError, ValueError):
        return None
    run = (data.get("mlflow") or {}).get("run_id") if isinstance(data, dict) else None
    return str(run) if run else None


def live_metrics(s: LiveStats) -> dict[str, float]:
    """The MLflow metrics of one version's stats (figures that are not known are left out)."""
    values = {
        "live_events": float(s.events),
        "live_error_share": s.error_share,
        "live_p50_ms": s.p50_ms,
        "live_p95_ms": s.p95_ms,
        "live_events_per_min": s.per_minute,
        "live_psi": s.psi,
    }
    return {k: float(v) for k, v in values.items() if v is not None}


def report_mlflow(stats: list[LiveStats], bundles: Path, tracker: Any, step: int) -> list[str]:
    """Log each version's all-device stats to its build's run; returns what was logged."""
    done = []
    for s in stats:
        if s.device != "*" or s.version is None:
            continue
        run_id = build_run_id(bundles / s.deployment / str(s.version))
        if not run_id:
            done.append(f"{s.deployment} v{s.version}: no MLflow run recorded in its bundle")
            continue
        tracker.log_live(run_id, live_metrics(s), step)
        done.append(f"{s.deployment} v{s.version}: logged to run {run_id} (step {step})")
    return done
