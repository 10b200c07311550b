"""Dead letters, redrive, discard and replay on the SQL store."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    String,
    bindparam,
    case,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from charter.store.protocol import (
    ERROR_WORDS,
    HUB_SYSTEM,
    DeadLetterFilter,
    DeliveryAction,
    DeliveryStatus,
    EventFilter,
    Operator,
    Rearm,
    ReplayDelivery,
    ReplayResult,
    action_row,
    rearmed,
)
from charter.store.schema import attempts, deliveries, delivery_actions, events
from charter.store.sql_base import SqlBase, row_dict

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


class DeadLetterSql(SqlBase):
    """Dead letters and replay: what :class:`~charter.store.sql.SqlStore` does with them."""

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
            return [row_dict(r._mapping) for r in conn.execute(query)]

    def delivery_actions(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(delivery_actions)
                .where(delivery_actions.c.delivery_id == delivery_id)
                .order_by(delivery_actions.c.id)
            )
            found = [row_dict(r._mapping) for r in rows]
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
                            action_row(
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
                        action_row(
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
                **rearmed(now),
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
                    deliveries.c.id == delivery_id, deliveries.c.status == DeliveryStatus.DEAD.value
                )
                .values(status=DeliveryStatus.DISCARDED.value)
            ).rowcount
            if done:
                conn.execute(
                    insert(delivery_actions),
                    action_row(delivery_id, DeliveryAction.DISCARD, who, now, {}),
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
            return [row_dict(r._mapping) for r in conn.execute(query)]

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
                        action_row(
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
                        action_row(
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
