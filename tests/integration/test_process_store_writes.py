"""Group writes of process instances, on both databases and both kinds of transition (one
that writes only its instance, one that also registers a wait): a worker whose lease another
worker took over writes nothing, a write the database refuses fails with the store's error,
naming the cause and the fix, and leaves nothing of the group behind, and a write caught in a
deadlock is run again. A group of starts answers ``exists`` for a business key already taken,
under the same id or another. A claim reads the inboxes of what its worker holds and leaves out what
it is writing, and on PostgreSQL finds what it reads by index, however many instances have
ended. A worker takes up what is leased to it that it does not hold."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from charter.errors import StoreError
from charter.store.notify import libpq_url
from charter.store.processes import (
    _CLAIM_PG,
    _INBOX_PG,
    InstanceRecord,
    InstanceWrite,
    SqlProcessStore,
    WaitRow,
    WriteResult,
)
from charter.store.sql import SqlStore


def start(key: str, status: str | None = "running") -> InstanceWrite:
    record = InstanceRecord(
        id=f"id-{key}",
        process="p",
        version=1,
        business_key=key,
        status=status,  # type: ignore[arg-type]
        state={"status": status},
    )
    return InstanceWrite(record, new=True, next_wake_at=time.time(), had_waits=False)


def test_a_refused_group_write_raises_the_stores_error_and_writes_none_of_it(
    store: SqlStore,
) -> None:
    processes = SqlProcessStore(store)
    with pytest.raises(StoreError) as raised:
        processes.write(None, [start("A-1", "running"), start("A-2", None)])
    assert "breaks a constraint" in str(raised.value)
    assert "status" in str(raised.value)
    assert raised.value.fix is not None and "bug" in raised.value.fix
    assert processes.get("id-A-1") is None


def test_a_group_of_starts_answers_exists_for_a_business_key_already_taken(
    store: SqlStore,
) -> None:
    processes = SqlProcessStore(store)
    assert processes.write(None, [start("B-1")]) == [WriteResult("ok", "id-B-1")]
    # B-1 again under its id, and under another (a row whose id was not made from the key).
    elsewhere = start("B-1")
    elsewhere = replace(elsewhere, instance=replace(elsewhere.instance, id="id-elsewhere"))
    group = [start("B-2"), start("B-1"), elsewhere, start("B-3"), start("B-3")]
    assert processes.write(None, group) == [
        WriteResult("ok", "id-B-2"),
        WriteResult("exists", "id-B-1"),
        WriteResult("exists", "id-B-1"),
        WriteResult("ok", "id-B-3"),
        WriteResult("exists", "id-B-3"),
    ]
    assert processes.get("id-elsewhere") is None
    started = [processes.get(f"id-B-{n}") for n in (1, 2, 3)]
    assert [r.business_key for r in started if r is not None] == ["B-1", "B-2", "B-3"]


WAIT = WaitRow(step="ship", system="warehouse", type="shipped", field="order", value="O-1")


def step(record: InstanceRecord, by: str, wait: bool) -> InstanceWrite:
    """A transition of ``record`` made by the worker ``by``, leaving it with nothing due;
    with ``wait``, one that registers a wait for a shipment."""
    state = {**record.state, "by": by}
    moved = InstanceRecord(**{**vars(record), "state": state})
    waits = [WAIT] if wait else []
    return InstanceWrite(
        moved,
        had_waits=False,
        history=[{"at": time.time(), "what": by}],
        waits=waits,
        new_waits=waits,
    )


@pytest.mark.parametrize("wait", [False, True], ids=["plain", "with-a-wait"])
def test_a_worker_whose_lease_was_taken_over_writes_nothing(store: SqlStore, wait: bool) -> None:
    processes = SqlProcessStore(store)
    [created] = processes.write(None, [start("L-1")])
    assert created.outcome == "ok"
    [held] = processes.claim("worker-1", 10, 0.05).instances
    time.sleep(0.2)  # worker-1 stalls; its lease runs out and worker-2 takes the instance
    [taken] = processes.claim("worker-2", 10, 30.0).instances
    assert taken.id == held.id

    shipments = ("warehouse", "shipped", "order", ["O-1"])
    [late] = processes.write("worker-1", [step(held, "worker-1", wait)])
    assert late.outcome == "lost"
    assert "by" not in (processes.get(held.id) or held).state
    assert [e["what"] for e in processes.history(held.id)] == []
    assert processes.waits_for(*shipments) == []

    [done] = processes.write("worker-2", [step(taken, "worker-2", wait)])
    assert done.outcome == "ok"
    assert (processes.get(held.id) or held).state["by"] == "worker-2"
    assert [e["what"] for e in processes.history(held.id)] == ["worker-2"]
    assert processes.waits_for(*shipments) == ([(held.id, "ship")] if wait else [])


@pytest.mark.parametrize("limit", [10, 0], ids=["claiming", "at-capacity"])
def test_a_claim_reads_the_inbox_of_what_its_worker_already_holds(
    store: SqlStore, limit: int
) -> None:
    processes = SqlProcessStore(store)
    processes.write(None, [start("H-1"), start("H-2")])
    held = processes.claim("worker-1", 1, 30.0).instances
    assert len(held) == 1
    processes.enqueue(held[0].id, "signal", {"name": "go"})

    again = processes.claim("worker-1", limit, 30.0)
    # The other instance is claimed when there is room; the held one is not claimed again,
    # but what arrived for it is read.
    other = sorted({"id-H-1", "id-H-2"} - {held[0].id})
    assert [r.id for r in again.instances] == ([] if limit == 0 else other)
    assert [(i.kind, i.body) for i in again.inbox[held[0].id]] == [("signal", {"name": "go"})]
    assert list(again.inbox) == [held[0].id]


def test_a_worker_takes_up_what_is_leased_to_it_and_it_does_not_hold(store: SqlStore) -> None:
    processes = SqlProcessStore(store)
    processes.write(None, [start("T-1"), start("T-2"), start("T-3")])
    # worker-1's claim of two went through, but its answer never reached it.
    lost = sorted(r.id for r in processes.claim("worker-1", 2, 0.5).instances)
    [theirs] = processes.claim("worker-2", 10, 30.0).instances
    held = lost[0]

    found = processes.reclaim("worker-1", 30.0, [held])
    assert [r.id for r in found] == lost[1:]
    assert found[0].state == {"status": "running"}
    assert theirs.id not in [r.id for r in found]
    # The lost claim's leases were short; the one taken up was renewed, the other not.
    time.sleep(0.6)
    assert [r.id for r in processes.claim("worker-3", 10, 30.0).instances] == [held]


@pytest.mark.parametrize("wait", [False, True], ids=["plain", "with-a-wait"])
def test_a_group_write_caught_in_a_deadlock_is_run_again(pg_url: str, wait: bool) -> None:
    """Another transaction locks the group's second instance, the write locks the first and
    waits for the second, then the other asks for the first: PostgreSQL rolls the write back
    (its deadlock check comes first) and the write, run again, goes through."""
    store = SqlStore.from_url(pg_url)
    try:
        processes = SqlProcessStore(store)
        processes.write(None, [start("D-1"), start("D-2")])
        held = sorted(processes.claim("worker-1", 10, 60.0).instances, key=lambda r: r.id)
        assert [r.id for r in held] == ["id-D-1", "id-D-2"]
        outcome: list[list[WriteResult] | BaseException] = []

        def write() -> None:
            try:
                outcome.append(
                    processes.write("worker-1", [step(r, "worker-1", wait) for r in held])
                )
            except BaseException as exc:  # handed to the test's thread, which re-raises it
                outcome.append(exc)

        with store.engine.connect() as other:
            other.exec_driver_sql("SET LOCAL deadlock_timeout = '20s'")
            other.exec_driver_sql("SELECT 1 FROM process_instances WHERE id = 'id-D-2' FOR UPDATE")
            writer = threading.Thread(target=write)
            writer.start()
            deadline = time.monotonic() + 10
            while not _waiting_for_a_lock(store) and time.monotonic() < deadline:
                time.sleep(0.02)
            other.exec_driver_sql(
                "UPDATE process_instances SET updated_at = updated_at WHERE id = 'id-D-1'"
            )
            other.commit()
            writer.join(timeout=30)
        [result] = outcome
        if isinstance(result, BaseException):
            raise result
        assert [r.outcome for r in result] == ["ok", "ok"]
        assert all(processes.get(r.id).state["by"] == "worker-1" for r in held)  # type: ignore[union-attr]
        assert [e["what"] for e in processes.history("id-D-1")] == ["worker-1"]
    finally:
        store.close()


def _waiting_for_a_lock(store: SqlStore) -> bool:
    with store.engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).scalar_one()
    return bool(waiting)


def test_a_claim_leaves_out_what_its_worker_is_writing(store: SqlStore) -> None:
    """A worker whose leases ran out while it wrote one of its instances claims the others
    again, but not that one: the claim would read it as it was before the write."""
    processes = SqlProcessStore(store)
    processes.write(None, [start("B-1"), start("B-2")])
    assert len(processes.claim("worker-1", 10, 0.05).instances) == 2
    time.sleep(0.2)  # both leases run out
    again = processes.claim("worker-1", 10, 30.0, busy=["id-B-1"])
    assert [r.id for r in again.instances] == ["id-B-2"]
    assert [r.id for r in processes.claim("worker-2", 10, 30.0).instances] == ["id-B-1"]


def _relations_scanned_whole(
    conn: psycopg.Connection[Any], statement: str, params: Any
) -> set[str]:
    """The tables PostgreSQL's plan for ``statement`` reads from end to end (Seq Scan)."""
    [[plan]] = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params).fetchall()
    conn.rollback()
    scanned: set[str] = set()
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node["Node Type"] == "Seq Scan":
            scanned.add(node["Relation Name"])
        nodes.extend(node.get("Plans", []))
    return scanned


