"""Durable state of process instances: definitions, instances, inbox, history, waits.

Shares the database and, on SQLite, the single writer of :class:`SqlStore`.
Each instance is advanced by one worker at a time: the worker holds a lease
on the database clock, and every write checks that it still does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Float,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from charter.store.notify import notices
from charter.store.protocol import IngestBatch, NewEvent
from charter.store.schema import (
    escalations,
    event_keys,
    events,
    process_definitions,
    process_history,
    process_inbox,
    process_instances,
    process_waits,
)
from charter.store.sql import SqlStore
from charter.store.sql_base import retried, row_dict, unavailable_errors

PROCESSES_CHANNEL = "charter_processes"
# Ids of instances that have just ended, for requests waiting on them in other processes.
ENDED_CHANNEL = "charter_instances_ended"
TERMINAL_STATUSES = ("completed", "compensated", "cancelled", "terminated")
# Statuses an instance does not leave by itself (a failed one waits for an operator).
ENDED_STATUSES = frozenset((*TERMINAL_STATUSES, "failed"))


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    process: str
    version: int
    business_key: str
    status: str
    state: dict[str, Any]
    parent_id: str | None = None
    parent_step: str | None = None


@dataclass(frozen=True)
class InboxItem:
    id: int
    instance_id: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class WaitRow:
    step: str
    system: str
    type: str
    field: str
    value: str


@dataclass
class InstanceWrite:
    """One transition of one instance, with everything that must commit with it."""

    instance: InstanceRecord
    new: bool = False
    next_wake_at: float | None = None
    keep_lease: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    waits: list[WaitRow] = field(default_factory=list)
    # Waits this transition registers (the others were registered before).
    new_waits: list[WaitRow] = field(default_factory=list)
    # Whether the instance had waits before, so stored ones must be replaced.
    had_waits: bool = True
    consumed: list[int] = field(default_factory=list)
    children: list[InstanceWrite] = field(default_factory=list)
    escalations: list[tuple[str, str, str]] = field(default_factory=list)
    parent_message: tuple[str, str, dict[str, Any]] | None = None
    # The calls and tasks the new state has outstanding, to make once it is committed
    # (worked out with the write, so the worker need not work them out again).
    effects: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class WriteResult:
    """``ok``; ``exists`` (a new instance whose process and key were taken: ``id`` is the
    existing one); or ``lost`` (the lease moved to another worker: nothing written)."""

    outcome: str
    id: str


@dataclass
class Claim:
    instances: list[InstanceRecord] = field(default_factory=list)
    inbox: dict[str, list[InboxItem]] = field(default_factory=dict)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# What every write of an instance sets, in this order (the last columns of a new instance).
_CHANGED_COLUMNS = (
    "status",
    "state",
    "next_wake_at",
    "lease_owner",
    "lease_expires_at",
    "updated_at",
)


def _changed(w: InstanceWrite, worker: str | None, now: float, lease: float) -> tuple[Any, ...]:
    """The values of ``_CHANGED_COLUMNS`` that ``w`` writes."""
    keep = w.keep_lease
    return (
        w.instance.status,
        _json(w.instance.state),
        _float(w.next_wake_at),
        worker if keep else None,
        now + lease if keep else None,
        now,
    )


def _insert_sqlite(conn: Connection, rows: list[tuple[Any, ...]]) -> set[str]:
    """Insert new instance ``rows`` (values of ``_INSTANCE_COLUMNS``) on SQLite, whose write
    lock the transaction holds; the ids inserted.

    An id is made from the process and business key (`instance_id`), so a stored id is a
    key already taken. A row whose key is taken under another id is skipped by the insert
    too; then the ids that went in are read back."""
    taken = _stored(conn, [row[0] for row in rows])
    fresh = [row for row in rows if row[0] not in taken]
    if not fresh:
        return set()
    if conn.exec_driver_sql(_INSERT_INSTANCES_SQLITE, fresh).rowcount == len(fresh):
        return {row[0] for row in fresh}
    return _stored(conn, [row[0] for row in fresh])


def _stored(conn: Connection, ids: list[str]) -> set[str]:
    """Which of ``ids`` are stored (SQLite)."""
    found = conn.exec_driver_sql(_STORED_SQLITE, (_json(ids),)).scalar_one()
    return {str(ident) for ident in orjson.loads(found)}


def _float(value: float | None) -> float | None:
    """A time as a float: a PostgreSQL array takes the type of its first element."""
    return None if value is None else float(value)


def _history_rows(w: InstanceWrite, now: float | None) -> list[tuple[Any, ...]]:
    """Parameters of ``_INSERT_HISTORY`` for the timeline entries of ``w``: one row for the
    whole transition (none when it has no entries), at the time of its first entry."""
    if not w.history:
        return []
    return [(w.instance.id, _float(w.history[0].get("at", now)), _json(w.history))]


# SQLite's two statements of every transition, run as an executemany of plain tuples, in
# process (PostgreSQL's are `_WRITE_LEASED_PG` and `_START_PG`, below).
#
# An instance whose inbox still holds an item after the transition (one that arrived after
# its worker read the inbox) is due at once, whatever the transition says, so that the
# item is never left with nobody to claim it; the consumed items are deleted first.
_UPDATE_LEASED = (
    "UPDATE process_instances SET status = ?1, state = ?2, next_wake_at = CASE WHEN "
    "EXISTS (SELECT 1 FROM process_inbox i WHERE i.instance_id = ?7) "
    "THEN min(coalesce(?3, ?6), ?6) ELSE ?3 END, "
    "lease_owner = ?4, lease_expires_at = ?5, updated_at = ?6 WHERE id = ?7"
)
# A transition's timeline entries are one row (``what`` = ``_TRANSITION``), the entries a JSON
# array: a transition adds three or four entries, and a row each cost more than the rest of
# the write. Rows written before migration 0011 hold one entry each, in their columns.
_TRANSITION = "transition"
# The instances of a group write that its worker still leases (SQLite's lease check).
_OWNED_SQLITE = (
    "SELECT id FROM process_instances WHERE id IN (SELECT value FROM json_each(?)) "
    "AND lease_owner = ?"
)
_INSERT_HISTORY = (
    "INSERT INTO process_history (instance_id, at, what, entries) "
    f"VALUES (?, ?, '{_TRANSITION}', ?)"
)
# Whether a claim would find anything on SQLite, on this process's clock (``?1``): an
# instance due that no live lease holds (as `_due`), or an item in an inbox. The runner
# asks this several times a second; as SQLAlchemy's statement it cost more than the query.
_ANYTHING_TO_CLAIM_SQLITE = (
    "SELECT EXISTS (SELECT 1 FROM process_instances WHERE next_wake_at <= ?1 "
    "AND (lease_expires_at IS NULL OR lease_expires_at < ?1)) "
    "OR EXISTS (SELECT 1 FROM process_inbox)"
)
# Of some ids, those stored (SQLite, ahead of a group of starts): one row, a JSON array.
_STORED_SQLITE = (
    "SELECT json_group_array(id) FROM process_instances "
    "WHERE id IN (SELECT value FROM json_each(?))"
)
# New instances, as a group of starts inserts them.
_INSTANCE_COLUMNS = (
    "id",
    "process",
    "version",
    "business_key",
    "parent_id",
    "parent_step",
    "created_at",
    *_CHANGED_COLUMNS,
)
# A group of starts' new instances on SQLite, run as an executemany of plain tuples (see
# `_insert_sqlite`): SQLAlchemy's insert of many rows with RETURNING, which PostgreSQL and
# `_write_one` still use, cost the group more CPU than the rest of its write.
_INSERT_INSTANCES_SQLITE = (
    f"INSERT INTO process_instances ({', '.join(_INSTANCE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS))}) ON CONFLICT DO NOTHING"
)
# A timeline as a write outside a group (`_write_one`) inserts it on PostgreSQL: one
# statement over arrays (unnest, binary), the rows in the order given, the order a timeline
# is read in.
_INSERT_HISTORY_PG = (
    "INSERT INTO process_history (instance_id, at, what, entries) "
    f"SELECT instance_id, at, '{_TRANSITION}', entries "
    "FROM unnest(%b::varchar[], %b::float8[], %b::text[]) WITH ORDINALITY "
    "AS h(instance_id, at, entries, n) ORDER BY n"
)


# On PostgreSQL a worker's group of transitions is one statement (`_write_pg`): the instance
# rows (written only where the worker still leases them), the consumed inbox items, the
# timeline and the notices. A group of plain ones (see `_plain`) runs it in autocommit
# (`SqlBase._write_alone`): one round trip and one commit for the lot. Times are the
# database clock's (`_NOW_PG`).
#
# An instance held with calls in flight is written due at once (see `Planner.write`). When it
# is due already, its due time is left as it is: an update that changes no indexed column
# can be a heap-only one (HOT), which adds no entries to the table's six indexes.
#
# Such a statement reads the inbox (is anything left unconsumed?) as it was when the
# statement began. An item whose writer commits after that, but takes the instance's row
# first, is not seen, and the write may leave the instance with nothing due. A claim on
# PostgreSQL therefore also takes every unleased instance with anything in its inbox
# (`_CLAIM_PG`): such an item waits at most for a worker's next look, and is never stranded.
_WRITE_LEASED_PG = """
WITH v AS (
    SELECT * FROM unnest(%(id)b::varchar[], %(status)b::varchar[], %(state)b::text[],
        %(next_wake_at)b::float8[], %(keep)b::bool[])
    AS v(id, status, state, next_wake_at, keep)
),
u AS (
    UPDATE process_instances AS p SET status = v.status, state = v.state,
        next_wake_at = CASE
            WHEN v.next_wake_at <= {now} AND p.next_wake_at <= v.next_wake_at
            THEN p.next_wake_at
            WHEN EXISTS (
                SELECT 1 FROM process_inbox i
                WHERE i.instance_id = p.id AND i.id <> ALL(%(consumed)b::int8[])
            ) THEN least(v.next_wake_at, {now})
            ELSE v.next_wake_at
        END,
        lease_owner = CASE WHEN v.keep THEN p.lease_owner END,
        lease_expires_at = CASE WHEN v.keep THEN {now} + %(lease)s END,
        updated_at = {now}
    FROM v
    WHERE p.id = v.id AND p.lease_owner = %(worker)s
    RETURNING p.id
),
consumed AS (
    DELETE FROM process_inbox
    WHERE id = ANY(%(consumed)b::int8[]) AND instance_id IN (SELECT id FROM u)
),
"""
_START_PG = """
WITH u AS (
    INSERT INTO process_instances (id, process, version, business_key, parent_id, parent_step,
        status, state, next_wake_at, lease_owner, lease_expires_at, created_at, updated_at)
    SELECT v.id, v.process, v.version, v.business_key, v.parent_id, v.parent_step,
        v.status, v.state, v.next_wake_at, CASE WHEN v.keep THEN %(worker)s::varchar END,
        CASE WHEN v.keep THEN {now} + %(lease)s END, {now}, {now}
    FROM unnest(%(id)b::varchar[], %(process)b::varchar[], %(version)b::int4[],
        %(business_key)b::varchar[], %(parent_id)b::varchar[], %(parent_step)b::varchar[],
        %(status)b::varchar[], %(state)b::text[], %(next_wake_at)b::float8[], %(keep)b::bool[])
    AS v(id, process, version, business_key, parent_id, parent_step, status, state,
        next_wake_at, keep)
    ON CONFLICT DO NOTHING
    RETURNING id
),
"""
# How both end: the timeline entries of the instances written (``u``), in the order given
# (an entry without a time takes the statement's), and the notices, sent at commit when
# anything was written (see `_notices`). The ids written are the statement's rows.
_WRITTEN_PG = """
history AS (
    INSERT INTO process_history (instance_id, at, what, entries)
    SELECT h.instance_id, coalesce(h.at, {now}), '{transition}', h.entries
    FROM unnest(%(h_instance)b::varchar[], %(h_at)b::float8[], %(h_entries)b::text[])
    WITH ORDINALITY AS h(instance_id, at, entries, n)
    WHERE h.instance_id IN (SELECT id FROM u)
    ORDER BY h.n
),
notice AS (
    SELECT pg_notify(n.channel, n.payload)
    FROM unnest(%(n_channel)b::text[], %(n_payload)b::text[]) AS n(channel, payload)
    WHERE EXISTS (SELECT 1 FROM u)
)
SELECT id FROM u, (SELECT count(*) FROM notice) AS sent
"""
# The database clock, as every statement here reads it: the time the statement began.
_NOW_PG = "extract(epoch FROM statement_timestamp())::float8"
_WRITE_LEASED_PG = (_WRITE_LEASED_PG + _WRITTEN_PG).format(now=_NOW_PG, transition=_TRANSITION)
_START_PG = (_START_PG + _WRITTEN_PG).format(now=_NOW_PG, transition=_TRANSITION)
# A claim on PostgreSQL: lease the due instances nobody leases, and those with anything in
# their inbox (see above), and read the inboxes of every instance the worker leases (those
# just claimed and those it held), in one statement: the instances leased come first, then
# the inbox items in order, told apart by ``item`` (NULL for an instance).
#
# Every row of process_instances it reads or leases is found through an index: the due ones
# through ``next_wake_at``, the rest by id from an array of the few ids in question
# (``= ANY(ARRAY(...))``). A join instead leaves the plan to the table's statistics, and
# with a few thousand rows, most of them ended instances, PostgreSQL chose to scan the whole
# table at every claim: 0.8 ms of a 1 ms claim at 2,000 instances, growing with the table.
_CLAIM_PG = """
WITH due AS (
    SELECT p.id FROM process_instances AS p
    WHERE p.next_wake_at <= {now}
    AND (p.lease_expires_at IS NULL OR p.lease_expires_at < {now})
    AND p.id <> ALL(%(busy)s::varchar[])
    ORDER BY p.next_wake_at
    LIMIT %(limit)s
    FOR UPDATE OF p SKIP LOCKED
),
unread AS (
    SELECT p.id FROM process_instances AS p
    WHERE p.id = ANY(ARRAY(SELECT instance_id FROM process_inbox))
    AND (p.lease_expires_at IS NULL OR p.lease_expires_at < {now})
    AND p.id <> ALL(%(busy)s::varchar[])
    LIMIT %(limit)s
    FOR UPDATE OF p SKIP LOCKED
),
claimed AS (
    UPDATE process_instances AS p
    SET lease_owner = %(worker)s, lease_expires_at = {now} + %(lease)s
    WHERE p.id = ANY(ARRAY(SELECT id FROM due UNION SELECT id FROM unread LIMIT %(limit)s))
    RETURNING p.id, p.process, p.version, p.business_key, p.status, p.state, p.parent_id,
        p.parent_step
)
SELECT id, process, version, business_key, status, state, parent_id, parent_step,
    NULL::int8 AS item, NULL::varchar AS kind, NULL::text AS body
