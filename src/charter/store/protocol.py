"""The ``Store`` protocol: what the hub and the workers need from a database, in domain words."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISCARDED = "discarded"  # a dead letter an operator gave up on, with a reason


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


@dataclass(frozen=True)
class NewDelivery:
    integration: str
    target: str
    tier: int
    idempotency_key: str
    mapping: str
    payload: str


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

    def close(self) -> None: ...
