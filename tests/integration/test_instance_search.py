"""Searching process instances stays an index lookup however many instances have ended: the
newest first, by status, and by business key alone, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import event, insert

from charter.store.processes import SqlProcessStore
from charter.store.schema import process_instances
from charter.store.sql import SqlStore

ENDED = 3_000
NEWEST_FIRST = "SCAN process_instances USING INDEX ix_instances_created"


@pytest.fixture
def processes(store: SqlStore) -> Iterator[SqlProcessStore]:
    """A store holding `ENDED` ended instances, one in a hundred failed, started a second
    apart, with the database's statistics up to date."""
    rows = [
        {
            "id": f"id-{n}",
            "process": "order-to-cash" if n % 3 == 0 else "noop",
            "version": 1,
            "business_key": f"ORD-{n}",
            "status": "failed" if n % 100 == 0 else "completed",
            "state": orjson.dumps({"status": "completed"}).decode(),
            "created_at": 1_700_000_000.0 + n,
            "updated_at": 1_700_000_000.0 + n,
        }
        for n in range(ENDED)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(process_instances), rows)
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    yield SqlProcessStore(store)


def searched(processes: SqlProcessStore, **filters: Any) -> tuple[list[str], list[str]]:
    """The business keys ``search(**filters)`` finds, and the steps of the database's plan
    that read a whole table to find them."""
    engine = processes.store.engine
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not a new connection's set-up
            statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        keys = [r["business_key"] for r in processes.search(**filters)]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    [(statement, params)] = statements
    with engine.connect() as conn:
        if processes.store.is_postgres:
            [[plan]] = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params)
            return keys, _seq_scans(plan[0]["Plan"])
        details = [r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)]
    # A SCAN step reads a whole table or index, but for the start-time index read newest
    # first, which stops at the limit (a SEARCH looks rows up in an index).
    return keys, [d for d in details if d.startswith("SCAN ") and d != NEWEST_FIRST]


def _seq_scans(node: dict[str, Any]) -> list[str]:
    """The tables PostgreSQL's plan reads from end to end."""
    found = [node["Relation Name"]] if node["Node Type"] == "Seq Scan" else []
    for child in node.get("Plans", []):
        found += _seq_scans(child)
    return found


def test_the_newest_instances_come_first_without_reading_the_table(
    processes: SqlProcessStore,
) -> None:
    keys, scanned = searched(processes, limit=20)
    assert keys == [f"ORD-{n}" for n in range(ENDED - 1, ENDED - 21, -1)]
    assert scanned == []


def test_failed_instances_are_found_newest_first_without_reading_the_table(
    processes: SqlProcessStore,
) -> None:
    keys, scanned = searched(processes, status="failed", limit=5)
    assert keys == ["ORD-2900", "ORD-2800", "ORD-2700", "ORD-2600", "ORD-2500"]
    assert scanned == []


def test_a_business_key_is_found_without_its_process_and_without_reading_the_table(
    processes: SqlProcessStore,
) -> None:
    keys, scanned = searched(processes, business_key="ORD-1234")
    assert keys == ["ORD-1234"]
    assert scanned == []