FROM claimed
UNION ALL
SELECT i.instance_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, i.id, i.kind, i.body
FROM process_inbox AS i
WHERE i.instance_id IN (SELECT id FROM claimed)
OR i.instance_id IN ({leased})
ORDER BY item NULLS FIRST
"""
# The instances with anything in their inbox that ``worker`` leases.
_LEASED_INBOXES_PG = (
    "SELECT p.id FROM process_instances AS p "
    "WHERE p.id = ANY(ARRAY(SELECT instance_id FROM process_inbox)) "
    "AND p.lease_owner = %(worker)s"
)
_CLAIM_PG = _CLAIM_PG.format(now=_NOW_PG, leased=_LEASED_INBOXES_PG)
# The inboxes alone, for a worker that can hold no more instances.
_INBOX_PG = (
    "SELECT i.id, i.instance_id, i.kind, i.body FROM process_inbox AS i "
    f"WHERE i.instance_id IN ({_LEASED_INBOXES_PG}) ORDER BY i.id"
)


def _identity(i: InstanceRecord) -> tuple[Any, ...]:
    """What a new instance's row holds for good: the first six of ``_INSTANCE_COLUMNS``."""
    return (i.id, i.process, i.version, i.business_key, i.parent_id, i.parent_step)


# What `_WRITE_LEASED_PG` and `_START_PG` write of every instance, and its values.
_WRITTEN_VALUES = ("status", "state", "next_wake_at", "keep")


