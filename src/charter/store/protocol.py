"""The ``Store`` protocol: what the hub and the workers need from a database, in domain words."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


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

    def close(self) -> None: ...
