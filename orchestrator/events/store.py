"""The collector's database: one row per event, keyed by the event's id (duplicates are
stored once). Any SQLAlchemy URL: ``sqlite:///events.db`` by default, PostgreSQL with
``postgresql+psycopg://...`` (the driver installed apart)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, NoSuchModuleError, OperationalError

from orchestrator.errors import EdgeshipError, MissingDependencyError

metadata = sa.MetaData()
events_table = sa.Table(
    "edgeship_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("fleet", sa.String(128), nullable=False, index=True),
    sa.Column("device", sa.String(128), nullable=False, index=True),
    sa.Column("deployment", sa.String(128), index=True),
    sa.Column("version", sa.Integer, index=True),
    sa.Column("time", sa.String(32), index=True),  # the device's UTC time, ISO 8601
    sa.Column("received_at", sa.String(32), nullable=False),
    sa.Column("prediction", sa.Text),  # JSON
    sa.Column("score", sa.Float),
    sa.Column("latency_ms", sa.Float),
    sa.Column("body", sa.Text, nullable=False),  # the event as the device sent it
)


class EventStoreError(EdgeshipError):
    """The events database cannot be opened or written."""


@dataclass(frozen=True)
class EventQuery:
    """Filters of ``edgeship events``; empty means any."""

    device: str = ""
    fleet: str = ""
    deployment: str = ""
    version: int | None = None
    since: str = ""  # ISO 8601, inclusive, compared with the device's time
    until: str = ""  # ISO 8601, exclusive
    limit: int = 100


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class EventStore:
    def __init__(self, url: str) -> None:
        try:
            self.engine = sa.create_engine(url)
            metadata.create_all(self.engine)
        except NoSuchModuleError as exc:
            raise EventStoreError(f"events database {url!r}: unknown kind ({exc})") from exc
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(
                f"the database driver {exc.name}", f"pip install {exc.name}", reason=url
            ) from exc
        except OperationalError as exc:
            raise EventStoreError(f"events database {url!r}: {exc.orig}") from exc

    def add(self, fleet: str, device: str, event: Mapping[str, Any]) -> bool:
        """Store one event; False when its id is stored already (a duplicate delivery)."""
        row = self._row(fleet, device, event)
        try:
            with self.engine.begin() as conn:
                conn.execute(events_table.insert().values(**row))
        except IntegrityError:
            return False
        return True

    def add_many(self, items: list[tuple[str, str, Mapping[str, Any]]]) -> set[str]:
        """Store a batch of (fleet, device, event) in one transaction; returns the ids newly
        stored (an id stored already, or twice in the batch, is a duplicate delivery)."""
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for fleet, device, event in items:
            row = self._row(fleet, device, event)
            if row["id"] not in seen:
                seen.add(row["id"])
                rows.append(row)
        if not rows:
            return set()
        name = self.engine.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        else:  # another database: one statement per event
            return {str(e["id"]) for f, d, e in items if self.add(f, d, e)}
        stmt = (
            insert(events_table)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(events_table.c.id)
        )
        with self.engine.begin() as conn:
            return {str(r[0]) for r in conn.execute(stmt, rows)}

    @staticmethod
    def _row(fleet: str, device: str, event: Mapping[str, Any]) -> dict[str, Any]:
        version = event.get("version")
        return {
            "id": str(event["id"]),
            "fleet": fleet,
            "device": device,
            "deployment": event.get("deployment"),
            "version": version
            if isinstance(version, int) and not isinstance(version, bool)
            else None,
            "time": event.get("time") if isinstance(event.get("time"), str) else None,
            "received_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "prediction": json.dumps(event.get("prediction"), sort_keys=True),
            "score": _number(event.get("score")),
            "latency_ms": _number(event.get("latency_ms")),
            "body": json.dumps(dict(event), sort_keys=True),
        }

    def query(self, q: EventQuery) -> list[dict[str, Any]]:
        t = events_table
        stmt = sa.select(t.c.fleet, t.c.device, t.c.received_at, t.c.body)
        for column, value in (
            (t.c.device, q.device),
            (t.c.fleet, q.fleet),
            (t.c.deployment, q.deployment),
        ):
            if value:
                stmt = stmt.where(column == value)
        if q.version is not None:
            stmt = stmt.where(t.c.version == q.version)
        if q.since:
            stmt = stmt.where(t.c.time >= q.since)
        if q.until:
            stmt = stmt.where(t.c.time < q.until)
        stmt = stmt.order_by(t.c.time, t.c.received_at, t.c.id).limit(q.limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            dict(json.loads(body), fleet=fleet, device=device, received_at=received)
            for fleet, device, received, body in rows
        ]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one()
            )

    def close(self) -> None:
        self.engine.dispose()