def _written_values(w: InstanceWrite) -> tuple[Any, ...]:
    return (w.instance.status, _json(w.instance.state), _float(w.next_wake_at), w.keep_lease)


def _key(w: WaitRow) -> tuple[str, str, str, str]:
    """A wait's correlation key, as `SqlProcessStore._lock` takes it."""
    return (w.system, w.type, w.field, w.value)


def _ident(w: InstanceWrite) -> str:
    return w.instance.id


def _plain(w: InstanceWrite) -> bool:
    """Whether a transition writes only its instance, its timeline and its inbox: no waits
    to store or replace, no children, escalations or messages to a parent. Most are."""
    return not (
        w.waits
        or (w.had_waits and not w.new)
        or w.children
        or w.escalations
        or w.parent_message is not None
    )


def _columns(rows: list[tuple[Any, ...]], names: tuple[str, ...]) -> dict[str, Any]:
    """``rows`` as one list per column, named: the parameters of an unnest."""
    columns = zip(*rows, strict=True) if rows else ((),) * len(names)
    return {name: list(column) for name, column in zip(names, columns, strict=True)}


def _history_params(writes: list[InstanceWrite]) -> dict[str, list[Any]]:
    """The ``h_`` parameters of `_WRITTEN_PG`: the timeline entries of ``writes``, those
    without a time of their own left to the statement."""
    rows = [row for w in writes for row in _history_rows(w, None)]
    return _columns(rows, ("h_instance", "h_at", "h_entries"))


