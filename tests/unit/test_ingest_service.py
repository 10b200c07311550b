"""The ingest service over the in-memory store with the starter project."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import load_project
from charter.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidEvent,
    UnknownSystem,
)
from charter.hub import IngestAnswer, IngestService, Router, delivery_key, event_id
from charter.hub.parsing import BATCH, STRUCTURED
from charter.store import DeliveryCounts, IngestBatch, IngestResult, MemoryStore

NOTHING = DeliveryCounts(received=0, pending=0, delivered=0, dead=0, retried=0, attempts=0)


def deal(ce_id: str = "deal-1", **data: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": "D-1",
        "account": {"id": "A-1", "name": "Acme", "country": "DE"},
        "amount": 10,
        "currency": "EUR",
        "stage": "closed_won",
        "owner_id": "rep-7",
        "lines": [{"sku": "X1", "qty": 2, "unit_price": 5}],
    }
    payload.update(data)
    return {
        "specversion": "1.0",
        "id": ce_id,
        "source": "crm",
        "type": "deal.closed",
        "data": payload,
    }


def body(value: Any) -> bytes:
    return orjson.dumps(value)


@pytest.fixture
def router(project_dir: Path) -> Router:
    return Router(load_project(project_dir))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def service(router: Router, store: MemoryStore) -> Iterator[IngestService]:
    service = IngestService(router, store)
    yield service
    service.close()


def test_a_valid_event_is_stored_with_one_delivery_of_the_canonical_order(
    service: IngestService, store: MemoryStore
) -> None:
    answer = service.ingest("crm", body(deal()), STRUCTURED)
    hub_id = event_id("crm", "deal-1")
    assert answer == IngestAnswer(202, {"accepted": 1, "ids": [hub_id]})
    event = store.get_event(hub_id)
    assert event is not None
    assert (event["system"], event["ce_id"], event["type"]) == ("crm", "deal-1", "deal.closed")
    assert orjson.loads(event["data"]) == deal()["data"]
    [delivery] = store.list_deliveries()
    assert (delivery["event_id"], delivery["integration"], delivery["target"]) == (
        hub_id,
        "deal-to-erp-order",
        "erp",
    )
    assert delivery["idempotency_key"] == delivery_key(hub_id, "deal-to-erp-order")
    assert delivery["mapping"] == "order-to-erp@1"
    assert (delivery["status"], delivery["attempts"], delivery["tier"]) == ("pending", 0, 0)
    assert orjson.loads(delivery["payload"]) == {
        "order_id": "D-1",
        "customer": {"id": "A-1", "name": "Acme", "country": "DE"},
        "total": 10,
        "currency": "EUR",
        # The ERP owns order.status (policy ignore): the CRM's value is dropped.
        "sales_rep": "rep-7",
        "lines": [{"sku": "X1", "quantity": 2, "unit_price": 5}],
    }


def test_a_batch_is_stored_in_order(service: IngestService, store: MemoryStore) -> None:
    events = [deal(f"deal-{n}", id=f"D-{n}") for n in range(3)]
    answer = service.ingest("crm", body(events), BATCH)
    assert answer.body["ids"] == [event_id("crm", f"deal-{n}") for n in range(3)]
    assert store.delivery_counts().received == 3
    payloads = [orjson.loads(d["payload"]) for d in reversed(store.list_deliveries())]
    assert [p["order_id"] for p in payloads] == ["D-0", "D-1", "D-2"]


def test_a_schema_violation_names_the_field_and_stores_nothing(
    service: IngestService, store: MemoryStore
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        service.ingest("crm", body(deal(amount="ten")), STRUCTURED)
    assert caught.value.status == 422
    assert caught.value.extra["pointer"] == "/data/amount"
    assert caught.value.detail.startswith("/data/amount: ")
    assert store.delivery_counts() == NOTHING


def test_a_schema_violation_in_a_batch_names_the_event_by_index(
    service: IngestService, store: MemoryStore
) -> None:
    events = [deal(f"deal-{n}") for n in range(5)]
    events[3] = deal("deal-3", amount=-1)
    with pytest.raises(InvalidEvent) as caught:
        service.ingest("crm", body(events), BATCH)
    assert caught.value.extra["pointer"] == "/3/data/amount"
    assert store.delivery_counts() == NOTHING


def test_a_missing_required_field_is_named(service: IngestService) -> None:
    event = deal()
    del event["data"]["account"]["name"]
    with pytest.raises(InvalidEvent) as caught:
        service.ingest("crm", body(event), STRUCTURED)
    assert caught.value.extra["pointer"].startswith("/data/account")
    assert "name" in caught.value.detail


def test_an_unmapped_pick_list_value_is_refused_and_stores_nothing(
    service: IngestService, store: MemoryStore
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        service.ingest("crm", body(deal(stage="weird")), STRUCTURED)
    assert caught.value.extra["pointer"] == "/data/stage"
    assert "'weird'" in caught.value.detail
    assert "deal-to-erp-order" in caught.value.detail
    assert store.delivery_counts() == NOTHING


def test_an_undeclared_event_type_is_refused(service: IngestService) -> None:
    event = deal()
    event["type"] = "deal.opened"
    with pytest.raises(InvalidEvent) as caught:
        service.ingest("crm", body(event), STRUCTURED)
    assert caught.value.extra["pointer"] == "/type"
    assert caught.value.fix is not None and "deal.closed" in caught.value.fix


def test_an_unknown_system_is_refused(service: IngestService, store: MemoryStore) -> None:
    with pytest.raises(UnknownSystem) as caught:
        service.ingest("hubspot", body(deal()), STRUCTURED)
    assert caught.value.status == 404
    assert "'hubspot'" in caught.value.detail
    assert caught.value.fix is not None and "crm, erp" in caught.value.fix
    assert store.delivery_counts() == NOTHING


def test_the_same_key_and_body_get_the_same_answer_and_store_once(
    service: IngestService, store: MemoryStore
) -> None:
    first = service.ingest("crm", body(deal()), STRUCTURED, "key-1")
    again = service.ingest("crm", body(deal()), STRUCTURED, "key-1")
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.status, again.body) == (first.status, first.body)
    counts = store.delivery_counts()
    assert (counts.received, counts.pending) == (1, 1)


def test_keys_are_per_system(service: IngestService, store: MemoryStore) -> None:
    service.ingest("crm", body(deal()), STRUCTURED, "key-1")
    assert store.find_idempotency_record("crm", "key-1") is not None
    assert store.find_idempotency_record("erp", "key-1") is None


def test_the_same_key_with_another_body_is_refused(
    service: IngestService, store: MemoryStore
) -> None:
    service.ingest("crm", body(deal()), STRUCTURED, "key-1")
    with pytest.raises(IdempotencyKeyReused) as caught:
        service.ingest("crm", body(deal("deal-2", id="D-2")), STRUCTURED, "key-1")
    assert caught.value.status == 422
    assert store.delivery_counts().received == 1


def test_a_refused_request_does_not_burn_its_key(
    service: IngestService, store: MemoryStore
) -> None:
    with pytest.raises(InvalidEvent):
        service.ingest("crm", body(deal(amount="ten")), STRUCTURED, "key-1")
    answer = service.ingest("crm", body(deal()), STRUCTURED, "key-1")
    assert (answer.status, answer.replayed) == (202, False)
    assert store.delivery_counts().received == 1


class BlockingStore(MemoryStore):
    """Holds the first ``append`` until released, to keep a request in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.appending = threading.Event()
        self.release = threading.Event()

    def append(self, batches: list[IngestBatch]) -> list[IngestResult]:
        if not self.appending.is_set():
            self.appending.set()
            assert self.release.wait(timeout=10), "the test never released append"
        return super().append(batches)


