"""Records of events for lineage (``record_keys``): the Store contract on the in-memory fake,
SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from charter.catalog import load_project
from charter.governance.lineage import lineage
from charter.store import NewEvent, Operator, Outcome, Rearm, RecordKey, SqlStore, Store, upgrade
from charter.store.schema import record_keys
from tests.conftest import copy_starter
from tests.integration.test_store import any_store, append, claim_ids, event, result

__all__ = ["any_store"]

INGRESS = "crm-deal-to-order@1"


def keyed(n: int | str, key: str, *more: RecordKey) -> NewEvent:
    records = [RecordKey("order", key, "deal-to-erp-order", INGRESS), *more]
    return dataclasses.replace(event(n), records=records)


def test_the_trail_of_a_record_lists_its_events_deliveries_and_attempts(any_store: Store) -> None:
    append(any_store, keyed(1, "D-1"), keyed(2, "D-2"), event(3))
    append(any_store, keyed(4, "D-1"))
    [first] = claim_ids(any_store, "w1", limit=1)
    assert any_store.get_delivery(first)["event_id"] == "evt-1"  # type: ignore[index]
    any_store.record_attempts("w1", [result(first, Outcome.DEAD, 400)])
    any_store.redrive([Rearm(first)], Operator("ana", "fixed"))

    trail = any_store.record_trail("order", "D-1")

    assert [(e["id"], e["integration"], e["mapping"]) for e in trail.events] == [
        ("evt-1", "deal-to-erp-order", INGRESS),
        ("evt-4", "deal-to-erp-order", INGRESS),
    ]
    assert trail.events[0]["ce_id"] == "deal-1" and trail.events[0]["received_at"] > 0
    assert [d["event_id"] for d in trail.deliveries] == ["evt-1", "evt-4"]
    assert [(a["delivery_id"], a["status_code"]) for a in trail.attempts] == [(first, 400)]
    assert [(a["action"], a["by"]) for a in trail.actions] == [("redrive", "ana")]
    assert isinstance(trail.actions[0]["details"], dict)


def test_a_record_is_found_by_entity_and_key_only(any_store: Store) -> None:
    invoice = RecordKey("invoice", "D-1", "deal-to-invoice", "crm-deal-to-invoice@2")
    append(any_store, keyed(1, "D-1", invoice))
    assert [e["mapping"] for e in any_store.record_trail("invoice", "D-1").events] == [
        "crm-deal-to-invoice@2"
    ]
    assert any_store.record_trail("order", "d-1").events == []
    assert any_store.record_trail("customer", "D-1").events == []
    empty = any_store.record_trail("order", "nothing")
    assert (empty.deliveries, empty.attempts, empty.actions) == ([], [], [])


def test_a_duplicate_event_adds_no_record_row(any_store: Store) -> None:
    append(any_store, keyed(1, "D-1"))
    append(any_store, keyed(1, "D-1"))
    assert len(any_store.record_trail("order", "D-1").events) == 1


def test_ingest_writes_the_record_key_with_the_event(db_url: str, tmp_path: Path) -> None:
    from charter.hub import IngestService, Router
    from charter.hub.parsing import STRUCTURED

    project = load_project(copy_starter(tmp_path / "project"))
    store = SqlStore.from_url(db_url)
    upgrade(store.engine)
    ingest = IngestService(Router(project), store)
    try:
        body = (
            b'{"specversion": "1.0", "id": "c-1", "source": "crm", "type": "deal.closed",'
            b' "data": {"id": "D-9", "account": {"id": "A", "name": "Acme"}, "amount": 1,'
            b' "currency": "EUR", "stage": "closed_won"}}'
        )
        assert ingest.ingest("crm", body, STRUCTURED).status == 202
        with store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(record_keys.select())]
        assert [(r["entity"], r["key"], r["integration"], r["mapping"]) for r in rows] == [
            ("order", "D-9", "deal-to-erp-order", INGRESS)
        ]
        found = lineage(store, project, "order", "D-9")
        assert [d.target for d in found.deliveries] == ["erp"]
    finally:
        ingest.close()
        store.close()