@pytest.mark.parametrize("limit", [10, 0], ids=["claiming", "at-capacity"])
def test_a_claim_finds_its_instances_by_index_however_many_have_ended(
    pg_url: str, limit: int
) -> None:
    """Ended instances stay in the table for good; a claim must not read through them. With
    a few thousand of them PostgreSQL's statistics made it choose to scan the whole table at
    every claim, a cost that grew with every instance ever run."""
    store = SqlStore.from_url(pg_url)
    processes = SqlProcessStore(store)
    processes.write(None, [start("due-1"), start("held-1")])
    [held] = processes.claim("worker-1", 1, 30.0).instances
    processes.enqueue(held.id, "signal", {"name": "go"})
    with psycopg.connect(libpq_url(pg_url)) as conn:
        conn.execute(
            "INSERT INTO process_instances (id, process, version, business_key, status, "
            "state, created_at, updated_at) SELECT 'ended-' || n, 'p', 1, 'ended-' || n, "
            "'completed', repeat('x', 400), 0, 0 FROM generate_series(1, 3000) AS n"
        )
        conn.commit()
        conn.execute("ANALYZE")
        params = {"limit": limit, "worker": "worker-1", "lease": 30.0, "busy": []}
        statement = _CLAIM_PG if limit else _INBOX_PG
        assert "process_instances" not in _relations_scanned_whole(conn, statement, params)

    claimed = processes.claim("worker-1", limit, 30.0)
    other = sorted({"id-due-1", "id-held-1"} - {held.id})
    assert [r.id for r in claimed.instances] == ([] if limit == 0 else other)
    assert [(i.kind, i.body) for i in claimed.inbox[held.id]] == [("signal", {"name": "go"})]
    store.close()
