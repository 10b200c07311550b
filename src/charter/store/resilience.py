"""Shared resilience state in the database: quota buckets, quota use, breakers, transitions.

Kept apart from :mod:`charter.store.sql`: it takes the same engine, and the
delivery layer's shared state (:mod:`charter.delivery.shared`) is its only writer.
A state row is changed under ``SELECT ... FOR UPDATE`` on PostgreSQL with the
time read from the database clock, so every worker process sees one bucket and
one breaker per system; on SQLite (one process) the same calls are safe too.
The store does not decide anything: the functions it is given do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from charter.store.protocol import DeliveryStatus
from charter.store.schema import Id, deliveries
from charter.store.sql_base import unavailable_errors

T = TypeVar("T")

# Migration 0005. A metadata of their own: these tables are this module's alone.
resilience_metadata = MetaData()

quota_buckets = Table(
    "quota_buckets",
    resilience_metadata,
    Column("system", String(64), primary_key=True),
    Column("state", Text, nullable=False),
    Column("paused_until", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

quota_usage = Table(
    "quota_usage",
    resilience_metadata,
    Column("system", String(64), primary_key=True),
    Column("flow", String(100), primary_key=True),
    Column("tier", String(32), nullable=False),
    Column("granted", BigInteger, nullable=False),
    Column("waited_s", Float, nullable=False),
    Column("deferred", BigInteger, nullable=False),
    Column("rate_limited", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

breakers = Table(
    "breakers",
    resilience_metadata,
    Column("key", String(330), primary_key=True),
    Column("system", String(64), nullable=False),
    Column("endpoint", String(260)),
    Column("state", String(16), nullable=False),
    Column("since", Float, nullable=False),
    Column("record", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

breaker_transitions = Table(
    "breaker_transitions",
    resilience_metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(330), nullable=False),
    Column("system", String(64), nullable=False),
    Column("endpoint", String(260)),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("worker", String(100), nullable=False),
    Index("ix_breaker_transitions_system_at", "system", "at"),
)


@dataclass(frozen=True)
class BreakerKey:
    """A breaker's key: the system, or ``system METHOD /path`` for one endpoint."""

    system: str
    endpoint: str | None = None

    def __str__(self) -> str:
        return self.system if self.endpoint is None else f"{self.system} {self.endpoint}"


@dataclass(frozen=True)
class UsageRow:
    """Quota use of one flow on one system since the last report (added to the totals)."""

    system: str
    flow: str
    tier: str
    granted: int
    waited_s: float
    deferred: int
    rate_limited: int


