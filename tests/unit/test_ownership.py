"""Field-level system of record at ingest: reject, ignore and quarantine, with the in-memory
store. The starter project's ERP owns ``order.status``; the CRM's mapping writes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import load_project
from charter.errors import Conflict, NotFound
from charter.governance.ownership import FieldWriteRefused, QuarantineReview, write_report
from charter.hub import IngestService, Router, event_id
from charter.hub.parsing import STRUCTURED
from charter.store import MemoryStore, Operator

ANA = Operator("ana", "the ERP confirms the cancellation")


def deal(ce_id: str, stage: str = "closed_lost") -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": ce_id,
            "source": "crm",
            "type": "deal.closed",
            "data": {
                "id": f"D-{ce_id}",
                "account": {"id": "A-1", "name": "Acme"},
                "amount": 10,
                "currency": "EUR",
                "stage": stage,
            },
        }
    )


def with_policy(project_dir: Path, policy: str) -> Path:
    entity = project_dir / "entities" / "order.yaml"
    text = entity.read_text()
    old = "status: {system_of_record: erp, policy: ignore}"
    assert old in text
    entity.write_text(text.replace(old, f"status: {{system_of_record: erp, policy: {policy}}}"))
    return project_dir


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def hub(project_dir: Path, store: MemoryStore, policy: str) -> Iterator[IngestService]:
    service = IngestService(Router(load_project(with_policy(project_dir, policy))), store)
    yield service
    service.close()


@pytest.fixture
def ignoring(project_dir: Path, store: MemoryStore) -> Iterator[IngestService]:
    yield from hub(project_dir, store, "ignore")


@pytest.fixture
def rejecting(project_dir: Path, store: MemoryStore) -> Iterator[IngestService]:
    yield from hub(project_dir, store, "reject")


@pytest.fixture
def quarantining(project_dir: Path, store: MemoryStore) -> Iterator[IngestService]:
    yield from hub(project_dir, store, "quarantine")


def payload(row: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(row["payload"])
    return found


def counts(service: IngestService, store: MemoryStore) -> dict[tuple[str, ...], int]:
    service.drift.flush()
    return {
        (r["system"], r["entity"], r["field"], r["policy"], r["outcome"]): r["count"]
        for r in write_report(service.router.project, store)
    }


def test_ignore_drops_the_field_from_what_is_delivered_and_counts_it(
    ignoring: IngestService, store: MemoryStore
) -> None:
    assert ignoring.ingest("crm", deal("1"), STRUCTURED).status == 202
    assert ignoring.ingest("crm", deal("2", "closed_won"), STRUCTURED).status == 202
    rows = store.list_deliveries()
    assert [r["status"] for r in rows] == ["pending", "pending"]
    assert all("status" not in payload(r) for r in rows)
    assert all(payload(r)["order_id"].startswith("D-") for r in rows)
    assert counts(ignoring, store) == {("crm", "order", "status", "ignore", "ignored"): 2}
    # The report names the field's owner: the ERP, run by finance-ops.
    [row] = write_report(ignoring.router.project, store)
    assert (row["system_of_record"], row["team"]) == ("erp", "finance-ops")


def test_a_resent_event_is_not_counted_twice(ignoring: IngestService, store: MemoryStore) -> None:
    ignoring.ingest("crm", deal("1"), STRUCTURED)
    ignoring.ingest("crm", deal("1"), STRUCTURED)
    assert counts(ignoring, store) == {("crm", "order", "status", "ignore", "ignored"): 1}


def test_reject_refuses_the_event_names_the_owner_stores_nothing_and_counts_it(
    rejecting: IngestService, store: MemoryStore
) -> None:
    with pytest.raises(FieldWriteRefused) as caught:
        rejecting.ingest("crm", deal("1"), STRUCTURED)
    problem = caught.value.problem()
    assert problem["status"] == 422
    assert problem["type"].endswith("/field-write-refused")
    assert (problem["field"], problem["system_of_record"], problem["policy"]) == (
        "order.status",
        "erp",
        "reject",
    )
    assert "system 'crm' writes order.status" in problem["detail"]
    assert "finance-ops" in problem["fix"] and "stop mapping 'status'" in problem["fix"]
    assert problem["pointer"] == "/data"
    assert store.get_event(event_id("crm", "1")) is None
    assert store.list_deliveries() == []
    assert counts(rejecting, store) == {("crm", "order", "status", "reject", "rejected"): 1}


def test_quarantine_holds_the_deliveries_where_no_worker_claims_them(
    quarantining: IngestService, store: MemoryStore
) -> None:
    assert quarantining.ingest("crm", deal("1"), STRUCTURED).status == 202
    [row] = store.list_deliveries()
    assert row["status"] == "quarantined"
    assert payload(row)["status"] == "cancelled"
    assert store.claim_due_deliveries("w1", 10, 30) == []
    assert store.next_due_at() is None
    assert store.delivery_counts().quarantined == 1
    [held] = QuarantineReview(quarantining.router.project, store).list(team="finance-ops")
    assert (held["system"], held["entity"], held["field"], held["value"]) == (
        "crm",
        "order",
        "status",
        "cancelled",
    )
    assert (held["system_of_record"], held["team"], held["status"]) == (
        "erp",
        "finance-ops",
        "open",
    )
    assert held["deliveries"] == [row["id"]]
    assert QuarantineReview(quarantining.router.project, store).list(team="sales-ops") == []
    assert counts(quarantining, store) == {
        ("crm", "order", "status", "quarantine", "quarantined"): 1
    }


def test_accepting_releases_the_deliveries_as_they_were_sent(
    quarantining: IngestService, store: MemoryStore
) -> None:
    quarantining.ingest("crm", deal("1"), STRUCTURED)
    review = QuarantineReview(quarantining.router.project, store)
    [held] = review.list()
    decided = review.decide(held["id"], True, ANA)
    assert (decided["status"], decided["decided_by"], decided["reason"]) == (
        "accepted",
        "ana",
        ANA.reason,
    )
    [row] = store.list_deliveries()
    assert decided["released"] == [row["id"]]
    assert (row["status"], payload(row)["status"]) == ("pending", "cancelled")
    assert [d.id for d in store.claim_due_deliveries("w1", 10, 30)] == [row["id"]]
    [action] = store.delivery_actions(row["id"])
    assert (action["action"], action["by"], action["details"]["field"]) == (
        "accept",
        "ana",
        "status",
    )
    assert review.list() == []
    assert counts(quarantining, store)[("crm", "order", "status", "quarantine", "accepted")] == 1


def test_rejecting_releases_the_deliveries_without_the_field(
    quarantining: IngestService, store: MemoryStore
) -> None:
    quarantining.ingest("crm", deal("1"), STRUCTURED)
    review = QuarantineReview(quarantining.router.project, store)
    [held] = review.list()
    review.decide(held["id"], False, ANA)
    [row] = store.list_deliveries()
    assert row["status"] == "pending"
    assert "status" not in payload(row) and payload(row)["order_id"] == "D-1"
    [action] = store.delivery_actions(row["id"])
    assert action["action"] == "reject"
    assert action["details"]["payload_before"]["status"] == "cancelled"
    [decided] = review.list(status="rejected")
    assert decided["decided_by"] == "ana"
    assert counts(quarantining, store)[("crm", "order", "status", "quarantine", "rejected")] == 1


def test_a_held_write_is_decided_once(quarantining: IngestService, store: MemoryStore) -> None:
    quarantining.ingest("crm", deal("1"), STRUCTURED)
    review = QuarantineReview(quarantining.router.project, store)
    [held] = review.list()
    review.decide(held["id"], True, ANA)
    with pytest.raises(Conflict, match="already accepted by ana"):
        review.decide(held["id"], False, ANA)
    with pytest.raises(NotFound):
        review.decide(held["id"] + 100, True, ANA)
    [row] = store.list_deliveries()
    assert payload(row)["status"] == "cancelled"


def test_the_system_of_record_writes_its_own_fields_unhindered(
    rejecting: IngestService, store: MemoryStore
) -> None:
    # The CRM owns order_id and total; a mapping without 'status' writes nothing it does not own.
    mapping = rejecting.router.project.root / "mappings" / "crm-deal-to-order.yaml"
    text = mapping.read_text()
    start, end = text.index("  status:\n"), text.index("  sales_rep:")
    mapping.write_text(text[:start] + text[end:])
    service = IngestService(Router(load_project(rejecting.router.project.root)), store)
    try:
        assert service.ingest("crm", deal("1"), STRUCTURED).status == 202
        assert counts(service, store) == {}
    finally:
        service.close()


def test_replay_maps_like_ingest_and_leaves_ignored_fields_out(
    ignoring: IngestService, store: MemoryStore
) -> None:
    ignoring.ingest("crm", deal("1"), STRUCTURED)
    [route] = ignoring.router.events[("crm", "deal.closed")].routes
    data = orjson.loads(deal("1"))["data"]
    assert "status" not in route.ingress.apply(data)
    assert route.ingress.mapping.apply(data)["status"] == "cancelled"
