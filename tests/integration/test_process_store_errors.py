"""A group write the database refuses fails with the store's error, naming the cause and
the fix, on both write paths (SQLite's transaction, PostgreSQL's single statement), and
leaves nothing of the group behind."""

from __future__ import annotations

import time

import pytest

from charter.errors import StoreError
from charter.store.processes import InstanceRecord, InstanceWrite, SqlProcessStore
from charter.store.sql import SqlStore


def start(key: str, status: str | None) -> InstanceWrite:
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