class ResilienceStore:
    """Quota and breaker rows on the hub's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction; a lost database raises `DatabaseUnavailable`, for workers to wait
        out."""
        with unavailable_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection to read with; a lost database raises `DatabaseUnavailable`."""
        with unavailable_errors(), self.engine.connect() as conn:
            yield conn

    def _now(self, conn: Connection) -> float:
        if self.is_postgres:
            return float(
                conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            )
        return time.time()

    def _upsert(self, table: Table) -> Any:
        return (postgresql if self.is_postgres else sqlite).insert(table)

    # changing shared state under a row lock

    def change_bucket(
        self,
        system: str,
        change: Callable[[Mapping[str, Any] | None, float], tuple[Mapping[str, Any], T]],
    ) -> T:
        """Run ``change(state or None, now)`` on a system's bucket row, locked; keep the state."""
        with self._begin() as conn:
            now = self._now(conn)
            locked = select(quota_buckets.c.state).where(quota_buckets.c.system == system)
            row = conn.execute(locked.with_for_update()).first()
            if row is None:
                # Another worker may create it at the same moment: whoever comes second
                # waits for the first's commit, then locks the row it made.
                conn.execute(
                    self._upsert(quota_buckets)
                    .values(system=system, state="null", paused_until=0.0, updated_at=now)
                    .on_conflict_do_nothing()
                )
                row = conn.execute(locked.with_for_update()).one()
            state, result = change(orjson.loads(row.state), now)
            conn.execute(
                update(quota_buckets)
                .where(quota_buckets.c.system == system)
                .values(
                    state=orjson.dumps(state).decode(),
                    paused_until=float(state.get("paused_until", 0.0)),
                    updated_at=now,
                )
            )
        return result

    def change_breaker(
        self,
        key: BreakerKey,
        change: Callable[
            [Mapping[str, Any] | None, float],
            tuple[Mapping[str, Any], T, Sequence[Mapping[str, Any]]],
        ],
    ) -> T:
        """Run ``change(record or None, now)`` on a breaker row, locked; store the record and
        the transitions it returns, in the same transaction."""
        with self._begin() as conn:
            now = self._now(conn)
            locked = select(breakers.c.record).where(breakers.c.key == str(key))
            row = conn.execute(locked.with_for_update()).first()
            if row is None:
                conn.execute(
                    self._upsert(breakers)
                    .values(
                        key=str(key),
                        system=key.system,
                        endpoint=key.endpoint,
                        state="closed",
                        since=now,
                        record="null",
                        updated_at=now,
                    )
                    .on_conflict_do_nothing()
                )
                row = conn.execute(locked.with_for_update()).one()
            record, result, transitions = change(orjson.loads(row.record), now)
            stored = orjson.dumps(record).decode()
            if stored != row.record:
                conn.execute(
                    update(breakers)
                    .where(breakers.c.key == str(key))
                    .values(
                        state=str(record["state"]),
                        since=float(record["since"]),
                        record=stored,
                        updated_at=now,
                    )
                )
            self._insert_transitions(conn, key, transitions)
        return result

    def _insert_transitions(
        self, conn: Connection, key: BreakerKey, transitions: Iterable[Mapping[str, Any]]
    ) -> None:
        rows = [
            {"key": str(key), "system": key.system, "endpoint": key.endpoint, **t}
            for t in transitions
        ]
        if rows:
            conn.execute(insert(breaker_transitions), rows)

    # snapshots of state kept in one process (SQLite), for visibility and restarts

    def save_snapshot(
        self,
        buckets: Mapping[str, Mapping[str, Any]],
        records: Mapping[BreakerKey, Mapping[str, Any]],
        transitions: Mapping[BreakerKey, Sequence[Mapping[str, Any]]],
        usage: list[UsageRow],
    ) -> None:
        """Write what one process holds in memory: bucket states, breaker records (replacing
        the stored ones), new transitions, and quota use (added to the totals)."""
        if not (buckets or records or transitions or usage):
            return
        with self._begin() as conn:
            now = self._now(conn)
            for system, state in buckets.items():
                values = {
                    "state": orjson.dumps(state).decode(),
                    "paused_until": float(state.get("paused_until", 0.0)),
                    "updated_at": now,
                }
                statement = self._upsert(quota_buckets).values(system=system, **values)
                conn.execute(
                    statement.on_conflict_do_update(index_elements=["system"], set_=values)
                )
            for key, record in records.items():
                values = {
                    "state": str(record["state"]),
                    "since": float(record["since"]),
                    "record": orjson.dumps(record).decode(),
                    "updated_at": now,
                }
                statement = self._upsert(breakers).values(
                    key=str(key), system=key.system, endpoint=key.endpoint, **values
                )
                conn.execute(statement.on_conflict_do_update(index_elements=["key"], set_=values))
            for key, rows in transitions.items():
                self._insert_transitions(conn, key, rows)
            self._add_usage(conn, usage, now)

    def add_usage(self, usage: list[UsageRow]) -> None:
        if usage:
            with self._begin() as conn:
                self._add_usage(conn, usage, self._now(conn))

    def _add_usage(self, conn: Connection, usage: list[UsageRow], now: float) -> None:
        for row in usage:
            statement = self._upsert(quota_usage).values(
                system=row.system,
                flow=row.flow,
                tier=row.tier,
                granted=row.granted,
                waited_s=row.waited_s,
                deferred=row.deferred,
                rate_limited=row.rate_limited,
                updated_at=now,
            )
            added = statement.excluded
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["system", "flow"],
                    set_={
                        "tier": added.tier,
                        "granted": quota_usage.c.granted + added.granted,
                        "waited_s": quota_usage.c.waited_s + added.waited_s,
                        "deferred": quota_usage.c.deferred + added.deferred,
                        "rate_limited": quota_usage.c.rate_limited + added.rate_limited,
                        "updated_at": added.updated_at,
                    },
                )
            )

    # deliveries put back without an attempt

    def defer(self, worker: str, items: list[tuple[int, float]]) -> int:
        """Make leased deliveries due again at the given times, without counting an attempt.

        Only deliveries still pending and leased by ``worker`` move: a lost lease
        means another worker owns the delivery now.
        """
        if not items:
            return 0
        with self._begin() as conn:
            result = conn.execute(
                update(deliveries)
                .where(
                    and_(
                        deliveries.c.id == bindparam("b_id"),
                        deliveries.c.lease_owner == worker,
                        deliveries.c.status == DeliveryStatus.PENDING.value,
                    )
                )
                .values(
                    next_attempt_at=bindparam("b_until"),
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                [{"b_id": ident, "b_until": until} for ident, until in items],
            )
        return int(result.rowcount)

    # reading

    def load_buckets(self) -> dict[str, dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(select(quota_buckets.c.system, quota_buckets.c.state)).all()
        return {row.system: orjson.loads(row.state) for row in rows}

    def load_breakers(self) -> dict[BreakerKey, dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(select(breakers.c.system, breakers.c.endpoint, breakers.c.record))
            return {BreakerKey(r.system, r.endpoint): orjson.loads(r.record) for r in rows}

    def usage(self, system: str | None = None) -> list[dict[str, Any]]:
        query = select(quota_usage).order_by(quota_usage.c.system, quota_usage.c.flow)
        if system is not None:
            query = query.where(quota_usage.c.system == system)
        with self._connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def now(self) -> float:
        with self._connect() as conn:
            return self._now(conn)

    def transitions(self, system: str, limit: int = 100) -> list[dict[str, Any]]:
        """A system's breaker transitions, newest first."""
        query = (
            select(breaker_transitions)
            .where(breaker_transitions.c.system == system)
            .order_by(breaker_transitions.c.at.desc(), breaker_transitions.c.id.desc())
            .limit(limit)
        )
        with self._connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
