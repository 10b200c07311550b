"""Durable state of the hub: the ``Store`` protocol, its SQL implementation and migrations."""

from charter.store.memory import MemoryStore
from charter.store.migrate import current_revision, head_revision, upgrade
from charter.store.protocol import (
    AttemptResult,
    ClaimedDelivery,
    DeliveryCounts,
    DeliveryStatus,
    IdempotencyRecord,
    IngestBatch,
    IngestResult,
    NewDelivery,
    NewEvent,
    Outcome,
    Store,
)
from charter.store.sql import SqlStore, create_store_engine

__all__ = [
    "AttemptResult",
    "ClaimedDelivery",
    "DeliveryCounts",
    "DeliveryStatus",
    "IdempotencyRecord",
    "IngestBatch",
    "IngestResult",
    "MemoryStore",
    "NewDelivery",
    "NewEvent",
    "Outcome",
    "SqlStore",
    "Store",
    "create_store_engine",
    "current_revision",
    "head_revision",
    "upgrade",
]