def _concerns_others(w: InstanceWrite) -> bool:
    """Whether a transition may give a worker something to do that it would not find by
    itself: a child, a message to a parent, new waits (an event may already be there), or
    an instance left unleased with something due (calls to make, a timer to keep). Nobody
    needs waking for an instance its writer keeps leased (it goes on with it) or for one
    with nothing due (ended, or waiting for events only)."""
    if w.children or w.parent_message is not None or w.new_waits:
        return True
    return not w.keep_lease and w.next_wake_at is not None


def _due(at: Any) -> Select[Any]:
    """The ids of the instances due at ``at`` (a time or a clock expression) that no live
    lease holds."""
    return select(process_instances.c.id).where(
        process_instances.c.next_wake_at <= at,
        or_(
            process_instances.c.lease_expires_at.is_(None),
            process_instances.c.lease_expires_at < at,
        ),
    )


def _existing(conn: Connection, record: InstanceRecord) -> str:
    """The id of the instance that holds the process and business key of ``record``."""
    found = conn.execute(
        select(process_instances.c.id).where(
            process_instances.c.process == record.process,
            process_instances.c.business_key == record.business_key,
        )
    ).scalar_one()
    return str(found)


def _inboxes(rows: Any) -> dict[str, list[InboxItem]]:
    """Inbox rows in order, by instance."""
    found: dict[str, list[InboxItem]] = {}
    for r in rows:
        item = InboxItem(r.id, r.instance_id, r.kind, orjson.loads(r.body))
        found.setdefault(r.instance_id, []).append(item)
    return found


def _record(row: Any) -> InstanceRecord:
    return InstanceRecord(
        id=row.id,
        process=row.process,
        version=row.version,
        business_key=row.business_key,
        status=row.status,
        state=orjson.loads(row.state),
        parent_id=row.parent_id,
        parent_step=row.parent_step,
    )


