"""The tables of Charter's store (SQLAlchemy Core). Changes go through an Alembic migration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "events",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("system", String(64), nullable=False),
    Column("ce_id", Text, nullable=False),
    Column("type", String(200), nullable=False),
    Column("source", Text, nullable=False),
    Column("subject", Text),
    Column("time", Text),
    Column("received_at", Float, nullable=False),
    Column("data", Text, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("integration", String(64), nullable=False),
    Column("target", String(64), nullable=False),
    Column("tier", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(100)),
    Column("lease_expires_at", Float),
    Column("idempotency_key", String(100), nullable=False),
    Column("mapping", String(100), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
    Column("last_status", Integer),
    Column("last_error", Text),
    # Delivered to a fallback instead of the target: its system or file (migration 0009).
    Column("fallback", Text),
    UniqueConstraint("event_id", "integration", "target", name="uq_delivery_event_target"),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("status_code", Integer),
    Column("outcome", String(16), nullable=False),
    Column("error", Text),
    Column("fallback", Text),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

process_definitions = Table(
    "process_definitions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("spec", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

process_instances = Table(
    "process_instances",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("process", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("business_key", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("state", Text, nullable=False),
    Column("next_wake_at", Float),
    Column("lease_owner", String(100)),
    Column("lease_expires_at", Float),
    Column("parent_id", String(36)),
    Column("parent_step", String(64)),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("process", "business_key", name="uq_instance_process_key"),
    Index("ix_instances_wake", "next_wake_at"),
    Index("ix_instances_status", "process", "status"),
    # Searches: newest first, and by business key alone (migration 0012).
    Index("ix_instances_created", "created_at"),
    Index("ix_instances_business_key", "business_key"),
)

process_inbox = Table(
    "process_inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("instance_id", String(36), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

process_history = Table(
    "process_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("instance_id", String(36), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("step", String(64)),
    Column("what", String(64), nullable=False),
    Column("detail", Text),
    # Every entry of one transition, a JSON array (see migration 0011); NULL for a row of
    # one entry, held in the columns above.
    Column("entries", Text),
)

process_waits = Table(
    "process_waits",
    metadata,
    Column("instance_id", String(36), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("system", String(64), nullable=False),
    Column("type", String(200), nullable=False),
    Column("field", String(200), nullable=False),
    Column("value", Text, nullable=False),
    Index("ix_waits_match", "system", "type", "field", "value"),
)

escalations = Table(
    "escalations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("team", String(64), nullable=False),
    Column("instance_id", String(36), nullable=False),
    Column("step", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

event_keys = Table(
    "event_keys",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("type", String(200), primary_key=True),
    Column("field", String(200), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("event_id", String(36), primary_key=True),
    Column("received_at", Float, nullable=False),
)

# What operators did to deliveries: redrives, discards, edits, replays (migration 0004).
delivery_actions = Table(
    "delivery_actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id),
    Column("replay_id", String(36)),
    Column("action", String(16), nullable=False),
    Column("by", String(100), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("details", Text, nullable=False),
    Index("ix_delivery_actions_delivery_id", "delivery_id"),
)

# Applied versions of the project catalog, whole (migration 0006).
catalog_versions = Table(
    "catalog_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("digest", String(80), nullable=False),
    Column("action", String(16), nullable=False),
    Column("based_on", Integer),
    Column("applied_at", Float, nullable=False),
    Column("applied_by", String(100), nullable=False),
    Column("reason", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("changes", Text, nullable=False),
    Column("snapshot", Text, nullable=False),
)

# Field ownership and drift (migration 0007).

# Writes of fields by a system that is not their system of record, held for the owner.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("integration", String(64), nullable=False),
    Column("entity", String(64), nullable=False),
    Column("field", String(200), nullable=False),
    Column("value", Text, nullable=False),
    Column("system", String(64), nullable=False),
    Column("system_of_record", String(64), nullable=False),
    Column("team", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("decided_at", Float),
    Column("decided_by", String(100)),
    Column("reason", Text),
    Index("ix_quarantine_status_team", "status", "team"),
    Index("ix_quarantine_event", "event_id", "integration"),
)

# Decisions on writes of fields by systems that do not own them.
field_writes = Table(
    "field_writes",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("entity", String(64), primary_key=True),
    Column("field", String(200), primary_key=True),
    Column("policy", String(16), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
)

# Runtime drift of source payloads, and the declared fields seen (kind 'seen').
drift = Table(
    "drift",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("event_type", String(200), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("field", String(300), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Index("ix_drift_last_seen", "last_seen"),
)

# What the hub tells a team (drift detected, ...).
notices = Table(
    "notices",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("team", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_notices_team", "team", "id"),
)

# The canonical records events map to, by entity and key value, for lineage (migration 0008).
record_keys = Table(
    "record_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entity", String(64), nullable=False),
    Column("key", Text, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("integration", String(64), nullable=False),
    Column("mapping", String(100), nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ix_record_keys_entity_key", "entity", "key"),
)