def test_a_key_still_in_flight_is_refused_with_409(router: Router) -> None:
    store = BlockingStore()
    service = IngestService(router, store)
    answers: list[IngestAnswer] = []
    first = threading.Thread(
        target=lambda: answers.append(service.ingest("crm", body(deal()), STRUCTURED, "key-1"))
    )
    first.start()
    try:
        assert store.appending.wait(timeout=10)
        with pytest.raises(IdempotencyKeyInFlight) as caught:
            service.ingest("crm", body(deal()), STRUCTURED, "key-1")
        assert caught.value.status == 409
        assert store.delivery_counts().received == 0
    finally:
        store.release.set()
        first.join(timeout=10)
    try:
        assert [a.status for a in answers] == [202]
        replay = service.ingest("crm", body(deal()), STRUCTURED, "key-1")
        assert replay.replayed and replay.body == answers[0].body
        assert store.delivery_counts().received == 1
    finally:
        service.close()


@pytest.mark.parametrize("same_body", [True, False])
def test_two_hubs_on_one_store_never_both_take_a_key(router: Router, same_body: bool) -> None:
    store = BlockingStore()
    first_hub, second_hub = IngestService(router, store), IngestService(router, store)
    outcome: list[IngestAnswer | Exception] = []

    def first_request() -> None:
        try:
            outcome.append(first_hub.ingest("crm", body(deal()), STRUCTURED, "key-1"))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=first_request)
    thread.start()
    try:
        assert store.appending.wait(timeout=10)
        other = deal() if same_body else deal("deal-2", id="D-2")
        answer = second_hub.ingest("crm", body(other), STRUCTURED, "key-1")
        assert (answer.status, answer.replayed) == (202, False)
    finally:
        store.release.set()
        thread.join(timeout=10)
        first_hub.close()
        second_hub.close()
    [first] = outcome
    if same_body:
        assert isinstance(first, IngestAnswer)
        assert (first.replayed, first.body) == (True, answer.body)
    else:
        assert isinstance(first, IdempotencyKeyReused)
    assert store.delivery_counts().received == 1


def test_a_resent_event_without_a_key_keeps_its_id_and_is_stored_once(
    service: IngestService, store: MemoryStore
) -> None:
    first = service.ingest("crm", body(deal()), STRUCTURED)
    again = service.ingest("crm", body(deal()), STRUCTURED)
    assert again.body == first.body == {"accepted": 1, "ids": [event_id("crm", "deal-1")]}
    assert not again.replayed
    counts = store.delivery_counts()
    assert (counts.received, counts.pending) == (1, 1)
    assert len(store.list_deliveries()) == 1


def test_a_batch_repeating_an_event_stores_it_once(
    service: IngestService, store: MemoryStore
) -> None:
    answer = service.ingest("crm", body([deal(), deal(), deal("deal-2")]), BATCH)
    assert answer.body["accepted"] == 3
    assert answer.body["ids"][0] == answer.body["ids"][1]
    counts = store.delivery_counts()
    assert (counts.received, counts.pending) == (2, 2)
