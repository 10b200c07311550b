"""Group writes of process instances, on both write paths (SQLite's transaction,
PostgreSQL's single statement): a worker whose lease another worker took over writes
nothing, and a write the database refuses fails with the store's error, naming the cause
and the fix, and leaves nothing of the group behind."""

from __future__ import annotations

import time

import pytest

from charter.errors import StoreError
from charter.store.processes import InstanceRecord, InstanceWrite, SqlProcessStore
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


def step(record: InstanceRecord, by: str) -> InstanceWrite:
    """A transition of ``record`` made by the worker ``by``, leaving it with nothing due."""
    state = {**record.state, "by": by}
    moved = InstanceRecord(**{**vars(record), "state": state})
    return InstanceWrite(moved, had_waits=False, history=[{"at": time.time(), "what": by}])


def test_a_worker_whose_lease_was_taken_over_writes_nothing(store: SqlStore) -> None:
    processes = SqlProcessStore(store)
    [created] = processes.write(None, [start("L-1")])
    assert created.outcome == "ok"
    [held] = processes.claim("worker-1", 10, 0.05).instances
    time.sleep(0.2)  # worker-1 stalls; its lease runs out and worker-2 takes the instance
    [taken] = processes.claim("worker-2", 10, 30.0).instances
    assert taken.id == held.id

    [late] = processes.write("worker-1", [step(held, "worker-1")])
    assert late.outcome == "lost"
    assert "by" not in (processes.get(held.id) or held).state
    assert [e["what"] for e in processes.history(held.id)] == []

    [done] = processes.write("worker-2", [step(taken, "worker-2")])
    assert done.outcome == "ok"
    assert (processes.get(held.id) or held).state["by"] == "worker-2"
    assert [e["what"] for e in processes.history(held.id)] == ["worker-2"]


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
