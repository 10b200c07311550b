"""Field ownership, quarantine, drift, notices and lineage on the SQL store."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, case, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from charter.errors import Conflict, NotFound
from charter.store.protocol import (
    DeliveryAction,
    DeliveryStatus,
    DriftCount,
    FieldWrite,
    NewEvent,
    Operator,
    QuarantineStatus,
    RecordTrail,
    action_row,
    drift_event,
    drift_notice,
    held_rows,
    notice_event_id,
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
    notices,
    quarantine,
    record_keys,
)
from charter.store.sql_base import SqlBase, row_dict


class GovernanceSql(SqlBase):
    """Ownership, drift and lineage: what :class:`~charter.store.sql.SqlStore` keeps of them."""

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
                    (stmt.excluded[last] > table.c[last], stmt.excluded[last]), else_=table.c[last]
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
            return [row_dict(r._mapping) for r in conn.execute(query)]

    def list_quarantine(
        self, team: str | None = None, status: QuarantineStatus | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
        if team is not None:
            query = query.where(quarantine.c.team == team)
        if status is not None:
            query = query.where(quarantine.c.status == status.value)
        with self.engine.connect() as conn:
            rows = [row_dict(r._mapping) for r in conn.execute(query)]
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
                actions.append(action_row(row.id, action, who, now, details))
            if actions:
                conn.execute(insert(delivery_actions), actions)
            write = FieldWrite(hold.system, hold.entity, hold.field, "quarantine", outcome.value)
            self._add_writes(conn, [write], now)
            if self.is_postgres and released:
                conn.execute(text("NOTIFY charter_deliveries"))
            decided = conn.execute(select(quarantine).where(quarantine.c.id == hold_id)).one()
        return row_dict(decided._mapping) | {"released": released}

    def record_drift(self, counts: list[DriftCount]) -> int:
        if not counts:
            return 0
        keys = ("system", "event_type", "kind", "field", "value")
        rows = [c.row() for c in counts]
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
            return [row_dict(r._mapping) for r in conn.execute(query)]

    def list_notices(self, team: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(notices).order_by(notices.c.id.desc()).limit(limit)
        if team is not None:
            query = query.where(notices.c.team == team)
        with self.engine.connect() as conn:
            rows = [row_dict(r._mapping) for r in conn.execute(query)]
            for row in rows:
                row["detail"] = orjson.loads(row["detail"])
            ids = [i for i in (notice_event_id(r["kind"], r["detail"]) for r in rows) if i]
            logged = {
                e["id"]: e
                for e in (
                    row_dict(r._mapping)
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
                row_dict(r._mapping)
                for r in conn.execute(
                    select(events, found.c.integration, found.c.mapping)
                    .join(found, found.c.event_id == events.c.id)
                    .order_by(events.c.seq)
                )
            ]
            ids = sorted({row["id"] for row in event_rows})
            delivery_rows = _rows_where_in(conn, deliveries, deliveries.c.event_id, ids)
            numbers = [row["id"] for row in delivery_rows]
            attempt_rows = _rows_where_in(conn, attempts, attempts.c.delivery_id, numbers)
            action_rows = _rows_where_in(
                conn, delivery_actions, delivery_actions.c.delivery_id, numbers
            )
        for row in action_rows:
            row["details"] = orjson.loads(row["details"])
        return RecordTrail(event_rows, delivery_rows, attempt_rows, action_rows)


def _rows_where_in(
    conn: Connection, table: Any, column: Any, values: list[Any]
) -> list[dict[str, Any]]:
    """The rows of ``table`` whose ``column`` is one of ``values``, in id order (none for no
    values, without a query)."""
    if not values:
        return []
    found = conn.execute(select(table).where(column.in_(values)).order_by(table.c.id))
    return [row_dict(r._mapping) for r in found]
