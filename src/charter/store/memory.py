"""An in-memory :class:`Store` for unit tests and experiments.

It keeps the contract of :class:`~charter.store.sql.SqlStore`: events are
deduplicated by id within and across batches, deliveries are leased to one
worker at a time, a lease that expires makes its delivery claimable again and
results are only recorded for deliveries the recording worker still holds.
Time comes from an injectable clock, so tests can move it instead of sleeping.

It is not durable: everything is lost when the process ends. One lock guards
all state, so it is safe to share between threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from charter.errors import Conflict, NotFound, StoreError
from charter.store.protocol import (
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
    action_row,
    drift_event,
    drift_notice,
    error_class,
    held_rows,
    notice_event_id,
    rearmed,
    record_rows,
    released_payload,
    with_events,
    write_rows,
)

REDRIVABLE = (DeliveryStatus.DEAD.value, DeliveryStatus.DISCARDED.value)


class MemoryStore:
    """:class:`Store` held in dictionaries; rows read back have the SQL store's columns."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, dict[str, Any]] = {}
        self._deliveries: dict[int, dict[str, Any]] = {}
        # Ids of pending deliveries, so claiming does not walk finished ones.
        self._pending: set[int] = set()
        self._attempts: dict[int, list[dict[str, Any]]] = {}
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._event_seq = itertools.count(1)
        self._delivery_seq = itertools.count(1)
        self._attempt_seq = itertools.count(1)
        self._actions: list[dict[str, Any]] = []
        self._action_seq = itertools.count(1)
        self._holds: dict[int, dict[str, Any]] = {}
        self._hold_seq = itertools.count(1)
        self._writes: dict[tuple[str, ...], dict[str, Any]] = {}
        self._drift: dict[tuple[str, ...], dict[str, Any]] = {}
        self._notices: list[dict[str, Any]] = []
        self._notice_seq = itertools.count(1)
        self._records: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # ingest

    def append(self, batches: list[IngestBatch]) -> list[IngestResult]:
        results: list[IngestResult] = []
        with self._lock:
            self._check_new_deliveries(batches)
            now = self._clock()
            for batch in batches:
                record = batch.idempotency
                if record is not None:
                    if (record.system, record.key) in self._idempotency:
                        # Another request holds the key: nothing of this batch is appended.
                        results.append(IngestResult(appended=[], duplicates=[], key_taken=True))
                        continue
                    self._idempotency[(record.system, record.key)] = record
                first: dict[str, NewEvent] = {}
                for e in batch.events:
                    first.setdefault(e.id, e)
                unique = [e for e in first.values() if e.id not in self._events]
                for e in unique:
                    self._append_event(e, now)
                for row in held_rows(unique, now):
                    ident = next(self._hold_seq)
                    self._holds[ident] = {"id": ident, **row}
                self._add_writes([w for e in unique for w in e.writes], now)
                for row in record_rows(unique, now):
                    self._records.setdefault((row["entity"], row["key"]), []).append(row)
                inserted = {e.id for e in unique}
                counted: set[str] = set()
                duplicates: list[str] = []
                for e in batch.events:
                    if e.id in inserted and e.id not in counted:
                        counted.add(e.id)
                    else:
                        duplicates.append(e.id)
                results.append(IngestResult(appended=[e.id for e in unique], duplicates=duplicates))
        return results

    def _check_new_deliveries(self, batches: list[IngestBatch]) -> None:
        """Refuse, before anything changes, what the SQL store's unique constraint refuses."""
        seen: set[str] = set()
        for e in (e for batch in batches for e in batch.events):
            if e.id in seen or e.id in self._events:
                continue
            seen.add(e.id)
            routes = [(d.integration, d.target) for d in e.deliveries]
            if len(routes) != len(set(routes)):
                raise StoreError(
                    f"event {e.id} has two deliveries for one integration and target",
                    fix="create one delivery per integration and target system",
                )

    def _append_event(self, e: NewEvent, now: float) -> None:
        self._events[e.id] = {
            "seq": next(self._event_seq),
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
        held = {h.integration for h in e.holds}
        for d in e.deliveries:
            delivery_id = next(self._delivery_seq)
            self._deliveries[delivery_id] = {
                "id": delivery_id,
                "event_id": e.id,
                "integration": d.integration,
                "target": d.target,
                "tier": d.tier,
                "status": (
                    DeliveryStatus.QUARANTINED.value
                    if d.integration in held
                    else DeliveryStatus.PENDING.value
                ),
                "attempts": 0,
                "next_attempt_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "idempotency_key": d.idempotency_key,
                "mapping": d.mapping,
                "payload": d.payload,
                "created_at": now,
                "delivered_at": None,
                "last_status": None,
                "last_error": None,
                "fallback": None,
            }
            if d.integration not in held:
                self._pending.add(delivery_id)

    def find_idempotency_record(self, system: str, key: str) -> IdempotencyRecord | None:
        with self._lock:
            return self._idempotency.get((system, key))

    # delivery

    def claim_due_deliveries(
        self, worker: str, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]:
        with self._lock:
            now = self._clock()
            due = [
                row
                for row in (self._deliveries[i] for i in self._pending)
                if row["next_attempt_at"] <= now
                and (row["lease_expires_at"] is None or row["lease_expires_at"] < now)
            ]
            due.sort(key=lambda row: (row["tier"], row["next_attempt_at"], row["id"]))
            claimed: list[ClaimedDelivery] = []
            for row in due[: max(limit, 0)]:
                row["lease_owner"] = worker
                row["lease_expires_at"] = now + lease_seconds
                claimed.append(
                    ClaimedDelivery(
                        id=row["id"],
                        event_id=row["event_id"],
                        integration=row["integration"],
                        target=row["target"],
                        tier=row["tier"],
                        attempts=row["attempts"],
                        idempotency_key=row["idempotency_key"],
                        mapping=row["mapping"],
                        payload=row["payload"],
                        created_at=row["created_at"],
                    )
                )
        claimed.sort(key=lambda d: (d.tier, d.id))
        return claimed

    def record_attempts(self, worker: str, results: list[AttemptResult]) -> int:
        recorded = 0
        with self._lock:
            now = self._clock()
            for r in results:
                row = self._deliveries.get(r.delivery_id)
                if row is None or row["lease_owner"] != worker:
                    continue  # the lease was lost; another worker owns this delivery now
                row["lease_owner"] = None
                row["lease_expires_at"] = None
                if r.outcome is Outcome.RELEASED:
                    continue
                row["attempts"] += 1
                row["last_status"] = r.status_code
                row["last_error"] = r.error
                row["fallback"] = r.fallback
                if r.outcome is Outcome.DELIVERED:
                    row["status"] = DeliveryStatus.DELIVERED.value
                    row["delivered_at"] = now
                    self._pending.discard(row["id"])
                elif r.outcome is Outcome.DEAD:
                    row["status"] = DeliveryStatus.DEAD.value
                    self._pending.discard(row["id"])
                else:
                    row["next_attempt_at"] = r.next_attempt_at or now
                self._attempts.setdefault(r.delivery_id, []).append(
                    {
                        "id": next(self._attempt_seq),
                        "delivery_id": r.delivery_id,
                        "number": row["attempts"],
                        "started_at": r.started_at,
                        "latency_ms": r.latency_ms,
                        "status_code": r.status_code,
                        "outcome": r.outcome.value,
                        "error": r.error,
                        "fallback": r.fallback,
                    }
                )
                recorded += 1
        return recorded

    def release_leases(self, worker: str | None) -> int:
        """Release the leases of ``worker``, or every lease when ``worker`` is None."""
        released = 0
        with self._lock:
            for row in self._deliveries.values():
                owner = row["lease_owner"]
                if owner is not None and (worker is None or owner == worker):
                    row["lease_owner"] = None
                    row["lease_expires_at"] = None
                    released += 1
        return released

    def next_due_at(self) -> float | None:
        with self._lock:
            due = [
                row["lease_expires_at"]
                if row["lease_expires_at"] is not None
                else row["next_attempt_at"]
                for row in (self._deliveries[i] for i in self._pending)
            ]
        return float(min(due)) if due else None

    # reading

    def delivery_counts(self) -> DeliveryCounts:
        with self._lock:
            rows = list(self._deliveries.values())
            # The hub's own events (drift notices) were not received from a system.
            received = sum(1 for e in self._events.values() if e["system"] != HUB_SYSTEM)
        statuses = [row["status"] for row in rows]
        return DeliveryCounts(
            received=received,
            pending=statuses.count(DeliveryStatus.PENDING.value),
            delivered=statuses.count(DeliveryStatus.DELIVERED.value),
            dead=statuses.count(DeliveryStatus.DEAD.value),
            retried=sum(1 for row in rows if row["attempts"] > 1),
            attempts=sum(row["attempts"] for row in rows),
            quarantined=statuses.count(DeliveryStatus.QUARANTINED.value),
            fallback=sum(1 for row in rows if _fallen_back(row)),
        )

    def fallback_counts(self) -> dict[str, int]:
        with self._lock:
            names = [row["integration"] for row in self._deliveries.values() if _fallen_back(row)]
        return {name: names.count(name) for name in sorted(set(names))}

    def latencies(self, limit: int = 100_000) -> list[float]:
        with self._lock:
            delivered = [
                row
                for row in self._deliveries.values()
                if row["status"] == DeliveryStatus.DELIVERED.value
            ]
        delivered.sort(key=lambda row: row["id"], reverse=True)
        return [float(row["delivered_at"] - row["created_at"]) for row in delivered[:limit]]

    def list_deliveries(
        self, status: DeliveryStatus | None = None, integration: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self._lock:
            rows = [
                dict(row)
                for row in self._deliveries.values()
                if (status is None or row["status"] == status.value)
                and (integration is None or row["integration"] == integration)
            ]
        rows.sort(key=lambda row: row["id"], reverse=True)
        return rows[:limit]

    def get_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._deliveries.get(delivery_id)
            return dict(row) if row is not None else None

    def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a) for a in self._attempts.get(delivery_id, [])]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._events.get(event_id)
            return dict(row) if row is not None else None

    # dead letters and replay

    def _dead_at(self, row: dict[str, Any]) -> float:
        tried = self._attempts.get(row["id"])
        return float(max(a["started_at"] for a in tried) if tried else row["next_attempt_at"])

    def _matches(self, row: dict[str, Any], where: DeadLetterFilter) -> bool:
        owned = where.owned_by
        return (
            row["status"] == where.status.value
            and (where.integration is None or row["integration"] == where.integration)
            and (where.system is None or row["target"] == where.system)
            and (
                owned is None
                or row["integration"] in owned.integrations
                or row["target"] in owned.systems
            )
            and (
                where.error_class is None
                or error_class(row["last_status"], row["last_error"]) == where.error_class
            )
            and (where.dead_before is None or self._dead_at(row) < where.dead_before)
        )

    def list_dead_letters(self, where: DeadLetterFilter, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = [
                dict(row)
                | {
                    "error_class": error_class(row["last_status"], row["last_error"]),
                    "dead_at": self._dead_at(row),
                }
                for row in self._deliveries.values()
                if self._matches(row, where)
            ]
        for row in rows:
            if row["error_class"] is not None:
                row["error_class"] = row["error_class"].value
        rows.sort(key=lambda row: row["id"], reverse=True)
        return rows[:limit]

    def delivery_actions(self, delivery_id: int) -> list[dict[str, Any]]:
        with self._lock:
            found = [dict(a) for a in self._actions if a["delivery_id"] == delivery_id]
        for row in found:
            row["details"] = orjson.loads(row["details"])
        return found

    def _record(
        self,
        delivery_id: int,
        action: DeliveryAction,
        who: Operator,
        now: float,
        details: dict[str, Any],
        replay_id: str | None = None,
    ) -> None:
        self._actions.append(
            {
                "id": next(self._action_seq),
                **action_row(delivery_id, action, who, now, details, replay_id),
            }
        )

    def _rearm(self, row: dict[str, Any], mapping: str, payload: str, key: str, now: float) -> None:
        row.update(rearmed(now), mapping=mapping, payload=payload, idempotency_key=key)
        self._pending.add(row["id"])

    def redrive(self, rearms: list[Rearm], who: Operator) -> list[int]:
        redriven: list[int] = []
        with self._lock:
            now = self._clock()
            for rearm in rearms:
                row = self._deliveries.get(rearm.delivery_id)
                if row is None or row["status"] not in REDRIVABLE:
                    continue
                before = dict(row)
                mapping = rearm.mapping or row["mapping"]
                payload = rearm.payload if rearm.payload is not None else row["payload"]
                key = rearm.idempotency_key or row["idempotency_key"]
                if payload != row["payload"]:
                    self._record(
                        row["id"],
                        DeliveryAction.EDIT,
                        who,
                        now,
                        {
                            "payload_before": orjson.loads(row["payload"]),
                            "payload": orjson.loads(payload),
                        },
                    )
                self._rearm(row, mapping, payload, key, now)
                self._record(
                    row["id"],
                    DeliveryAction.REDRIVE,
                    who,
                    now,
                    {
                        "status_before": before["status"],
                        "attempts_before": before["attempts"],
                        "mapping_before": before["mapping"],
                        "mapping": mapping,
                        "key_before": before["idempotency_key"],
                        "key": key,
                    },
                )
                redriven.append(row["id"])
        return redriven

    def discard(self, delivery_id: int, who: Operator) -> bool:
        with self._lock:
            row = self._deliveries.get(delivery_id)
            if row is None or row["status"] != DeliveryStatus.DEAD.value:
                return False
            row["status"] = DeliveryStatus.DISCARDED.value
            self._record(delivery_id, DeliveryAction.DISCARD, who, self._clock(), {})
            return True

    def events_for_replay(
        self, where: EventFilter, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        quoted = orjson.dumps(where.key).decode() if where.key is not None else ""
        with self._lock:
            found = [
                dict(e)
                for e in self._events.values()
                if e["seq"] > after_seq
                and e["system"] != HUB_SYSTEM
                and (where.since is None or e["received_at"] >= where.since)
                and (where.until is None or e["received_at"] < where.until)
                and (where.type is None or e["type"] == where.type)
                and (where.system is None or e["system"] == where.system)
                and (where.key is None or e["subject"] == where.key or quoted in e["data"])
            ]
        found.sort(key=lambda e: e["seq"])
        return found[:limit]

    def replay(self, replay_id: str, planned: list[ReplayDelivery], who: Operator) -> ReplayResult:
        created = rearmed = pending = discarded = 0
        with self._lock:
            now = self._clock()
            routes = {
                (row["event_id"], row["integration"], row["target"]): row
                for row in self._deliveries.values()
            }
            for d in planned:
                row = routes.get((d.event_id, d.integration, d.target))
                if row is None:
                    delivery_id = next(self._delivery_seq)
                    self._deliveries[delivery_id] = {
                        "id": delivery_id,
                        "event_id": d.event_id,
                        "integration": d.integration,
                        "target": d.target,
                        "tier": d.tier,
                        "status": DeliveryStatus.PENDING.value,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "lease_owner": None,
                        "lease_expires_at": None,
                        "idempotency_key": d.idempotency_key,
                        "mapping": d.mapping,
                        "payload": d.payload,
                        "created_at": now,
                        "delivered_at": None,
                        "last_status": None,
                        "last_error": None,
                        "fallback": None,
                    }
                    routes[(d.event_id, d.integration, d.target)] = self._deliveries[delivery_id]
                    self._pending.add(delivery_id)
                    self._record(
                        delivery_id,
                        DeliveryAction.REPLAY,
                        who,
                        now,
                        {"status_before": None, "mapping": d.mapping, "key": d.idempotency_key},
                        replay_id,
                    )
                    created += 1
                    continue
                if row["status"] in (
                    DeliveryStatus.PENDING.value,
                    DeliveryStatus.QUARANTINED.value,
                ):
                    pending += 1
                    continue
                if row["status"] == DeliveryStatus.DISCARDED.value:
                    discarded += 1
                    continue
                same = (row["mapping"], row["payload"]) == (d.mapping, d.payload)
                key = row["idempotency_key"] if same else d.changed_key
                details = {
                    "status_before": row["status"],
                    "mapping_before": row["mapping"],
                    "mapping": d.mapping,
                    "key_before": row["idempotency_key"],
                    "key": key,
                }
                self._rearm(row, d.mapping, d.payload, key, now)
                self._record(row["id"], DeliveryAction.REPLAY, who, now, details, replay_id)
                rearmed += 1
        return ReplayResult(created=created, rearmed=rearmed, pending=pending, discarded=discarded)

    # field ownership and drift

    def _add_writes(self, writes: list[FieldWrite], now: float) -> None:
        for row in write_rows(writes, now):
            key = (row["system"], row["entity"], row["field"], row["policy"], row["outcome"])
            found = self._writes.setdefault(key, row | {"count": 0})
            found["count"] += row["count"]
            found["last_at"] = now

    def count_writes(self, writes: list[FieldWrite]) -> None:
        with self._lock:
            self._add_writes(writes, self._clock())

    def write_counts(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(row) for row in self._writes.values()]
        rows.sort(key=lambda r: (r["system"], r["entity"], r["field"]))
        return rows

    def list_quarantine(
        self, team: str | None = None, status: QuarantineStatus | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self._lock:
            rows = [
                dict(row)
                | {
                    "deliveries": sorted(
                        d["id"]
                        for d in self._deliveries.values()
                        if (d["event_id"], d["integration"])
                        == (row["event_id"], row["integration"])
                    )
                }
                for row in self._holds.values()
                if (team is None or row["team"] == team)
                and (status is None or row["status"] == status.value)
            ]
        rows.sort(key=lambda r: r["id"], reverse=True)
        return rows[:limit]

    def decide_quarantine(self, hold_id: int, accept: bool, who: Operator) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            hold = self._holds.get(hold_id)
            if hold is None:
                raise NotFound(
                    f"there is no held write {hold_id}", fix="list them with GET /v1/quarantine"
                )
            if hold["status"] != QuarantineStatus.OPEN.value:
                raise Conflict(
                    f"held write {hold_id} was already {hold['status']} by {hold['decided_by']}",
                    fix="list open ones with GET /v1/quarantine?status=open",
                )
            outcome = QuarantineStatus.ACCEPTED if accept else QuarantineStatus.REJECTED
            hold.update(status=outcome.value, decided_at=now, decided_by=who.by, reason=who.reason)
            route = (hold["event_id"], hold["integration"])
            still_open = any(
                (h["event_id"], h["integration"]) == route
                and h["status"] == QuarantineStatus.OPEN.value
                for h in self._holds.values()
            )
            released: list[int] = []
            for row in sorted(self._deliveries.values(), key=lambda d: d["id"]):
                if (row["event_id"], row["integration"]) != route or (
                    row["status"] != DeliveryStatus.QUARANTINED.value
                ):
                    continue
                before = row["payload"]
                if not accept:
                    row["payload"] = released_payload(before, hold["field"])
                if not still_open:
                    row.update(status=DeliveryStatus.PENDING.value, next_attempt_at=now)
                    self._pending.add(row["id"])
                    released.append(row["id"])
                details: dict[str, Any] = {"hold": hold_id, "field": hold["field"]}
                if row["payload"] != before:
                    details |= {
                        "payload_before": orjson.loads(before),
                        "payload": orjson.loads(row["payload"]),
                    }
                action = DeliveryAction.ACCEPT if accept else DeliveryAction.REJECT
                self._record(row["id"], action, who, now, details)
            write = FieldWrite(
                hold["system"], hold["entity"], hold["field"], "quarantine", outcome.value
            )
            self._add_writes([write], now)
            return dict(hold) | {"released": released}

    def record_drift(self, counts: list[DriftCount]) -> int:
        new = 0
        with self._lock:
            now = self._clock()
            for c in counts:
                key = (c.system, c.event_type, c.kind, c.field, c.value)
                row = self._drift.get(key)
                if row is None:
                    new += 1
                    self._drift[key] = c.row()
                    if c.kind != "seen":
                        notice = drift_notice(c, now)
                        self._notices.append({"id": next(self._notice_seq), **notice})
                        event = drift_event(notice, now)
                        if event["id"] not in self._events:
                            self._events[event["id"]] = {"seq": next(self._event_seq), **event}
                    continue
                row["count"] += c.count
                row["last_seen"] = max(row["last_seen"], c.last_seen)
        return new

    def drift_counts(
        self, system: str | None = None, since: float | None = None, kinds: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        with self._lock:
            rows = [
                dict(row)
                for key, row in sorted(self._drift.items())
                if (system is None or row["system"] == system)
                and (since is None or row["last_seen"] >= since)
                and (not kinds or row["kind"] in kinds)
            ]
        return rows

    def list_notices(self, team: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(n) for n in self._notices if team is None or n["team"] == team]
            rows.sort(key=lambda r: r["id"], reverse=True)
            rows = rows[:limit]
            for row in rows:
                row["detail"] = orjson.loads(row["detail"])
            ids = [notice_event_id(r["kind"], r["detail"]) for r in rows]
            logged = {i: dict(self._events[i]) for i in ids if i is not None and i in self._events}
        with_events(rows, logged)
        return rows

    # lineage

    def record_trail(self, entity: str, key: str, limit: int = 1000) -> RecordTrail:
        with self._lock:
            found = self._records.get((entity, key), [])[:limit]
            event_rows = [
                {
                    **self._events[r["event_id"]],
                    "integration": r["integration"],
                    "mapping": r["mapping"],
                }
                for r in found
            ]
            event_rows.sort(key=lambda row: row["seq"])
            ids = {row["id"] for row in event_rows}
            delivery_rows = [dict(d) for d in self._deliveries.values() if d["event_id"] in ids]
            numbers = {d["id"] for d in delivery_rows}
            attempt_rows = [dict(a) for n in sorted(numbers) for a in self._attempts.get(n, [])]
            attempt_rows.sort(key=lambda row: row["id"])
            action_rows = [
                {**a, "details": orjson.loads(a["details"])}
                for a in self._actions
                if a["delivery_id"] in numbers
            ]
        return RecordTrail(event_rows, delivery_rows, attempt_rows, action_rows)

    def close(self) -> None:
        """Nothing to release; the data stays readable."""


def _fallen_back(row: dict[str, Any]) -> bool:
    """Delivered through a fallback while the target's breaker was open."""
    return row["status"] == DeliveryStatus.DELIVERED.value and row.get("fallback") is not None
