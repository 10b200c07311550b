"""The ``Store`` protocol: what the hub and the workers need from a database, in domain words."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISCARDED = "discarded"  # a dead letter an operator gave up on, with a reason
    # Held for the owner of a field the source system wrote without owning it; never
    # claimed. Accepting or rejecting the write makes it pending.
    QUARANTINED = "quarantined"


class Outcome(StrEnum):
    """What one attempt led to."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    RELEASED = "released"  # the worker stopped before calling; the attempt does not count


@dataclass(frozen=True)
class NewEvent:
    """An event ready to append, with its hub id and the deliveries it creates."""

    id: str
    system: str
    ce_id: str
    type: str
    source: str
    subject: str | None
    time: str | None
    data: str
    deliveries: list[NewDelivery] = field(default_factory=list)
    # Values of the event that process waits correlate on: (field path, value).
    correlations: list[tuple[str, str]] = field(default_factory=list)
    # Process instances the event starts (``InstanceWrite`` objects of the engine).
    starts: list[Any] = field(default_factory=list)
    # Writes of fields the source system does not own, held for their owner's review;
    # the deliveries of a held integration are stored quarantined.
    holds: list[FieldHold] = field(default_factory=list)
    # Decisions on writes of fields the source system does not own, counted on append.
    writes: list[FieldWrite] = field(default_factory=list)
    # The canonical records the event maps to, indexed for lineage (``record_keys``).
    records: list[RecordKey] = field(default_factory=list)


@dataclass(frozen=True)
class RecordKey:
    """The canonical record an integration mapped an event to: ``entity`` with key ``key``
    (the value of the entity's key field, as text), by the ingress ``mapping`` (``name@version``).
    """

    entity: str
    key: str
    integration: str
    mapping: str


@dataclass(frozen=True)
class RecordTrail:
    """What the store holds about one canonical record, each list oldest first.

    ``events`` are event rows with the ``integration`` and ingress ``mapping`` that
    mapped them to the record (one row per event and integration); ``deliveries``
    are the deliveries those events created; ``attempts`` and ``actions`` are the
    attempts and operator actions on those deliveries (``details`` decoded).
    """

    events: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    attempts: list[dict[str, Any]]
    actions: list[dict[str, Any]]


@dataclass(frozen=True)
class NewDelivery:
    integration: str
    target: str
    tier: int
    idempotency_key: str
    mapping: str
    payload: str


@dataclass(frozen=True)
class FieldHold:
    """A write of ``entity.field`` by a system that does not own it, held for ``team``."""

    integration: str
    entity: str
    field: str
    value: str  # the written value, as JSON
    system_of_record: str
    team: str  # the owner of the field's system of record


@dataclass(frozen=True)
class FieldWrite:
    """One decision on a write of ``entity.field`` by ``system`` (not its system of record).

    ``outcome`` is ``rejected``, ``ignored`` or ``quarantined`` at ingest, and
    ``accepted`` or ``rejected`` (policy ``quarantine``) when the owner reviews it.
    """

    system: str
    entity: str
    field: str
    policy: str
    outcome: str


