"""The SQLAlchemy 2 Core implementation of :class:`Store` for SQLite and PostgreSQL.

The dialect comes from the URL. SQLite runs in WAL mode with ``synchronous=FULL``
and write transactions that start with ``BEGIN IMMEDIATE``; one process owns
the file. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` and reads lease
time from the database clock, so any number of processes on any hosts can share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    bindparam,
    case,
    create_engine,
    event,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from charter.errors import Conflict, NotFound, StoreError
from charter.store.protocol import (
    ERROR_WORDS,
    HUB_SYSTEM,
    AttemptResult,
    ClaimedDelivery,
    DeadLetterFilter,
    DeliveryAction,
    DeliveryCounts,
    DeliveryStatus,
    DriftCount,
    EventFilter,
    FieldWrite,
    IdempotencyRecord,
    IngestBatch,
    IngestResult,
    NewEvent,
    Operator,
    Outcome,
    QuarantineStatus,
    Rearm,
    RecordTrail,
    ReplayDelivery,
    ReplayResult,
    drift_event,
    drift_notice,
    held_rows,
    notice_event_id,
    record_rows,
    released_payload,
    with_events,
    write_rows,
)
from charter.store.schema import (
    attempts,
    deliveries,
    delivery_actions,
    drift,
    events,
    field_writes,
    idempotency_keys,
    notices,
    quarantine,
    record_keys,
)

# Rows per statement when a replay or a bulk redrive writes many deliveries.
CHUNK = 1000
REDRIVABLE = (DeliveryStatus.DEAD.value, DeliveryStatus.DISCARDED.value)
# A replay leaves these to their worker, or to the owner reviewing the held write.
PENDING_OR_HELD = (DeliveryStatus.PENDING.value, DeliveryStatus.QUARANTINED.value)


def _error_class_sql() -> ColumnElement[Any]:
    """``protocol.error_class`` of a delivery's last attempt, as SQL."""
    status = deliveries.c.last_status
    lowered = func.lower(func.coalesce(deliveries.c.last_error, ""))
    return case(
        (status == 429, "rate_limited"),
        (status == 408, "timeout"),
        (status >= 500, "http_5xx"),
        (status >= 400, "http_4xx"),
        (deliveries.c.last_error.is_(None), literal(None, String)),
        (deliveries.c.last_error == "", literal(None, String)),
        *((lowered.contains(words), found.value) for words, found in ERROR_WORDS),
        else_="other",
    )


def _dead_at_sql() -> ColumnElement[Any]:
    """When a delivery died: the start of its last attempt."""
    last = (
        select(func.max(attempts.c.started_at))
        .where(attempts.c.delivery_id == deliveries.c.id)
        .scalar_subquery()
    )
    return func.coalesce(last, deliveries.c.next_attempt_at)