class SqlProcessStore:
    """Process instances in the hub's database (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.reader = store.reader
        # The statements every transition runs, built once: SQLAlchemy then finds their
        # compiled form in its cache without building and hashing a new statement each time.
        self._insert_instances = self.store._insert_ignore(process_instances).returning(
            process_instances.c.id
        )
        # The two statements of every transition go to the driver as they are (see
        # `_many`): through SQLAlchemy's compiled statements, its handling of each row's
        # parameters cost more CPU than the statements themselves.
        self._update_leased = _UPDATE_LEASED
        self._insert_history = _INSERT_HISTORY_PG if store.is_postgres else _INSERT_HISTORY
        self._notify_ended = text(f"SELECT pg_notify('{ENDED_CHANNEL}', :ids)")
        # A claim's statements on SQLite, built once (on PostgreSQL see `_CLAIM_PG`): where
        # one process owns the file, on this process's clock.
        self._claim_due = (
            _due(bindparam("now", type_=Float))
            .order_by(process_instances.c.next_wake_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self._claim_lease = (
            update(process_instances)
            .where(process_instances.c.id.in_(bindparam("ids", expanding=True)))
            .values(lease_owner=bindparam("owner"), lease_expires_at=bindparam("expires"))
            .returning(*process_instances.c)
        )
        self._claim_inbox = (
            select(process_inbox)
            .join(process_instances, process_instances.c.id == process_inbox.c.instance_id)
            .where(process_instances.c.lease_owner == bindparam("owner"))
            .order_by(process_inbox.c.id)
        )
        self._insert_waits = insert(process_waits)

    # definitions

    def save_definition(self, name: str, version: int, spec: str) -> None:
        """Keep the definition an instance started with, so later edits never change it."""
        with self.store._write() as conn:
            conn.execute(
                self.store._insert_ignore(process_definitions),
                {
                    "name": name,
                    "version": version,
                    "spec": spec,
                    "created_at": self.store._now(conn),
                },
            )

    def load_definition(self, name: str, version: int) -> str | None:
        with self.reader.connect() as conn:
            value = conn.execute(
                select(process_definitions.c.spec).where(
                    process_definitions.c.name == name, process_definitions.c.version == version
                )
            ).scalar()
        return str(value) if value is not None else None

    # writing transitions

    def write(
        self, worker: str | None, writes: list[InstanceWrite], lease_seconds: float = 30.0
    ) -> list[WriteResult]:
        """Commit many transitions in one transaction (group commit). On PostgreSQL the rows,
        timelines and inboxes of a worker's group, or of a group of starts, are written by
        `_write_pg`'s statements."""
        if self.store.is_postgres and (worker is not None or all(w.new for w in writes)):
            return retried(lambda: self._write_pg(worker, writes, lease_seconds))
        results: dict[int, WriteResult] = {}
        with self.store._write() as conn:
            updates = [(n, w) for n, w in enumerate(writes) if not w.new]
            now = self.store._now(conn)
            owned: set[str] = set()
            if worker is not None and updates:
                owned = self._owned(conn, worker, [w.instance.id for _, w in updates])
            if worker is not None and updates:
                results.update(self._update_many(conn, worker, updates, owned, now, lease_seconds))
            starts = [(n, w) for n, w in enumerate(writes) if w.new]
            if len(starts) > 1:
                results.update(self._insert_many(conn, worker, starts, now, lease_seconds))
            for n, w in enumerate(writes):
                if n not in results:
                    results[n] = self._write_one(conn, worker, w, now, lease_seconds)
            if self.store.is_postgres:
                self._notify(conn, writes, results)
        return [results[n] for n in range(len(writes))]

    def _write_pg(
        self, worker: str | None, writes: list[InstanceWrite], lease: float
    ) -> list[WriteResult]:
        """`write` on PostgreSQL of a group of ``worker`` (or of starts only): a statement for
        the instances it leases and one for the new ones (`_WRITE_LEASED_PG`, `_START_PG`).
        A group of plain transitions (see `_plain`), all of one kind, is that statement alone
        in autocommit; any other is a transaction that also stores the waits and what else
        the written transitions commit with."""
        # Rows in the order of their ids: two workers writing some of the same instances
        # (one whose lease ran out and one that took them over) then lock them in the same
        # order and do not deadlock (most of the time: the plan decides; see `retried`).
        updates = sorted((w for w in writes if not w.new), key=_ident)
        first: dict[str, InstanceWrite] = {}
        for w in writes:
            if w.new:
                first.setdefault(w.instance.id, w)
        new = sorted(first.values(), key=_ident)
        statements: list[tuple[str, dict[str, Any]]] = []
        common = {"worker": worker, "lease": lease}
        if updates:
            rows = [(w.instance.id, *_written_values(w)) for w in updates]
            params = _columns(rows, ("id", *_WRITTEN_VALUES)) | _history_params(updates)
            params |= self._notices(updates) | common
            params["consumed"] = [item for w in updates for item in w.consumed]
            statements.append((_WRITE_LEASED_PG, params))
        if new:
            rows = [(*_identity(w.instance), *_written_values(w)) for w in new]
            params = _columns(rows, (*_INSTANCE_COLUMNS[:6], *_WRITTEN_VALUES))
            params |= _history_params(new) | self._notices(new) | common
            statements.append((_START_PG, params))
        done: set[str] = set()
        if len(statements) == 1 and all(_plain(w) for w in writes):
            done = {row.id for row in self.store._write_alone(*statements[0])}
        elif statements:
            with self.store._write() as conn:
                # The correlation locks of the waits first (see `_lock`), then the rows: an
                # event arriving takes them in that order too, so the two cannot deadlock.
                self._lock(conn, [_key(x) for w in writes for x in w.new_waits])
                for statement, params in statements:
                    done.update(row.id for row in conn.exec_driver_sql(statement, params))
                written = [w for w in [*updates, *new] if w.instance.id in done]
                if not all(_plain(w) for w in written):
                    stale = [w.instance.id for w in written if w.had_waits and not w.new]
                    if stale:
                        conn.execute(
                            delete(process_waits).where(process_waits.c.instance_id.in_(stale))
                        )
                    self._extras(conn, written, self.store._now(conn), lease)
        results = [
            WriteResult("ok" if w.instance.id in done else "lost", w.instance.id) for w in writes
        ]
        # A start whose process and business key were taken, before or earlier in the group.
        taken = [
            n
            for n, w in enumerate(writes)
            if w.new and (first[w.instance.id] is not w or w.instance.id not in done)
        ]
        if taken:
            with self.reader.connect() as conn:
                for n in taken:
                    results[n] = WriteResult("exists", _existing(conn, writes[n].instance))
        return results

    @staticmethod
    def _notices(writes: list[InstanceWrite]) -> dict[str, list[str]]:
        """The notices of `_notify`, as the ``n_`` parameters of `_WRITTEN_PG`. They go out
        when the statement writes any of ``writes``, for all of them: one that turns out
        lost makes a worker or a waiting request look once for nothing, which costs less
        than working out which were written first."""
        sent: list[tuple[str, str]] = []
        if any(_concerns_others(w) for w in writes):
            sent.append((PROCESSES_CHANNEL, ""))
        ended = [w.instance.id for w in writes if w.instance.status in ENDED_STATUSES]
        sent += [(ENDED_CHANNEL, payload) for payload in notices(ended)]
        return _columns(sent, ("n_channel", "n_payload"))

    def _notify(
        self, conn: Connection, writes: list[InstanceWrite], results: dict[int, WriteResult]
    ) -> None:
        """Tell other processes, at commit: workers when there is work for them, waiting
        requests when instances ended."""
        written = [w for n, w in enumerate(writes) if results[n].outcome == "ok"]
        if any(_concerns_others(w) for w in written):
            conn.execute(text(f"NOTIFY {PROCESSES_CHANNEL}"))
        ended = [w.instance.id for w in written if w.instance.status in ENDED_STATUSES]
        for payload in notices(ended):
            conn.execute(self._notify_ended, {"ids": payload})

    def _owned(self, conn: Connection, worker: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` ``worker`` leases (SQLite, whose single writer holds them for the
        transaction). One parameter, the ids as a JSON array, for a statement the driver runs
        as it is: SQLAlchemy's expanding IN cost more than the query."""
        found = conn.exec_driver_sql(_OWNED_SQLITE, (_json(ids), worker))
        return {str(ident) for (ident,) in found}

    def _update_many(
        self,
        conn: Connection,
        worker: str,
        updates: list[tuple[int, InstanceWrite]],
        owned: set[str],
        now: float,
        lease: float,
    ) -> dict[int, WriteResult]:
        """Transitions of the instances this worker leases (``owned``), a few statements for
        all of them."""
        done = [w for _, w in updates if w.instance.id in owned]
        if not done:
            return {n: WriteResult("lost", w.instance.id) for n, w in updates}
        self._consume(conn, [item for w in done for item in w.consumed])
        self._many(
            conn,
            self._update_leased,
            [(*_changed(w, worker, now, lease), w.instance.id) for w in done],
        )
        stale = [w.instance.id for w in done if w.had_waits]
        if stale:
            conn.execute(delete(process_waits).where(process_waits.c.instance_id.in_(stale)))
        self._rows_of(conn, done, now, lease)
        return {
            n: WriteResult("ok" if w.instance.id in owned else "lost", w.instance.id)
            for n, w in updates
        }

    def _insert_many(
        self,
        conn: Connection,
        worker: str | None,
        starts: list[tuple[int, InstanceWrite]],
        now: float,
        lease: float,
    ) -> dict[int, WriteResult]:
        """New instances, a few statements for all of them; a process and business key
        already taken (before, or earlier in the same group) answer ``exists``."""
        first: dict[str, InstanceWrite] = {}
        for _, w in starts:
            first.setdefault(w.instance.id, w)
        rows = [
            (*_identity(w.instance), now, *_changed(w, worker, now, lease)) for w in first.values()
        ]
        if self.store.is_postgres:
            found = conn.execute(
                self._insert_instances,
                [dict(zip(_INSTANCE_COLUMNS, row, strict=True)) for row in rows],
            ).scalars()
            inserted = {str(x) for x in found}
        else:
            inserted = _insert_sqlite(conn, rows)
        done = [w for ident, w in first.items() if ident in inserted]
        self._rows_of(conn, done, now, lease)
        results: dict[int, WriteResult] = {}
        for n, w in starts:
            i = w.instance
            if i.id in inserted and first[i.id] is w:
                results[n] = WriteResult("ok", i.id)
                continue
            results[n] = WriteResult("exists", _existing(conn, i))
        return results

    def _rows_of(
        self, conn: Connection, done: list[InstanceWrite], now: float, lease: float
    ) -> None:
        """What commits with the instance rows of ``done``: history, waits, side effects
        (stale waits and consumed inbox items are already deleted)."""
        history = [row for w in done for row in _history_rows(w, now)]
        if history:
            self._many(conn, self._insert_history, history)
        self._extras(conn, done, now, lease)

    def _extras(
        self, conn: Connection, done: list[InstanceWrite], now: float, lease: float
    ) -> None:
        """The waits of ``done`` and their side effects (stale waits are already deleted)."""
        waits = [{"instance_id": w.instance.id, **vars(x)} for w in done for x in w.waits]
        if waits:
            conn.execute(self._insert_waits, waits)
        for w in done:
            if w.new_waits or w.escalations or w.children or w.parent_message is not None:
                self._side_effects(conn, w, now, lease)

    def _many(self, conn: Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``statement`` for every row: on PostgreSQL once, with a column per parameter."""
        if not rows:
            return
        if self.store.is_postgres:
            columns = tuple(list(column) for column in zip(*rows, strict=True))
            conn.exec_driver_sql(statement, columns)
        else:
            conn.exec_driver_sql(statement, rows)

    def _write_one(
        self, conn: Connection, worker: str | None, w: InstanceWrite, now: float, lease: float
    ) -> WriteResult:
        i = w.instance
        values: dict[str, Any] = dict(
            zip(_CHANGED_COLUMNS, _changed(w, worker, now, lease), strict=True)
        )
        if w.new:
            inserted = conn.execute(
                self._insert_instances,
                {
                    "id": i.id,
                    "process": i.process,
                    "version": i.version,
                    "business_key": i.business_key,
                    "parent_id": i.parent_id,
                    "parent_step": i.parent_step,
                    "created_at": now,
                    **values,
                },
            ).first()
            if inserted is None:
                return WriteResult("exists", _existing(conn, i))
        else:
            owned = process_instances.c.id == i.id
            if worker is not None:
                owned = and_(owned, process_instances.c.lease_owner == worker)
            # As in `_UPDATE_LEASED`: due at once while an unconsumed inbox item waits.
            waiting = select(process_inbox.c.id).where(process_inbox.c.instance_id == i.id)
            if w.consumed:
                waiting = waiting.where(process_inbox.c.id.not_in(w.consumed))
            values["next_wake_at"] = case(
                (exists(waiting), now if w.next_wake_at is None else min(w.next_wake_at, now)),
                else_=w.next_wake_at,
            )
            if conn.execute(update(process_instances).where(owned).values(**values)).rowcount == 0:
                return WriteResult("lost", i.id)
        if w.history:
            self._many(conn, self._insert_history, _history_rows(w, now))
        if not w.new:
            conn.execute(delete(process_waits).where(process_waits.c.instance_id == i.id))
        if w.waits:
            conn.execute(
                insert(process_waits),
                [{"instance_id": i.id, **vars(wait)} for wait in w.waits],
            )
        self._consume(conn, w.consumed)
        self._side_effects(conn, w, now, lease)
        return WriteResult("ok", i.id)

    def _consume(self, conn: Connection, items: list[int]) -> None:
        if items:
            conn.execute(delete(process_inbox).where(process_inbox.c.id.in_(items)))

    def _side_effects(self, conn: Connection, w: InstanceWrite, now: float, lease: float) -> None:
        """What commits with a transition besides its row: matches, escalations, children."""
        i = w.instance
        if w.new_waits:
            self._match_arrived(conn, i.id, w.new_waits, now)
        for team, step, message in w.escalations:
            conn.execute(
                insert(escalations),
                {
                    "team": team,
                    "instance_id": i.id,
                    "step": step,
                    "message": message,
                    "created_at": now,
                },
            )
        for child in w.children:
            result = self._write_one(conn, None, child, now, lease)
            if result.outcome == "exists":
                # The child already ran under this key: tell the parent about it now.
                self._enqueue(
                    conn,
                    i.id,
                    "child_exists",
                    {"step": child.instance.parent_step, "id": result.id},
                    now,
                )
        if w.parent_message is not None:
            parent, kind, body = w.parent_message
            self._enqueue(conn, parent, kind, body, now)

    # matching events and waits

    def _lock(self, conn: Connection, keys: list[tuple[str, str, str, str]]) -> None:
        """Serialise event arrival and wait registration per correlation value (PostgreSQL).

        Without it, an event committed while a wait for it is being registered
        could be missed by both sides. SQLite has one writer, so needs nothing.
        """
        if not self.store.is_postgres:
            return
        for key in sorted(set(keys)):
            digest = hashlib.sha256("\x00".join(key).encode()).digest()
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": int.from_bytes(digest[:8], "big", signed=True)},
            )

    def before_append(self, conn: Connection, batches: list[IngestBatch]) -> None:
        keys = [
            (e.system, e.type, f, v) for b in batches for e in b.events for f, v in e.correlations
        ]
        if keys:
            self._lock(conn, keys)

    def after_append(self, conn: Connection, appended: list[NewEvent], now: float) -> None:
        """Start the instances new events trigger and hand them to the waits they match."""
        touched = False
        for event in appended:
            for start in event.starts:
                self._write_one(conn, None, start, now, 0.0)
                touched = True
            if not event.correlations:
                continue
            conn.execute(
                self.store._insert_ignore(event_keys),
                [
                    {
                        "system": event.system,
                        "type": event.type,
                        "field": f,
                        "value": v,
                        "event_id": event.id,
                        "received_at": now,
                    }
                    for f, v in event.correlations
                ],
            )
            for field_, value in event.correlations:
                for instance, step in conn.execute(
                    select(process_waits.c.instance_id, process_waits.c.step).where(
                        process_waits.c.system == event.system,
                        process_waits.c.type == event.type,
                        process_waits.c.field == field_,
                        process_waits.c.value == value,
                    )
                ).all():
                    body = {"step": step, "event_id": event.id, "data": orjson.loads(event.data)}
                    self._enqueue(conn, str(instance), "event", body, now)
                    touched = True
        if touched and self.store.is_postgres:
            conn.execute(text(f"NOTIFY {PROCESSES_CHANNEL}"))

    def _match_arrived(
        self, conn: Connection, instance: str, waits: list[WaitRow], now: float
    ) -> None:
        """Events that arrived for a wait before it was registered satisfy it at once."""
        self._lock(conn, [_key(w) for w in waits])
        started = conn.execute(
            select(process_instances.c.created_at).where(process_instances.c.id == instance)
        ).scalar()
        for wait in waits:
            row = conn.execute(
                select(events.c.id, events.c.data)
                .join(event_keys, event_keys.c.event_id == events.c.id)
                .where(
                    event_keys.c.system == wait.system,
                    event_keys.c.type == wait.type,
                    event_keys.c.field == wait.field,
                    event_keys.c.value == wait.value,
                    event_keys.c.received_at >= (started if started is not None else now),
                )
                .order_by(events.c.seq)
                .limit(1)
            ).first()
            if row is not None:
                body = {"step": wait.step, "event_id": row.id, "data": orjson.loads(row.data)}
                self._enqueue(conn, instance, "event", body, now)

    def _enqueue(
        self, conn: Connection, instance: str, kind: str, body: dict[str, Any], now: float
    ) -> None:
        conn.execute(
            insert(process_inbox),
            {"instance_id": instance, "kind": kind, "body": _json(body), "created_at": now},
        )
        # Due now, unless an earlier wake-up is already set.
        conn.execute(
            update(process_instances)
            .where(process_instances.c.id == instance)
            .values(
                next_wake_at=func.coalesce(
                    func.min(process_instances.c.next_wake_at, now)
                    if not self.store.is_postgres
                    else func.least(process_instances.c.next_wake_at, now),
                    now,
                )
            )
        )

    def enqueue(self, instance: str, kind: str, body: dict[str, Any]) -> None:
        """Hand an event or operation to an instance; a worker applies it."""
        with self.store._write() as conn:
            self._enqueue(conn, instance, kind, body, self.store._now(conn))
            if self.store.is_postgres:
                conn.execute(text(f"NOTIFY {PROCESSES_CHANNEL}"))

    # claiming

    def claim(
        self, worker: str, limit: int, lease_seconds: float, busy: Collection[str] = ()
    ) -> Claim:
        """Lease up to ``limit`` due instances, and read the inboxes of every instance
        ``worker`` leases, those just claimed and those it already held.

        ``busy`` are instances with a write of ``worker`` in flight. They are not claimed,
        even with their lease run out: the claim could read them as they were before that
        write, which then commits (the lease is the worker's again), and the worker would go
        on from a state older than the one stored."""
        if self.store.is_postgres:
            if limit <= 0:  # only the inboxes of what it holds
                with unavailable_errors(), self.reader.connect() as conn:
                    return Claim([], _inboxes(conn.exec_driver_sql(_INBOX_PG, {"worker": worker})))
            params = {"limit": limit, "worker": worker, "lease": lease_seconds, "busy": list(busy)}
            claim = Claim()
            for r in self.store._write_alone(_CLAIM_PG, params):
                if r.item is None:
                    claim.instances.append(_record(r))
                    continue
                item = InboxItem(r.item, r.id, r.kind, orjson.loads(r.body))
                claim.inbox.setdefault(r.id, []).append(item)
            return claim
        claim = Claim()
        with self.store._write() as conn:
            if limit > 0:
                now = time.time()
                params = {"limit": limit, "now": now}
                due = [str(r.id) for r in conn.execute(self._claim_due, params)]
                due = [ident for ident in due if ident not in busy]
                if due:
                    rows = conn.execute(
                        self._claim_lease,
                        {"ids": due, "owner": worker, "expires": now + lease_seconds},
                    ).all()
                    claim.instances = [_record(r) for r in rows]
            # Every instance leased to the worker: those just claimed and those it holds.
            # Inboxes are mostly empty, so this reads little whatever the worker holds.
            claim.inbox = _inboxes(conn.execute(self._claim_inbox, {"owner": worker}))
        return claim

    def extend_leases(self, worker: str, ids: list[str], lease_seconds: float) -> None:
        if not ids:
            return

        def extend() -> None:
            with self.store._write() as conn:
                now = self.store._now(conn)
                conn.execute(
                    update(process_instances)
                    .where(
                        process_instances.c.id.in_(ids), process_instances.c.lease_owner == worker
                    )
                    .values(lease_expires_at=now + lease_seconds)
                )

        retried(extend)

    def reclaim(
        self, worker: str, lease_seconds: float, held: Collection[str]
    ) -> list[InstanceRecord]:
        """The instances leased to ``worker`` that it does not hold (``held``), their leases
        renewed: those it let go of after a write that did not, or may not, commit, and
        those of a claim whose answer was lost with the connection. (A scan of the table:
        for after such a failure only.)"""
        with self.store._write() as conn:
            now = self.store._now(conn)
            rows = conn.execute(
                update(process_instances)
                .where(
                    process_instances.c.lease_owner == worker,
                    process_instances.c.id.not_in(list(held)),
                )
                .values(lease_expires_at=now + lease_seconds)
                .returning(*process_instances.c)
            ).all()
        return [_record(r) for r in sorted(rows, key=lambda r: str(r.id))]

    def release(self, worker: str | None) -> int:
        """Release the leases of ``worker`` (every lease when None: embedded start-up)."""
        owned = (
            process_instances.c.lease_owner.is_not(None)
            if worker is None
            else process_instances.c.lease_owner == worker
        )
        with self.store._write() as conn:
            now = self.store._now(conn)
            # A released instance may have calls in flight: make it due at once.
            result = conn.execute(
                update(process_instances)
                .where(owned)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    next_wake_at=func.coalesce(process_instances.c.next_wake_at, now),
                )
            )
        return int(result.rowcount)

    def anything_to_claim(self) -> bool:
        """Whether `claim` could find anything: a due instance that nobody leases, or an
        item in an inbox. Read-only, so on SQLite it does not wait for the writer."""
        with unavailable_errors(), self.reader.connect() as conn:
            if not self.store.is_postgres:
                found = conn.exec_driver_sql(_ANYTHING_TO_CLAIM_SQLITE, (time.time(),))
                return bool(found.scalar())
            due = _due(self.store._clock()).limit(1)
            waiting = select(process_inbox.c.id).limit(1)
            return bool(conn.execute(select(or_(exists(due), exists(waiting)))).scalar())

    def next_due_at(self) -> float | None:
        with unavailable_errors(), self.reader.connect() as conn:
            value = conn.execute(select(func.min(process_instances.c.next_wake_at))).scalar()
        return float(value) if value is not None else None

    # reading

    def get(self, instance: str) -> InstanceRecord | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                select(process_instances).where(process_instances.c.id == instance)
            ).first()
        return _record(row) if row is not None else None

    def find(self, process: str, business_key: str) -> InstanceRecord | None:
        with self.reader.connect() as conn:
            row = conn.execute(
                select(process_instances).where(
                    process_instances.c.process == process,
                    process_instances.c.business_key == business_key,
                )
            ).first()
        return _record(row) if row is not None else None

    def search(
        self,
        *,
        process: str | None = None,
        status: str | None = None,
        business_key: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        columns = [c for c in process_instances.c if c.name not in ("state",)]
        query = select(*columns).order_by(process_instances.c.created_at.desc()).limit(limit)
        if process is not None:
            query = query.where(process_instances.c.process == process)
        if status is not None:
            query = query.where(process_instances.c.status == status)
        if business_key is not None:
            query = query.where(process_instances.c.business_key == business_key)
        if since is not None:
            query = query.where(process_instances.c.created_at >= since)
        if until is not None:
            query = query.where(process_instances.c.created_at < until)
        with self.reader.connect() as conn:
            return [row_dict(r._mapping) for r in conn.execute(query)]

    def counts(self, process: str | None = None) -> dict[str, int]:
        query = select(process_instances.c.status, func.count()).group_by(
            process_instances.c.status
        )
        if process is not None:
            query = query.where(process_instances.c.process == process)
        with self.reader.connect() as conn:
            return {str(status): int(n) for status, n in conn.execute(query)}

    def history(self, instance: str) -> list[dict[str, Any]]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(process_history)
                .where(process_history.c.instance_id == instance)
                .order_by(process_history.c.id)
            )
            found: list[dict[str, Any]] = []
            for r in rows:
                if r.entries is not None:
                    found.extend(orjson.loads(r.entries))
                    continue
                entry = {"at": r.at, "what": r.what}
                if r.step is not None:
                    entry["step"] = r.step
                entry.update(orjson.loads(r.detail) if r.detail else {})
                found.append(entry)
            return found

    def escalations(self, team: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(escalations).order_by(escalations.c.id.desc()).limit(limit)
        if team is not None:
            query = query.where(escalations.c.team == team)
        with self.reader.connect() as conn:
            return [row_dict(r._mapping) for r in conn.execute(query)]

    def waits_for(
        self, system: str, type_: str, field_: str, values: list[str]
    ) -> list[tuple[str, str]]:
        """(instance, step) of the waits an event with these correlation values satisfies."""
        if not values:
            return []
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(process_waits.c.instance_id, process_waits.c.step).where(
                    process_waits.c.system == system,
                    process_waits.c.type == type_,
                    process_waits.c.field == field_,
                    process_waits.c.value.in_(values),
                )
            )
            return [(str(a), str(b)) for a, b in rows]
