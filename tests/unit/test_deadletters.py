"""Dead-letter operations and replay as services, on the in-memory store and the starter project."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import load_project
from charter.delivery.deadletters import (
    DeadLetterQuery,
    DeadLetters,
    InvalidOperation,
    MappingChoice,
    content_key,
    operator,
    parse_age,
)
from charter.delivery.replay import Replayer, ReplayQuery, parse_time
from charter.errors import Conflict, NotFound
from charter.hub import Router, delivery_key
from charter.hub.parsing import CloudEvent
from charter.store import ErrorClass, IngestBatch, MemoryStore, Operator, Outcome, error_class
from tests.integration.test_store import result

INTEGRATION = "deal-to-erp-order"
WHO = Operator("ana", "ERP validation fixed")


def deal(number: int, stage: str = "closed_won") -> dict[str, Any]:
    return {
        "id": f"D-{number}",
        "account": {"id": "A-1", "name": "Acme"},
        "amount": 10 + number,
        "currency": "EUR",
        "stage": stage,
    }


def ingest(router: Router, store: MemoryStore, *numbers: int) -> list[str]:
    events = [CloudEvent(f"deal-{n}", "crm", "deal.closed", None, None, deal(n)) for n in numbers]
    prepared = router.prepare("crm", events, batch=True)
    store.append([IngestBatch(prepared)])
    return [e.id for e in prepared]


def kill(store: MemoryStore, status: int | None = 422, error: str = "not retryable: no") -> None:
    """Every due delivery fails for good."""
    claimed = store.claim_due_deliveries("w", 10_000, 60)
    store.record_attempts("w", [result(d.id, Outcome.DEAD, status, error) for d in claimed])


def deliver_all(store: MemoryStore) -> None:
    claimed = store.claim_due_deliveries("w", 10_000, 60)
    store.record_attempts("w", [result(d.id, Outcome.DELIVERED) for d in claimed])


def with_erp_mapping_v2(project_dir: Path) -> Router:
    """The starter project routing to ``order-to-erp@2`` (v1 stays in the project)."""
    v1 = (project_dir / "mappings" / "order-to-erp.yaml").read_text()
    (project_dir / "mappings" / "order-to-erp-v2.yaml").write_text(
        v1.replace("version: 1", "version: 2", 1).replace(
            "total: {from: total}", "total: {from: total}\n  note: {const: v2}"
        )
    )
    integration = project_dir / "integrations" / "deal-to-erp-order.yaml"
    integration.write_text(integration.read_text().replace("order-to-erp@1", "order-to-erp@2"))
    return Router(load_project(project_dir))


@pytest.fixture
def router(project_dir: Path) -> Router:
    return Router(load_project(project_dir))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def test_error_classes_are_stable_words_for_the_last_attempt() -> None:
    assert error_class(503, "gave up") is ErrorClass.HTTP_5XX
    assert error_class(409, "not retryable") is ErrorClass.HTTP_4XX
    assert error_class(429, None) is ErrorClass.RATE_LIMITED
    assert error_class(408, None) is ErrorClass.TIMEOUT
    assert error_class(None, "erp: read timeout calling POST /orders") is ErrorClass.TIMEOUT
    assert error_class(None, "erp: connect error calling POST /orders") is ErrorClass.CONNECTION
    assert error_class(None, "erp: disconnected calling POST /orders") is ErrorClass.CONNECTION
    assert (
        error_class(
            None,
            "not retryable: value 'x' at /status has no entry in the value map of "
            "field 'status' in mapping order-to-erp v1",
        )
        is ErrorClass.MAPPING
    )
    assert (
        error_class(
            None, "mapping order-to-erp@9 to 'erp' of delivery 3 is no longer in the project"
        )
        is ErrorClass.NOT_FOUND
    )
    assert error_class(None, "something odd") is ErrorClass.OTHER
    assert error_class(None, None) is None


def test_who_and_why_are_required() -> None:
    with pytest.raises(InvalidOperation) as missing:
        operator("ana", "  ")
    assert missing.value.pointer == "/reason"
    with pytest.raises(InvalidOperation) as nobody:
        operator(None, "fixed")
    assert nobody.value.pointer == "/by"
    assert operator(" ana ", "fixed") == Operator("ana", "fixed")


def test_ages_and_times_are_read_or_refused_with_the_member_named() -> None:
    assert parse_age("2h") == 7200
    assert parse_age(None) is None
    with pytest.raises(InvalidOperation) as age:
        parse_age("yesterday")
    assert age.value.pointer == "/older_than"
    assert parse_time("since", "2026-01-01T00:00:00Z") == parse_time("since", "2026-01-01T00:00:00")
    with pytest.raises(InvalidOperation) as when:
        parse_time("until", "soon")
    assert when.value.pointer == "/until"


def test_dead_letters_filter_by_owning_team(router: Router, store: MemoryStore) -> None:
    ingest(router, store, 1, 2)
    kill(store)
    letters = DeadLetters(router, store)
    # sales-ops owns the integration, finance-ops the ERP: both see them.
    assert len(letters.search(DeadLetterQuery(team="sales-ops"))) == 2
    assert len(letters.search(DeadLetterQuery(team="finance-ops"))) == 2
    assert letters.search(DeadLetterQuery(team="integration-platform")) == []
    [first, _] = letters.search(DeadLetterQuery(error_class="http_4xx"))
    assert first["owners"] == {"integration": "sales-ops", "system": "finance-ops"}
    assert letters.search(DeadLetterQuery(older_than=3600)) == []
    with pytest.raises(InvalidOperation) as team:
        letters.search(DeadLetterQuery(team="nobody"))
    assert team.value.pointer == "/team"
    with pytest.raises(InvalidOperation):
        letters.search(DeadLetterQuery(error_class="gremlins"))


def test_show_has_the_event_payload_error_attempts_and_actions(
    router: Router, store: MemoryStore
) -> None:
    [hub_id] = ingest(router, store, 1)
    kill(store, 422, "not retryable: erp answered 422")
    letters = DeadLetters(router, store)
    [row] = letters.search(DeadLetterQuery())
    letters.discard(row["id"], WHO)
    shown = letters.show(row["id"])
    assert shown["event"]["id"] == hub_id
    assert shown["event"]["data"]["id"] == "D-1"
    assert shown["payload"]["order_id"] == "D-1"
    assert shown["last_error"] == "not retryable: erp answered 422"
    assert [a["outcome"] for a in shown["attempts_log"]] == ["dead"]
    assert [(a["action"], a["reason"]) for a in shown["actions"]] == [("discard", WHO.reason)]
    with pytest.raises(NotFound):
        letters.show(999)


def test_a_redrive_uses_the_current_mapping_and_a_new_key_only_for_new_content(
    project_dir: Path, store: MemoryStore
) -> None:
    old = Router(load_project(project_dir))
    [hub_id] = ingest(old, store, 1)
    kill(store)
    letters = DeadLetters(with_erp_mapping_v2(project_dir), store)
    [row] = letters.search(DeadLetterQuery())
    shown = letters.redrive(row["id"], WHO)
    assert shown["status"] == "pending"
    assert shown["mapping"] == "order-to-erp@2"
    assert shown["idempotency_key"] == content_key(
        hub_id, INTEGRATION, "order-to-erp@2", row_payload(store, row["id"])
    )
    kill(store)
    # The original version on request: what the delivery was created with, and its key.
    again = letters.redrive(row["id"], WHO, mapping=MappingChoice.ORIGINAL)
    assert again["mapping"] == "order-to-erp@1"
    assert again["idempotency_key"] != delivery_key(hub_id, INTEGRATION)  # content changed
    kill(store)
    same = letters.redrive(row["id"], WHO, mapping=MappingChoice.ORIGINAL)
    assert same["idempotency_key"] == again["idempotency_key"]  # same content, same key
    assert [a["action"] for a in same["actions"]] == ["redrive", "redrive", "redrive"]


def row_payload(store: MemoryStore, ident: int) -> str:
    row = store.get_delivery(ident)
    assert row is not None
    return str(row["payload"])


def test_an_edited_payload_is_checked_against_the_canonical_schema(
    router: Router, store: MemoryStore
) -> None:
    [hub_id] = ingest(router, store, 1)
    kill(store)
    letters = DeadLetters(router, store)
    [row] = letters.search(DeadLetterQuery())
    payload = orjson.loads(row_payload(store, row["id"]))
    with pytest.raises(InvalidOperation) as bad:
        letters.redrive(row["id"], WHO, payload=payload | {"total": "lots"})
    assert bad.value.pointer == "/payload/total"
    assert store.delivery_actions(row["id"]) == []  # nothing changed
    shown = letters.redrive(row["id"], WHO, payload=payload | {"total": 99})
    assert shown["payload"]["total"] == 99
    assert shown["idempotency_key"].startswith(delivery_key(hub_id, INTEGRATION) + ":")
    assert [a["action"] for a in shown["actions"]] == ["edit", "redrive"]


def test_delivered_or_pending_deliveries_are_not_redriven_or_discarded(
    router: Router, store: MemoryStore
) -> None:
    ingest(router, store, 1, 2)
    [pending, delivered] = [r["id"] for r in store.list_deliveries()]
    claimed = store.claim_due_deliveries("w", 1, 60)
    store.record_attempts("w", [result(claimed[0].id, Outcome.DELIVERED)])
    letters = DeadLetters(router, store)
    with pytest.raises(Conflict, match="already delivered"):
        letters.redrive(delivered, WHO)
    with pytest.raises(Conflict, match="still pending"):
        letters.redrive(pending, WHO)
    with pytest.raises(Conflict, match="not dead"):
        letters.discard(delivered, WHO)


def test_a_bulk_redrive_takes_what_the_filter_matches(router: Router, store: MemoryStore) -> None:
    ingest(router, store, 1, 2)
    kill(store, 503, "gave up after 12 attempts: erp answered 503")
    ingest(router, store, 3)
    kill(store, None, "not retryable: erp: connect error calling POST /orders")
    letters = DeadLetters(router, store)
    ids = letters.redrive_many(DeadLetterQuery(error_class="http_5xx"), WHO)
    assert len(ids) == 2
    assert [r["error_class"] for r in letters.search(DeadLetterQuery())] == ["connection"]


def test_a_dry_run_counts_and_a_replay_of_delivered_events_keeps_their_keys(
    router: Router, store: MemoryStore
) -> None:
    hub_ids = ingest(router, store, *range(1, 6))
    deliver_all(store)
    keys = {r["id"]: r["idempotency_key"] for r in store.list_deliveries()}
    replayer = Replayer(router, store)
    counted = replayer.count(ReplayQuery())
    assert (counted.events, counted.deliveries, counted.rearmed) == (5, 5, 0)
    assert all(r["status"] == "delivered" for r in store.list_deliveries())
    seen: list[int] = []
    report = replayer.run(ReplayQuery(), WHO, progress=seen.append)
    assert (report.events, report.rearmed, report.created, report.failed) == (5, 5, 0, 0)
    assert sum(seen) == 5
    assert {r["id"]: r["idempotency_key"] for r in store.list_deliveries()} == keys
    assert {delivery_key(h, INTEGRATION) for h in hub_ids} == set(keys.values())
    # Pending ones are left to the worker.
    again = replayer.run(ReplayQuery(), WHO)
    assert (again.rearmed, again.pending) == (0, 5)


def test_a_replay_selects_by_key_type_system_and_time(router: Router, store: MemoryStore) -> None:
    ingest(router, store, 1, 2, 3)
    deliver_all(store)
    replayer = Replayer(router, store)
    assert replayer.count(ReplayQuery(key="D-2")).events == 1
    assert replayer.count(ReplayQuery(key="D-")).events == 0
    assert replayer.count(ReplayQuery(type="deal.closed", system="crm")).events == 3
    assert replayer.count(ReplayQuery(since=time.time() + 60)).events == 0
    assert replayer.count(ReplayQuery(until=time.time() + 60)).events == 3
    assert replayer.count(ReplayQuery(integration=INTEGRATION)).deliveries == 3
    with pytest.raises(InvalidOperation) as empty:
        replayer.count(ReplayQuery(since=10.0, until=5.0))
    assert empty.value.pointer == "/until"
    with pytest.raises(InvalidOperation) as unknown:
        replayer.count(ReplayQuery(integration="nope"))
    assert unknown.value.pointer == "/integration"


def test_a_replay_after_a_mapping_fix_sends_corrected_content_under_a_new_key(
    project_dir: Path, store: MemoryStore
) -> None:
    [hub_id] = ingest(Router(load_project(project_dir)), store, 1)
    kill(store)
    report = Replayer(with_erp_mapping_v2(project_dir), store).run(ReplayQuery(), WHO)
    assert report.rearmed == 1
    [row] = store.list_deliveries()
    assert row["mapping"] == "order-to-erp@2"
    assert row["idempotency_key"] == content_key(
        hub_id, INTEGRATION, "order-to-erp@2", row["payload"]
    )