def _action_row(
    delivery_id: int | None,
    action: DeliveryAction,
    who: Operator,
    now: float,
    details: dict[str, Any],
    replay_id: str | None = None,
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "replay_id": replay_id,
        "action": action.value,
        "by": who.by,
        "reason": who.reason,
        "at": now,
        "details": orjson.dumps(details).decode(),
    }


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` with Charter's durability settings."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from pysqlite so BEGIN IMMEDIATE can be issued.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql+"):
        return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    raise StoreError(
        f"unsupported database URL {url.split('://')[0]!r}",
        fix="use sqlite:///path/to/charter.db or postgresql://user@host/db",
    )


class AppendExtension(Protocol):
    """Work done inside the transaction that appends events."""

    def before_append(self, conn: Connection, batches: list[IngestBatch]) -> None: ...

    def after_append(self, conn: Connection, events: list[NewEvent], now: float) -> None: ...


def _row(mapping: Any) -> dict[str, Any]:
    # Column keys are SQLAlchemy's quoted_name, a str subclass JSON encoders refuse.
    return {str(key): value for key, value in mapping.items()}


class SqlStore:
    """:class:`Store` on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer; queueing writers in-process avoids busy-wait storms.
        self._write_lock = threading.Lock() if not self.is_postgres else None
        # Work that must commit with appended events (process triggers and waits).
        self.append_extensions: list[AppendExtension] = []

    @classmethod
    def from_url(cls, url: str) -> SqlStore:
        return cls(create_store_engine(url))

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            if self._write_lock is None:
                with self.engine.begin() as conn:
                    yield conn
            else:
                with self._write_lock, self.engine.begin() as conn:
                    yield conn
        except OperationalError as exc:
            raise StoreError(
                f"the database refused a write: {exc.orig}",
                fix="check that the database is up and migrated ('charter db upgrade')",
            ) from exc
        except IntegrityError as exc:
            raise StoreError(
                f"the write breaks a constraint of the store: {exc.orig}",
                fix="this is a bug in the caller; report it with the request that caused it",
            ) from exc

    def _now(self, conn: Connection) -> float:
        if self.is_postgres:
            return float(
                conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            )
        return time.time()

    def _insert_ignore(self, table: Any) -> Any:
        if self.is_postgres:
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # ingest

    def append(self, batches: list[IngestBatch]) -> list[IngestResult]:
        results: list[IngestResult] = []
        appended: list[NewEvent] = []
        with self._write() as conn:
            now = self._now(conn)
            for extension in self.append_extensions:
                extension.before_append(conn, batches)
            for batch in batches:
                if batch.idempotency is not None and not self._store_key(conn, batch, now):
                    results.append(IngestResult(appended=[], duplicates=[], key_taken=True))
                    continue
                # A request may repeat an event, and a retry may resend logged ones:
                # the event id is unique, so only the first copy is appended.
                first: dict[str, NewEvent] = {}
                for e in batch.events:
                    first.setdefault(e.id, e)
                inserted: set[str] = set()
                if first:
                    inserted = set(
                        conn.execute(
                            self._insert_ignore(events).returning(events.c.id),
                            [
                                {
                                    "id": e.id,
                                    "system": e.system,
                                    "ce_id": e.ce_id,
                                    "type": e.type,
                                    "source": e.source,
                                    "subject": e.subject,
                                    "time": e.time,
                                    "received_at": now,
                                    "data": e.data,
                                }
                                for e in first.values()
                            ],
                        ).scalars()
                    )
                unique = [e for e in first.values() if e.id in inserted]
                appended.extend(unique)
                held = {(e.id, h.integration) for e in unique for h in e.holds}
                if unique:
                    rows = [
                        {
                            "event_id": e.id,
                            "integration": d.integration,
                            "target": d.target,
                            "tier": d.tier,
                            "status": (
                                DeliveryStatus.QUARANTINED.value
                                if (e.id, d.integration) in held
                                else DeliveryStatus.PENDING.value
                            ),
                            "attempts": 0,
                            "next_attempt_at": now,
                            "idempotency_key": d.idempotency_key,
                            "mapping": d.mapping,
                            "payload": d.payload,
                            "created_at": now,
                        }
                        for e in unique
                        for d in e.deliveries
                    ]
                    if rows:
                        conn.execute(insert(deliveries), rows)
                counted: set[str] = set()
                duplicates: list[str] = []
                for e in batch.events:
                    if e.id in inserted and e.id not in counted:
                        counted.add(e.id)
                    else:
                        duplicates.append(e.id)
                results.append(IngestResult(appended=[e.id for e in unique], duplicates=duplicates))
                for extension in self.append_extensions:
                    extension.after_append(conn, unique, now)
            self._append_governance(conn, appended, now)
            records = record_rows(appended, now)
            if records:
                conn.execute(insert(record_keys), records)
            if self.is_postgres:
                conn.execute(text("NOTIFY charter_deliveries"))
        return results

    def _store_key(self, conn: Connection, batch: IngestBatch, now: float) -> bool:
        """Record the batch's Idempotency-Key; False when another request holds it.

        On PostgreSQL a concurrent insert of the same key waits for the first
        transaction, so two processes can never both take one key.
        """
        record = batch.idempotency
        assert record is not None
        taken = conn.execute(
            self._insert_ignore(idempotency_keys).returning(idempotency_keys.c.key),
            {
                "system": record.system,
                "key": record.key,
                "request_hash": record.request_hash,
                "status_code": record.status_code,
                "response": record.response,
                "created_at": now,
            },
        ).first()
        return taken is not None

    def find_idempotency_record(self, system: str, key: str) -> IdempotencyRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.system == system, idempotency_keys.c.key == key
                )
            ).first()
        if row is None:
            return None
        return IdempotencyRecord(
            system=row.system,
            key=row.key,
            request_hash=row.request_hash,
            status_code=row.status_code,
            response=row.response,
        )

    # delivery

    def claim_due_deliveries(
        self, worker: str, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]:
        with self._write() as conn:
            now = self._now(conn)
            due = (
                select(deliveries.c.id)
                .where(
                    deliveries.c.status == DeliveryStatus.PENDING.value,
                    deliveries.c.next_attempt_at <= now,
                    or_(
                        deliveries.c.lease_expires_at.is_(None), deliveries.c.lease_expires_at < now
                    ),
                )
                .order_by(deliveries.c.tier, deliveries.c.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            ids = list(conn.execute(due).scalars())
            if not ids:
                return []
            rows = conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids))
                .values(lease_owner=worker, lease_expires_at=now + lease_seconds)
                .returning(
                    deliveries.c.id,
                    deliveries.c.event_id,
                    deliveries.c.integration,
                    deliveries.c.target,
                    deliveries.c.tier,
                    deliveries.c.attempts,
                    deliveries.c.idempotency_key,
                    deliveries.c.mapping,
                    deliveries.c.payload,
                    deliveries.c.created_at,
                )
            ).all()
        claimed = [ClaimedDelivery(**_row(r._mapping)) for r in rows]
        claimed.sort(key=lambda d: (d.tier, d.id))
        return claimed

    def record_attempts(self, worker: str, results: list[AttemptResult]) -> int:
        if not results:
            return 0
        ids = [r.delivery_id for r in results]
        with self._write() as conn:
            now = self._now(conn)
            # Only deliveries still leased by this worker are recorded: a lost lease
            # means another worker owns the delivery now.
            owned: dict[int, int] = {}
            for chunk in range(0, len(ids), 500):
                for ident, tries in conn.execute(
                    select(deliveries.c.id, deliveries.c.attempts)
                    .where(
                        deliveries.c.id.in_(ids[chunk : chunk + 500]),
                        deliveries.c.lease_owner == worker,
                    )
                    .with_for_update()
                ):
                    owned[int(ident)] = int(tries)
            released = [r.delivery_id for r in results if r.outcome is Outcome.RELEASED]
            done = [
                r for r in results if r.outcome is not Outcome.RELEASED and r.delivery_id in owned
            ]
            if released:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(released), deliveries.c.lease_owner == worker)
                    .values(lease_owner=None, lease_expires_at=None)
                )
            if not done:
                return 0
            rows = [
                {
                    "b_id": r.delivery_id,
                    "b_status": {
                        Outcome.DELIVERED: DeliveryStatus.DELIVERED.value,
                        Outcome.DEAD: DeliveryStatus.DEAD.value,
                    }.get(r.outcome, DeliveryStatus.PENDING.value),
                    "b_attempts": owned[r.delivery_id] + 1,
                    "b_next": r.next_attempt_at or now,
                    "b_delivered_at": now if r.outcome is Outcome.DELIVERED else None,
                    "b_last_status": r.status_code,
                    "b_last_error": r.error,
                    "b_fallback": r.fallback,
                }
                for r in done
            ]
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == bindparam("b_id"))
                .values(
                    status=bindparam("b_status"),
                    attempts=bindparam("b_attempts"),
                    next_attempt_at=bindparam("b_next"),
                    delivered_at=bindparam("b_delivered_at"),
                    last_status=bindparam("b_last_status"),
                    last_error=bindparam("b_last_error"),
                    fallback=bindparam("b_fallback"),
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                rows,
            )
            conn.execute(
                insert(attempts),
                [
                    {
                        "delivery_id": r.delivery_id,
                        "number": owned[r.delivery_id] + 1,
                        "started_at": r.started_at,
                        "latency_ms": r.latency_ms,
                        "status_code": r.status_code,
                        "outcome": r.outcome.value,
                        "error": r.error,
                        "fallback": r.fallback,
                    }
                    for r in done
                ],
            )
        return len(done)

    def release_leases(self, worker: str | None) -> int:
        """Release the leases of ``worker``, or every lease when ``worker`` is None.

        Releasing every lease is only right when no other process can hold one:
        the embedded SQLite mode, at start-up, after a crash.
        """
        owned = (
            deliveries.c.lease_owner.is_not(None)
            if worker is None
            else deliveries.c.lease_owner == worker
        )
        with self._write() as conn:
            result = conn.execute(
                update(deliveries).where(owned).values(lease_owner=None, lease_expires_at=None)
            )
        return int(result.rowcount)

    def next_due_at(self) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(
                    func.min(
                        func.coalesce(deliveries.c.lease_expires_at, deliveries.c.next_attempt_at)
                    )
                ).where(deliveries.c.status == DeliveryStatus.PENDING.value)
            ).scalar()
        return float(value) if value is not None else None

    # reading

    def delivery_counts(self) -> DeliveryCounts:
        fallen_back = (deliveries.c.status == "delivered") & deliveries.c.fallback.is_not(None)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.sum(case((deliveries.c.status == "pending", 1), else_=0)),
                    func.sum(case((deliveries.c.status == "delivered", 1), else_=0)),
                    func.sum(case((deliveries.c.status == "dead", 1), else_=0)),
                    func.sum(case((deliveries.c.attempts > 1, 1), else_=0)),
                    func.sum(deliveries.c.attempts),
                    func.sum(case((deliveries.c.status == "quarantined", 1), else_=0)),
                    func.sum(case((fallen_back, 1), else_=0)),
                )
            ).one()
            # The hub's own events (drift notices) were not received from a system.
            received = conn.execute(
                select(func.count()).select_from(events).where(events.c.system != HUB_SYSTEM)
            ).scalar_one()
        return DeliveryCounts(
            received=int(received),
            pending=int(row[1] or 0),
            delivered=int(row[2] or 0),
            dead=int(row[3] or 0),
            retried=int(row[4] or 0),
            attempts=int(row[5] or 0),
            quarantined=int(row[6] or 0),
            fallback=int(row[7] or 0),
        )

    def fallback_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.integration, func.count())
                .where(
                    deliveries.c.status == DeliveryStatus.DELIVERED.value,
                    deliveries.c.fallback.is_not(None),
                )
                .group_by(deliveries.c.integration)
            )
            return {str(name): int(count) for name, count in rows}

    def latencies(self, limit: int = 100_000) -> list[float]:
        with self.engine.connect() as conn:
            values = conn.execute(
                select(deliveries.c.delivered_at - deliveries.c.created_at)
                .where(deliveries.c.status == DeliveryStatus.DELIVERED.value)
                .order_by(deliveries.c.id.desc())
                .limit(limit)
            ).scalars()
            return [float(v) for v in values]

    def list_deliveries(
        self, status: DeliveryStatus | None = None, integration: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(deliveries.c.status == status.value)
        if integration is not None:
            query = query.where(deliveries.c.integration == integration)
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def get_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return _row(row._mapping) if row is not None else None

    def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(attempts)
                .where(attempts.c.delivery_id == delivery_id)
                .order_by(attempts.c.id)
            )
            return [_row(r._mapping) for r in rows]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).first()
        return _row(row._mapping) if row is not None else None

    # dead letters and replay

    def list_dead_letters(self, where: DeadLetterFilter, limit: int = 100) -> list[dict[str, Any]]:
        error_class = _error_class_sql()
        dead_at = _dead_at_sql()
        query = (
            select(deliveries, error_class.label("error_class"), dead_at.label("dead_at"))
            .where(deliveries.c.status == where.status.value)
            .order_by(deliveries.c.id.desc())
            .limit(limit)
        )
        if where.integration is not None:
            query = query.where(deliveries.c.integration == where.integration)
        if where.system is not None:
            query = query.where(deliveries.c.target == where.system)
        if where.owned_by is not None:
            owned = where.owned_by
            query = query.where(
                or_(
                    deliveries.c.integration.in_(sorted(owned.integrations)),
                    deliveries.c.target.in_(sorted(owned.systems)),
                    false(),
                )
            )
        if where.error_class is not None:
            query = query.where(error_class == where.error_class.value)
        if where.dead_before is not None:
            query = query.where(dead_at < where.dead_before)
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def delivery_actions(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(delivery_actions)
                .where(delivery_actions.c.delivery_id == delivery_id)
                .order_by(delivery_actions.c.id)
            )
            found = [_row(r._mapping) for r in rows]
        for row in found:
            row["details"] = orjson.loads(row["details"])
        return found

    def redrive(self, rearms: list[Rearm], who: Operator) -> list[int]:
        if not rearms:
            return []
        redriven: list[int] = []
        with self._write() as conn:
            now = self._now(conn)
            for start in range(0, len(rearms), CHUNK):
                chunk = {r.delivery_id: r for r in rearms[start : start + CHUNK]}
                rows = conn.execute(
                    select(deliveries)
                    .where(deliveries.c.id.in_(list(chunk)), deliveries.c.status.in_(REDRIVABLE))
                    .with_for_update()
                ).all()
                updates: list[dict[str, Any]] = []
                actions: list[dict[str, Any]] = []
                for row in rows:
                    rearm = chunk[row.id]
                    mapping = rearm.mapping or row.mapping
                    payload = rearm.payload if rearm.payload is not None else row.payload
                    key = rearm.idempotency_key or row.idempotency_key
                    updates.append(
                        {"b_id": row.id, "b_mapping": mapping, "b_payload": payload, "b_key": key}
                    )
                    if payload != row.payload:
                        actions.append(
                            _action_row(
                                row.id,
                                DeliveryAction.EDIT,
                                who,
                                now,
                                {
                                    "payload_before": orjson.loads(row.payload),
                                    "payload": orjson.loads(payload),
                                },
                            )
                        )
                    actions.append(
                        _action_row(
                            row.id,
                            DeliveryAction.REDRIVE,
                            who,
                            now,
                            {
                                "status_before": row.status,
                                "attempts_before": row.attempts,
                                "mapping_before": row.mapping,
                                "mapping": mapping,
                                "key_before": row.idempotency_key,
                                "key": key,
                            },
                        )
                    )
                    redriven.append(int(row.id))
                self._rearm(conn, updates, now)
                if actions:
                    conn.execute(insert(delivery_actions), actions)
            if self.is_postgres and redriven:
                conn.execute(text("NOTIFY charter_deliveries"))
        return redriven

    def _rearm(self, conn: Connection, updates: list[dict[str, Any]], now: float) -> None:
        """Make deliveries pending and due now, with a fresh attempts counter."""
        if not updates:
            return
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == bindparam("b_id"))
            .values(
                status=DeliveryStatus.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                # The clock of end-to-end latency starts again with the new run.
                created_at=now,
                delivered_at=None,
                # Where an earlier run went stays in its attempts.
                fallback=None,
                lease_owner=None,
                lease_expires_at=None,
                mapping=bindparam("b_mapping"),
                payload=bindparam("b_payload"),
                idempotency_key=bindparam("b_key"),
            ),
            updates,
        )

    def discard(self, delivery_id: int, who: Operator) -> bool:
        with self._write() as conn:
            now = self._now(conn)
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == DeliveryStatus.DEAD.value,
                )
                .values(status=DeliveryStatus.DISCARDED.value)
            ).rowcount
            if done:
                conn.execute(
                    insert(delivery_actions),
                    _action_row(delivery_id, DeliveryAction.DISCARD, who, now, {}),
                )
        return bool(done)

    def events_for_replay(
        self, where: EventFilter, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        query = select(events).where(events.c.seq > after_seq).order_by(events.c.seq).limit(limit)
        # The hub's own events (drift notices) have no integration to replay to.
        query = query.where(events.c.system != HUB_SYSTEM)
        if where.since is not None:
            query = query.where(events.c.received_at >= where.since)
        if where.until is not None:
            query = query.where(events.c.received_at < where.until)
        if where.type is not None:
            query = query.where(events.c.type == where.type)
        if where.system is not None:
            query = query.where(events.c.system == where.system)
        if where.key is not None:
            quoted = orjson.dumps(where.key).decode()
            query = query.where(
                or_(events.c.subject == where.key, events.c.data.contains(quoted, autoescape=True))
            )
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def replay(self, replay_id: str, planned: list[ReplayDelivery], who: Operator) -> ReplayResult:
        created = rearmed = pending = discarded = 0
        with self._write() as conn:
            now = self._now(conn)
            for start in range(0, len(planned), CHUNK):
                chunk = planned[start : start + CHUNK]
                existing = {
                    (row.event_id, row.integration, row.target): row
                    for row in conn.execute(
                        select(
                            deliveries.c.id,
                            deliveries.c.event_id,
                            deliveries.c.integration,
                            deliveries.c.target,
                            deliveries.c.status,
                            deliveries.c.mapping,
                            deliveries.c.payload,
                            deliveries.c.idempotency_key,
                        )
                        .where(deliveries.c.event_id.in_(sorted({d.event_id for d in chunk})))
                        .with_for_update()
                    )
                }
                updates: list[dict[str, Any]] = []
                actions: list[dict[str, Any]] = []
                new: list[ReplayDelivery] = []
                for d in chunk:
                    row = existing.get((d.event_id, d.integration, d.target))
                    if row is None:
                        new.append(d)
                        continue
                    if row.status in PENDING_OR_HELD:
                        pending += 1
                        continue
                    if row.status == DeliveryStatus.DISCARDED.value:
                        discarded += 1
                        continue
                    same = (row.mapping, row.payload) == (d.mapping, d.payload)
                    key = row.idempotency_key if same else d.changed_key
                    updates.append(
                        {
                            "b_id": row.id,
                            "b_mapping": d.mapping,
                            "b_payload": d.payload,
                            "b_key": key,
                        }
                    )
                    actions.append(
                        _action_row(
                            row.id,
                            DeliveryAction.REPLAY,
                            who,
                            now,
                            {
                                "status_before": row.status,
                                "mapping_before": row.mapping,
                                "mapping": d.mapping,
                                "key_before": row.idempotency_key,
                                "key": key,
                            },
                            replay_id,
                        )
                    )
                self._rearm(conn, updates, now)
                rearmed += len(updates)
                if new:
                    ids = conn.execute(
                        insert(deliveries).returning(deliveries.c.id, sort_by_parameter_order=True),
                        [
                            {
                                "event_id": d.event_id,
                                "integration": d.integration,
                                "target": d.target,
                                "tier": d.tier,
                                "status": DeliveryStatus.PENDING.value,
                                "attempts": 0,
                                "next_attempt_at": now,
                                "idempotency_key": d.idempotency_key,
                                "mapping": d.mapping,
                                "payload": d.payload,
                                "created_at": now,
                            }
                            for d in new
                        ],
                    ).scalars()
                    actions.extend(
                        _action_row(
                            int(ident),
                            DeliveryAction.REPLAY,
                            who,
                            now,
                            {"status_before": None, "mapping": d.mapping, "key": d.idempotency_key},
                            replay_id,
                        )
                        for ident, d in zip(ids, new, strict=True)
                    )
                    created += len(new)
                if actions:
                    conn.execute(insert(delivery_actions), actions)
            if self.is_postgres and (created or rearmed):
                conn.execute(text("NOTIFY charter_deliveries"))
        return ReplayResult(created=created, rearmed=rearmed, pending=pending, discarded=discarded)

    # field ownership and drift

    def _append_governance(self, conn: Connection, appended: list[NewEvent], now: float) -> None:
        """Held writes and write decisions of the appended events, in their transaction."""
        holds = held_rows(appended, now)
        if holds:
            conn.execute(insert(quarantine), holds)
        self._add_writes(conn, [w for e in appended for w in e.writes], now)

    def _upsert_counts(self, table: Any, keys: list[str], rows: list[dict[str, Any]]) -> Any:
        """``INSERT ... ON CONFLICT DO UPDATE`` adding ``count`` and moving the last time on."""
        dialect = postgresql if self.is_postgres else sqlite
        stmt = dialect.insert(table)
        last = "last_seen" if "last_seen" in table.c else "last_at"
        return stmt.on_conflict_do_update(
            index_elements=keys,
            set_={
                "count": table.c["count"] + stmt.excluded["count"],
                last: case(
                    (stmt.excluded[last] > table.c[last], stmt.excluded[last]),
                    else_=table.c[last],
                ),
            },
        )

    def _add_writes(self, conn: Connection, writes: list[FieldWrite], now: float) -> None:
        rows = write_rows(writes, now)
        if rows:
            conn.execute(
                self._upsert_counts(
                    field_writes, ["system", "entity", "field", "policy", "outcome"], rows
                ),
                rows,
            )

    def count_writes(self, writes: list[FieldWrite]) -> None:
        if not writes:
            return
        with self._write() as conn:
            self._add_writes(conn, writes, self._now(conn))

    def write_counts(self) -> list[dict[str, Any]]:
        query = select(field_writes).order_by(
            field_writes.c.system, field_writes.c.entity, field_writes.c.field
        )
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def list_quarantine(
        self, team: str | None = None, status: QuarantineStatus | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
        if team is not None:
            query = query.where(quarantine.c.team == team)
        if status is not None:
            query = query.where(quarantine.c.status == status.value)
        with self.engine.connect() as conn:
            rows = [_row(r._mapping) for r in conn.execute(query)]
            for row in rows:
                row["deliveries"] = list(
                    conn.execute(
                        select(deliveries.c.id)
                        .where(
                            deliveries.c.event_id == row["event_id"],
                            deliveries.c.integration == row["integration"],
                        )
                        .order_by(deliveries.c.id)
                    ).scalars()
                )
        return rows

    def decide_quarantine(self, hold_id: int, accept: bool, who: Operator) -> dict[str, Any]:
        with self._write() as conn:
            now = self._now(conn)
            hold = conn.execute(
                select(quarantine).where(quarantine.c.id == hold_id).with_for_update()
            ).first()
            if hold is None:
                raise NotFound(
                    f"there is no held write {hold_id}", fix="list them with GET /v1/quarantine"
                )
            if hold.status != QuarantineStatus.OPEN.value:
                raise Conflict(
                    f"held write {hold_id} was already {hold.status} by {hold.decided_by}",
                    fix="list open ones with GET /v1/quarantine?status=open",
                )
            outcome = QuarantineStatus.ACCEPTED if accept else QuarantineStatus.REJECTED
            conn.execute(
                update(quarantine)
                .where(quarantine.c.id == hold_id)
                .values(status=outcome.value, decided_at=now, decided_by=who.by, reason=who.reason)
            )
            still_open = conn.execute(
                select(func.count())
                .select_from(quarantine)
                .where(
                    quarantine.c.event_id == hold.event_id,
                    quarantine.c.integration == hold.integration,
                    quarantine.c.status == QuarantineStatus.OPEN.value,
                )
            ).scalar_one()
            held = conn.execute(
                select(deliveries.c.id, deliveries.c.payload)
                .where(
                    deliveries.c.event_id == hold.event_id,
                    deliveries.c.integration == hold.integration,
                    deliveries.c.status == DeliveryStatus.QUARANTINED.value,
                )
                .with_for_update()
            ).all()
            released: list[int] = []
            actions: list[dict[str, Any]] = []
            for row in held:
                payload = row.payload if accept else released_payload(row.payload, hold.field)
                values: dict[str, Any] = {"payload": payload}
                if not still_open:
                    values |= {"status": DeliveryStatus.PENDING.value, "next_attempt_at": now}
                    released.append(int(row.id))
                conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
                details: dict[str, Any] = {"hold": hold_id, "field": hold.field}
                if payload != row.payload:
                    details |= {
                        "payload_before": orjson.loads(row.payload),
                        "payload": orjson.loads(payload),
                    }
                action = DeliveryAction.ACCEPT if accept else DeliveryAction.REJECT
                actions.append(_action_row(row.id, action, who, now, details))
            if actions:
                conn.execute(insert(delivery_actions), actions)
            write = FieldWrite(hold.system, hold.entity, hold.field, "quarantine", outcome.value)
            self._add_writes(conn, [write], now)
            if self.is_postgres and released:
                conn.execute(text("NOTIFY charter_deliveries"))
            decided = conn.execute(select(quarantine).where(quarantine.c.id == hold_id)).one()
        return _row(decided._mapping) | {"released": released}

    def record_drift(self, counts: list[DriftCount]) -> int:
        if not counts:
            return 0
        keys = ("system", "event_type", "kind", "field", "value")
        rows = [
            {
                "system": c.system,
                "event_type": c.event_type,
                "kind": c.kind,
                "field": c.field,
                "value": c.value,
                "count": c.count,
                "first_seen": c.first_seen,
                "last_seen": c.last_seen,
            }
            for c in counts
        ]
        with self._write() as conn:
            now = self._now(conn)
            # Insert what is new first: a row this statement created is seen for the first
            # time, also with many hub processes flushing at once.
            new = {
                tuple(r)
                for r in conn.execute(
                    self._insert_ignore(drift).returning(*(drift.c[k] for k in keys)), rows
                )
            }
            existing = [r for r in rows if tuple(r[k] for k in keys) not in new]
            if existing:
                conn.execute(
                    update(drift)
                    .where(*(drift.c[k] == bindparam(f"b_{k}") for k in keys))
                    .values(
                        count=drift.c["count"] + bindparam("b_count"),
                        last_seen=case(
                            (bindparam("b_last") > drift.c.last_seen, bindparam("b_last")),
                            else_=drift.c.last_seen,
                        ),
                    ),
                    [
                        {f"b_{k}": r[k] for k in keys}
                        | {"b_count": r["count"], "b_last": r["last_seen"]}
                        for r in existing
                    ],
                )
            told = [
                drift_notice(c, now)
                for c in counts
                if (c.system, c.event_type, c.kind, c.field, c.value) in new and c.kind != "seen"
            ]
            if told:
                conn.execute(insert(notices), told)
                # Logged as events too; a key noticed again (drift rows purged) is logged once.
                conn.execute(self._insert_ignore(events), [drift_event(n, now) for n in told])
        return len(new)

    def drift_counts(
        self, system: str | None = None, since: float | None = None, kinds: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        query = select(drift).order_by(
            drift.c.system, drift.c.event_type, drift.c.kind, drift.c.field, drift.c.value
        )
        if system is not None:
            query = query.where(drift.c.system == system)
        if since is not None:
            query = query.where(drift.c.last_seen >= since)
        if kinds:
            query = query.where(drift.c.kind.in_(kinds))
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(query)]

    def list_notices(self, team: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(notices).order_by(notices.c.id.desc()).limit(limit)
        if team is not None:
            query = query.where(notices.c.team == team)
        with self.engine.connect() as conn:
            rows = [_row(r._mapping) for r in conn.execute(query)]
            for row in rows:
                row["detail"] = orjson.loads(row["detail"])
            ids = [i for i in (notice_event_id(r["kind"], r["detail"]) for r in rows) if i]
            logged = {
                e["id"]: e
                for e in (
                    _row(r._mapping)
                    for r in conn.execute(select(events).where(events.c.id.in_(ids)))
                )
            }
        with_events(rows, logged)
        return rows

    # lineage

    def record_trail(self, entity: str, key: str, limit: int = 1000) -> RecordTrail:
        found = (
            select(record_keys.c.event_id, record_keys.c.integration, record_keys.c.mapping)
            .where(record_keys.c.entity == entity, record_keys.c.key == key)
            .order_by(record_keys.c.id)
            .limit(limit)
            .subquery()
        )
        with self.engine.connect() as conn:
            event_rows = [
                _row(r._mapping)
                for r in conn.execute(
                    select(events, found.c.integration, found.c.mapping)
                    .join(found, found.c.event_id == events.c.id)
                    .order_by(events.c.seq)
                )
            ]
            ids = sorted({row["id"] for row in event_rows})
            delivery_rows: list[dict[str, Any]] = []
            if ids:
                delivery_rows = [
                    _row(r._mapping)
                    for r in conn.execute(
                        select(deliveries)
                        .where(deliveries.c.event_id.in_(ids))
                        .order_by(deliveries.c.id)
                    )
                ]
            numbers = [row["id"] for row in delivery_rows]
            attempt_rows: list[dict[str, Any]] = []
            action_rows: list[dict[str, Any]] = []
            if numbers:
                attempt_rows = [
                    _row(r._mapping)
                    for r in conn.execute(
                        select(attempts)
                        .where(attempts.c.delivery_id.in_(numbers))
                        .order_by(attempts.c.id)
                    )
                ]
                action_rows = [
                    _row(r._mapping)
                    for r in conn.execute(
                        select(delivery_actions)
                        .where(delivery_actions.c.delivery_id.in_(numbers))
                        .order_by(delivery_actions.c.id)
                    )
                ]
        for row in action_rows:
            row["details"] = orjson.loads(row["details"])
        return RecordTrail(event_rows, delivery_rows, attempt_rows, action_rows)

    def close(self) -> None:
        self.engine.dispose()
