"""The SQLAlchemy 2 Core implementation of :class:`Store` for SQLite and PostgreSQL.

Ingest, delivery and reading are here; dead letters and replay in
:mod:`charter.store.sql_deadletters`; ownership, drift and lineage in
:mod:`charter.store.sql_governance`; the engine and transactions in
:mod:`charter.store.sql_base`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, case, func, insert, or_, select, text, update

from charter.store.protocol import (
    HUB_SYSTEM,
    AttemptResult,
    ClaimedDelivery,
    DeliveryCounts,
    DeliveryStatus,
    IdempotencyRecord,
    IngestBatch,
    IngestResult,
    NewEvent,
    Outcome,
    record_rows,
)
from charter.store.schema import attempts, deliveries, events, idempotency_keys, record_keys
from charter.store.sql_base import (
    AppendExtension,
    create_store_engine,
    row_dict,
    unavailable_errors,
)
from charter.store.sql_deadletters import DeadLetterSql
from charter.store.sql_governance import GovernanceSql


class SqlStore(DeadLetterSql, GovernanceSql):
    """:class:`Store` on SQLite or PostgreSQL."""

    @classmethod
    def from_url(cls, url: str) -> SqlStore:
        return cls(create_store_engine(url))

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
        claimed = [ClaimedDelivery(**row_dict(r._mapping)) for r in rows]
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
        with unavailable_errors(), self.engine.connect() as conn:
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
            return [row_dict(r._mapping) for r in conn.execute(query)]

    def get_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return row_dict(row._mapping) if row is not None else None

    def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(attempts)
                .where(attempts.c.delivery_id == delivery_id)
                .order_by(attempts.c.id)
            )
            return [row_dict(r._mapping) for r in rows]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).first()
        return row_dict(row._mapping) if row is not None else None

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["AppendExtension", "SqlStore", "create_store_engine"]