class QuarantineStatus(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class DriftCount:
    """How often ``system``'s ``event_type`` payloads showed one kind of drift, in one period.

    ``kind`` is ``unknown_field``, ``unmapped_value``, ``stopped_field`` or
    ``seen`` (a declared field arrived; ``field`` ``""`` counts the events).
    ``team`` owns the system: a notice goes to it when the row is new.
    """

    system: str
    event_type: str
    kind: str
    field: str
    value: str
    count: int
    first_seen: float
    last_seen: float
    team: str

    def row(self) -> dict[str, Any]:
        """The stored drift row of this count (the team is not stored with it)."""
        row = asdict(self)
        del row["team"]
        return row


def action_row(
    delivery_id: int | None,
    action: DeliveryAction,
    who: Operator,
    now: float,
    details: dict[str, Any],
    replay_id: str | None = None,
) -> dict[str, Any]:
    """A ``delivery_actions`` row: who did what to a delivery (or a replay), when and why."""
    return {
        "delivery_id": delivery_id,
        "replay_id": replay_id,
        "action": action.value,
        "by": who.by,
        "reason": who.reason,
        "at": now,
        "details": orjson.dumps(details).decode(),
    }


def rearmed(now: float) -> dict[str, Any]:
    """What a redriven delivery starts again with, besides its mapping, payload and key."""
    return {
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        # The clock of end-to-end latency starts again with the new run.
        "created_at": now,
        "delivered_at": None,
        # Where an earlier run went stays in its attempts.
        "fallback": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }


def held_rows(appended: list[NewEvent], now: float) -> list[dict[str, Any]]:
    """The ``quarantine`` rows of appended events' held writes."""
    return [
        {
            "event_id": e.id,
            "integration": h.integration,
            "entity": h.entity,
            "field": h.field,
            "value": h.value,
            "system": e.system,
            "system_of_record": h.system_of_record,
            "team": h.team,
            "status": QuarantineStatus.OPEN.value,
            "created_at": now,
            "decided_at": None,
            "decided_by": None,
            "reason": None,
        }
        for e in appended
        for h in e.holds
    ]


def record_rows(appended: list[NewEvent], now: float) -> list[dict[str, Any]]:
    """The ``record_keys`` rows of appended events."""
    return [
        {
            "entity": r.entity,
            "key": r.key,
            "event_id": e.id,
            "integration": r.integration,
            "mapping": r.mapping,
            "received_at": now,
        }
        for e in appended
        for r in e.records
    ]


def write_rows(writes: list[FieldWrite], now: float) -> list[dict[str, Any]]:
    """``field_writes`` rows adding up ``writes``: one per (system, entity, field, policy,
    outcome)."""
    counted = Counter(writes)
    return [
        {
            "system": w.system,
            "entity": w.entity,
            "field": w.field,
            "policy": w.policy,
            "outcome": w.outcome,
            "count": n,
            "first_at": now,
            "last_at": now,
        }
        for w, n in counted.items()
    ]


def released_payload(payload: str, field_name: str) -> str:
    """A canonical payload without the top-level field whose write was rejected."""
    data = orjson.loads(payload)
    if isinstance(data, dict):
        data.pop(field_name, None)
    return orjson.dumps(data).decode()


# The hub's own events in the log (drift notices): ``system`` is one no catalog system can
# be named, so no integration routes them and replays and ``received`` counts leave them out.
HUB_SYSTEM = "@hub"
HUB_SOURCE = "charter://hub/governance"
DRIFT_EVENT_TYPE = "charter.drift.detected"
DRIFT_NOTICE = "drift.detected"
_DRIFT_EVENTS = uuid.UUID("0b3f7c52-6a1e-4d8f-b2c9-5e4a7d1f9c36")


def drift_event_id(system: str, event_type: str, kind: str, field: str, value: str) -> str:
    """The event id (hub and CloudEvents) of the notice about one kind of drift: the same
    for the same (system, event type, kind, field, value), so it is logged once."""
    return str(uuid.uuid5(_DRIFT_EVENTS, "\x00".join((system, event_type, kind, field, value))))


def drift_notice(count: DriftCount, now: float) -> dict[str, Any]:
    """The ``notices`` row telling the system's owner about a new kind of drift."""
    shown = f" = {count.value!r}" if count.value else ""
    return {
        "team": count.team,
        "kind": DRIFT_NOTICE,
        "subject": f"{count.system} {count.event_type}: {count.kind} {count.field}{shown}",
        "detail": orjson.dumps(
            {
                "system": count.system,
                "event_type": count.event_type,
                "kind": count.kind,
                "field": count.field,
                "value": count.value,
                "count": count.count,
                "first_seen": count.first_seen,
                "team": count.team,
            }
        ).decode(),
        "created_at": now,
    }


def drift_event(notice: dict[str, Any], now: float) -> dict[str, Any]:
    """The ``events`` row logging a drift notice (a row of :func:`drift_notice`) as a
    CloudEvent of type ``charter.drift.detected``; its data is the notice's detail."""
    detail = orjson.loads(notice["detail"])
    ident = notice_event_id(notice["kind"], detail)
    assert ident is not None
    return {
        "id": ident,
        "system": HUB_SYSTEM,
        "ce_id": ident,
        "type": DRIFT_EVENT_TYPE,
        "source": HUB_SOURCE,
        "subject": f"{detail['system']}/{detail['event_type']}/{detail['field']}",
        "time": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "received_at": now,
        "data": notice["detail"],
    }


def notice_event_id(kind: str, detail: Any) -> str | None:
    """The id of the event that logged a notice; None for a kind that is not logged."""
    if kind != DRIFT_NOTICE or not isinstance(detail, dict):
        return None
    keys = ("system", "event_type", "kind", "field", "value")
    if not all(isinstance(detail.get(k), str) for k in keys):
        return None
    return drift_event_id(*(detail[k] for k in keys))


def cloud_event(row: dict[str, Any]) -> dict[str, Any]:
    """An ``events`` row as a CloudEvents 1.0 JSON event (``data`` decoded)."""
    found: dict[str, Any] = {
        "specversion": "1.0",
        "id": row["ce_id"],
        "source": row["source"],
        "type": row["type"],
        "datacontenttype": "application/json",
    }
    if row.get("subject") is not None:
        found["subject"] = row["subject"]
    if row.get("time") is not None:
        found["time"] = row["time"]
    data = row["data"]
    found["data"] = orjson.loads(data) if isinstance(data, str | bytes) else data
    return found


def with_events(notices: list[dict[str, Any]], logged: dict[str, dict[str, Any]]) -> None:
    """Add to each notice (``detail`` decoded) the ``event_id`` and the CloudEvent that logged
    it, from ``logged`` (events rows by id); both None for a notice that has none."""
    for row in notices:
        ident = notice_event_id(row["kind"], row["detail"])
        event = logged.get(ident) if ident is not None else None
        row["event_id"] = event["id"] if event is not None else None
        row["event"] = cloud_event(event) if event is not None else None


@dataclass(frozen=True)
class IdempotencyRecord:
    """A request stored under its ``Idempotency-Key`` and the answer it got."""

    system: str
    key: str
    request_hash: str
    status_code: int
    response: str


@dataclass(frozen=True)
class IngestBatch:
    """Events of one request, appended with their deliveries in one transaction."""

    events: list[NewEvent]
    idempotency: IdempotencyRecord | None = None


@dataclass(frozen=True)
class IngestResult:
    """Which events of a batch were new and which were already in the log."""

    appended: list[str]
    duplicates: list[str]
    # Another request stored a record under the same Idempotency-Key first;
    # nothing of this batch was appended.
    key_taken: bool = False


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to one worker until ``lease_expires_at``."""

    id: int
    event_id: str
    integration: str
    target: str
    tier: int
    attempts: int
    idempotency_key: str
    mapping: str
    payload: str
    created_at: float


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of calling the target for one claimed delivery."""

    delivery_id: int
    outcome: Outcome
    started_at: float
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None
    # Where the attempt went instead of the target (its breaker was open): the fallback
    # system's name or ``file:PATH`` of a file drop. None: to the target itself.
    fallback: str | None = None


class ErrorClass(StrEnum):
    """A stable class of why a delivery's last attempt failed, for filtering dead letters."""

    HTTP_5XX = "http_5xx"
    HTTP_4XX = "http_4xx"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MAPPING = "mapping"
    NOT_FOUND = "not_found"
    OTHER = "other"


# How an attempt without an HTTP status reads, by words of its error (lower case);
# the first match wins. The SQL store compiles the same table into a CASE expression.
ERROR_WORDS: tuple[tuple[str, ErrorClass], ...] = (
    ("timeout", ErrorClass.TIMEOUT),
    ("timed out", ErrorClass.TIMEOUT),
    ("no longer", ErrorClass.NOT_FOUND),
    ("connect", ErrorClass.CONNECTION),
    ("disconnected", ErrorClass.CONNECTION),
    ("connection", ErrorClass.CONNECTION),
    ("transport error", ErrorClass.CONNECTION),
    ("protocol error", ErrorClass.CONNECTION),
    (" in mapping ", ErrorClass.MAPPING),
)


def error_class(status_code: int | None, error: str | None) -> ErrorClass | None:
    """The class of a failed attempt from its HTTP status and error text; None: no error."""
    if status_code is not None and status_code >= 400:
        if status_code == 429:
            return ErrorClass.RATE_LIMITED
        if status_code == 408:
            return ErrorClass.TIMEOUT
        return ErrorClass.HTTP_5XX if status_code >= 500 else ErrorClass.HTTP_4XX
    if not error:
        return None
    lowered = error.lower()
    for words, found in ERROR_WORDS:
        if words in lowered:
            return found
    return ErrorClass.OTHER


@dataclass(frozen=True)
class OwnedBy:
    """What a team owns among deliveries: its integrations, and its systems as targets."""

    integrations: frozenset[str]
    systems: frozenset[str]


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operator means; every field given must match."""

    integration: str | None = None
    # The target system the delivery failed against.
    system: str | None = None
    owned_by: OwnedBy | None = None
    error_class: ErrorClass | None = None
    # Dead since before this time (seconds): the last attempt started before it.
    dead_before: float | None = None
    status: DeliveryStatus = DeliveryStatus.DEAD


class DeliveryAction(StrEnum):
    """What an operator did to a delivery (recorded in ``delivery_actions``)."""

    REDRIVE = "redrive"
    DISCARD = "discard"
    EDIT = "edit"
    REPLAY = "replay"
    # The owner of a quarantined field write accepted or rejected it.
    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True)
class Operator:
    """Who does an operation and why; both are recorded with it."""

    by: str
    reason: str


@dataclass(frozen=True)
class Rearm:
    """A delivery made due again by a redrive, with what it carries from now on.

    ``mapping``, ``payload`` and ``idempotency_key`` replace the delivery's when
    given; an edited payload is recorded as an ``edit`` before the redrive.
    """

    delivery_id: int
    mapping: str | None = None
    payload: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ReplayDelivery:
    """One (event, integration, target) a replay re-delivers, mapped with today's project."""

    event_id: str
    integration: str
    target: str
    tier: int
    mapping: str
    payload: str
    # The key of a delivery the event never had for this integration and target.
    idempotency_key: str
    # The key when the delivery exists but (mapping, payload) differ from what it
    # last sent: the target must not take the corrected content for a repeat.
    changed_key: str


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did to the deliveries it was given."""

    created: int = 0
    rearmed: int = 0
    # Still pending (or leased): it will be delivered anyway.
    pending: int = 0
    # Discarded by an operator: redrive it on purpose instead.
    discarded: int = 0


@dataclass(frozen=True)
class EventFilter:
    """Events of the log a replay selects; every field given must match."""

    since: float | None = None
    until: float | None = None
    type: str | None = None
    system: str | None = None
    # A candidate for the entity key: matches the event's subject or any JSON string
    # in its data; the caller checks the declared key field.
    key: str | None = None


@dataclass(frozen=True)
class DeliveryCounts:
    received: int
    pending: int
    delivered: int
    dead: int
    retried: int
    attempts: int
    quarantined: int = 0
    # Delivered through a fallback while the target's breaker was open (in ``delivered``).
    fallback: int = 0


class Store(Protocol):
    """Durable state of the hub.

    Contract: ``append`` commits every event, delivery and idempotency record of
    all its batches durably before it returns, or none of a failed batch.
    Deliveries are claimed with a lease; a lease that expires makes the delivery
    claimable again, so delivery is at-least-once. ``record_attempts`` only
    applies to deliveries still leased by the recording worker. The store never
    calls a target system and never decides retry timing.
    """

    def append(self, batches: list[IngestBatch]) -> list[IngestResult]: ...

    def find_idempotency_record(self, system: str, key: str) -> IdempotencyRecord | None: ...

    def claim_due_deliveries(
        self, worker: str, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]: ...

    def record_attempts(self, worker: str, results: list[AttemptResult]) -> int: ...

    def release_leases(self, worker: str | None) -> int: ...

    def next_due_at(self) -> float | None: ...

    def delivery_counts(self) -> DeliveryCounts: ...

    def fallback_counts(self) -> dict[str, int]:
        """Deliveries delivered through a fallback, per integration."""
        ...

    def latencies(self, limit: int = 100_000) -> list[float]: ...

    def list_deliveries(
        self, status: DeliveryStatus | None = None, integration: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def get_delivery(self, delivery_id: int) -> dict[str, Any] | None: ...

    def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]: ...

    def get_event(self, event_id: str) -> dict[str, Any] | None: ...

    # dead letters and replay

    def list_dead_letters(self, where: DeadLetterFilter, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters newest first, with ``error_class`` and ``dead_at`` (last attempt)."""
        ...

    def delivery_actions(self, delivery_id: int) -> list[dict[str, Any]]:
        """What operators did to a delivery, oldest first."""
        ...

    def redrive(self, rearms: list[Rearm], who: Operator) -> list[int]:
        """Make dead or discarded deliveries due now; record who and why.

        The attempts counter restarts (the retry policy applies afresh) while the
        attempts already made stay in the history. Deliveries no longer dead or
        discarded are left alone; returns the ids that were redriven.
        """
        ...

    def discard(self, delivery_id: int, who: Operator) -> bool:
        """Discard a dead letter; False when it is not dead (any more)."""
        ...

    def events_for_replay(
        self, where: EventFilter, after_seq: int, limit: int
    ) -> list[dict[str, Any]]:
        """Events of the log in ``seq`` order after ``after_seq``, with their ``seq``."""
        ...

    def replay(self, replay_id: str, planned: list[ReplayDelivery], who: Operator) -> ReplayResult:
        """Re-deliver: re-arm each (event, integration, target)'s delivery or create it.

        A pending delivery is left to its worker and a discarded one to its
        operator; an existing delivery keeps its Idempotency-Key unless its
        (mapping, payload) change. One ``replay`` action is recorded per delivery.
        """
        ...

    # field ownership and drift

    def list_quarantine(
        self, team: str | None = None, status: QuarantineStatus | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Held writes newest first, with ``deliveries``: the ids of the deliveries they hold."""
        ...

    def decide_quarantine(self, hold_id: int, accept: bool, who: Operator) -> dict[str, Any]:
        """Accept or reject a held write; record who, why and the write decision.

        Rejecting removes the field from the held deliveries' payloads. Deliveries
        with no other open hold become pending. Raises ``NotFound`` for an unknown
        id and ``Conflict`` when the write was already decided.
        """
        ...

    def count_writes(self, writes: list[FieldWrite]) -> None:
        """Count write decisions made outside an append (writes refused at ingest)."""
        ...

    def write_counts(self) -> list[dict[str, Any]]:
        """Counts per (system, entity, field, policy, outcome), with first and last time."""
        ...

    def record_drift(self, counts: list[DriftCount]) -> int:
        """Add counts to the drift table; a notice for each new row that is not ``seen``,
        and in the same transaction its ``charter.drift.detected`` event in the log (one
        per drift key, however often its notice is written; no deliveries).

        Returns how many rows were new.
        """
        ...

    def drift_counts(
        self, system: str | None = None, since: float | None = None, kinds: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Drift rows last seen at or after ``since``, of ``kinds`` (all when empty)."""
        ...

    def list_notices(self, team: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Notices to teams newest first, ``detail`` decoded, with the ``event_id`` and the
        CloudEvent (``event``) that logged each one (None for notices logged before events
        were)."""
        ...

    # lineage

    def record_trail(self, entity: str, key: str, limit: int = 1000) -> RecordTrail:
        """The events (at most ``limit``, oldest first) that mapped to the record ``entity``
        with key ``key``, and their deliveries, attempts and actions.

        Only events appended since migration 0008 are indexed by record; the trail
        of a record whose events are older is empty.
        """
        ...

    def close(self) -> None: ...
