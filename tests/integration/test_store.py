"""The Store contract, on SQLite, on PostgreSQL and on the in-memory fake that stands in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from charter.errors import StoreError
from charter.store import (
    AttemptResult,
    DeliveryCounts,
    DeliveryStatus,
    IdempotencyRecord,
    IngestBatch,
    IngestResult,
    MemoryStore,
    NewDelivery,
    NewEvent,
    Outcome,
    SqlStore,
    Store,
    upgrade,
)
from charter.store.schema import deliveries, events

INTEGRATION = "deal-to-erp-order"


def event(n: int | str, targets: tuple[str, ...] = ("erp",), tier: int = 0) -> NewEvent:
    hub_id = f"evt-{n}"
    return NewEvent(
        id=hub_id,
        system="crm",
        ce_id=f"deal-{n}",
        type="deal.closed",
        source="crm",
        subject=f"D-{n}",
        time="2024-05-01T10:00:00Z",
        data=f'{{"id": "D-{n}"}}',
        deliveries=[
            NewDelivery(
                integration=INTEGRATION,
                target=target,
                tier=tier,
                idempotency_key=f"{hub_id}:{INTEGRATION}",
                mapping=f"order-to-{target}@1",
                payload=f'{{"order_id": "D-{n}"}}',
            )
            for target in targets
        ],
    )


def record(key: str = "key-1", request_hash: str = "h1") -> IdempotencyRecord:
    return IdempotencyRecord("crm", key, request_hash, 202, '{"accepted": 1}')


def append(store: Store, *new: NewEvent) -> IngestResult:
    [result] = store.append([IngestBatch(list(new))])
    return result


def result(
    delivery_id: int,
    outcome: Outcome,
    status_code: int | None = 201,
    error: str | None = None,
    next_attempt_at: float | None = None,
) -> AttemptResult:
    return AttemptResult(
        delivery_id=delivery_id,
        outcome=outcome,
        started_at=time.time(),
        latency_ms=12.5,
        status_code=status_code,
        error=error,
        next_attempt_at=next_attempt_at,
    )


def claim_ids(store: Store, worker: str, limit: int = 100, lease: float = 60.0) -> list[int]:
    return [d.id for d in store.claim_due_deliveries(worker, limit, lease)]


def delivery(store: Store, delivery_id: int) -> dict[str, Any]:
    row = store.get_delivery(delivery_id)
    assert row is not None
    return row


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The fake and both databases: each contract test runs on all three."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'charter.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    store = SqlStore.from_url(url)
    upgrade(store.engine)
    yield store
    store.close()


# appending


def test_append_reports_what_was_new_and_what_was_already_logged(any_store: Store) -> None:
    first = append(any_store, event(1), event(2), event(1))
    assert first == IngestResult(appended=["evt-1", "evt-2"], duplicates=["evt-1"])
    resent = append(any_store, event(2), event(3))
    assert resent == IngestResult(appended=["evt-3"], duplicates=["evt-2"])
    several = any_store.append(
        [IngestBatch([event(4)]), IngestBatch([event(4), event(5)]), IngestBatch([])]
    )
    assert several == [
        IngestResult(appended=["evt-4"], duplicates=[]),
        IngestResult(appended=["evt-5"], duplicates=["evt-4"]),
        IngestResult(appended=[], duplicates=[]),
    ]
    counts = any_store.delivery_counts()
    assert (counts.received, counts.pending) == (5, 5)


def test_an_event_is_stored_as_sent(any_store: Store) -> None:
    append(any_store, event(1))
    row = any_store.get_event("evt-1")
    assert row is not None
    assert {k: row[k] for k in ("id", "system", "ce_id", "type", "source", "subject")} == {
        "id": "evt-1",
        "system": "crm",
        "ce_id": "deal-1",
        "type": "deal.closed",
        "source": "crm",
        "subject": "D-1",
    }
    assert (row["time"], row["data"]) == ("2024-05-01T10:00:00Z", '{"id": "D-1"}')
    assert abs(float(row["received_at"]) - time.time()) < 60
    assert any_store.get_event("evt-404") is None


def test_deliveries_are_created_once_per_event_and_target(any_store: Store) -> None:
    append(any_store, event(1, targets=("erp", "wms")))
    append(any_store, event(1, targets=("erp", "wms")), event(1, targets=("erp", "wms")))
    rows = any_store.list_deliveries()
    assert sorted((r["event_id"], r["target"]) for r in rows) == [
        ("evt-1", "erp"),
        ("evt-1", "wms"),
    ]
    erp = next(r for r in rows if r["target"] == "erp")
    assert (erp["status"], erp["attempts"], erp["lease_owner"]) == ("pending", 0, None)
    assert (erp["integration"], erp["tier"], erp["mapping"]) == (INTEGRATION, 0, "order-to-erp@1")
    assert erp["idempotency_key"] == f"evt-1:{INTEGRATION}"
    assert erp["payload"] == '{"order_id": "D-1"}'
    assert erp["next_attempt_at"] == erp["created_at"]


def test_the_idempotency_record_is_stored_with_the_events(any_store: Store) -> None:
    [stored] = any_store.append([IngestBatch([event(1)], record())])
    assert stored == IngestResult(appended=["evt-1"], duplicates=[])
    assert any_store.find_idempotency_record("crm", "key-1") == record()
    assert any_store.find_idempotency_record("crm", "key-2") is None
    assert any_store.find_idempotency_record("erp", "key-1") is None


def test_a_key_already_taken_appends_nothing_of_its_batch(any_store: Store) -> None:
    any_store.append([IngestBatch([event(1)], record())])
    later = any_store.append([IngestBatch([event(2)], record(request_hash="h2"))])
    assert later == [IngestResult(appended=[], duplicates=[], key_taken=True)]
    together = any_store.append(
        [IngestBatch([event(3)], record("key-3")), IngestBatch([event(4)], record("key-3"))]
    )
    assert [r.key_taken for r in together] == [False, True]
    assert any_store.get_event("evt-2") is None and any_store.get_event("evt-4") is None
    assert any_store.find_idempotency_record("crm", "key-1") == record()
    assert any_store.delivery_counts().received == 2


def test_a_failed_append_stores_nothing_of_its_batches(any_store: Store) -> None:
    broken = event(2, targets=("erp", "erp"))
    with pytest.raises((StoreError, IntegrityError)):
        any_store.append([IngestBatch([event(1)]), IngestBatch([broken], record())])
    assert any_store.get_event("evt-1") is None
    assert any_store.get_event("evt-2") is None
    assert any_store.find_idempotency_record("crm", "key-1") is None
    assert any_store.list_deliveries() == []


# claiming


def test_a_claim_leases_deliveries_so_another_worker_gets_none(any_store: Store) -> None:
    append(any_store, event(1), event(2), event(3))
    before = time.time()
    claimed = any_store.claim_due_deliveries("w1", 10, 60.0)
    assert [d.event_id for d in claimed] == ["evt-1", "evt-2", "evt-3"]
    assert claimed[0].idempotency_key == f"evt-1:{INTEGRATION}"
    assert claimed[0].payload == '{"order_id": "D-1"}'
    assert claim_ids(any_store, "w2") == []
    row = delivery(any_store, claimed[0].id)
    assert row["lease_owner"] == "w1"
    assert before + 59 <= float(row["lease_expires_at"]) <= time.time() + 61


def test_a_claim_takes_at_most_the_limit_in_tier_order(any_store: Store) -> None:
    append(any_store, event(1, tier=2), event(2, tier=0), event(3, tier=1), event(4, tier=0))
    first = any_store.claim_due_deliveries("w1", 2, 60.0)
    assert [(d.tier, d.event_id) for d in first] == [(0, "evt-2"), (0, "evt-4")]
    rest = any_store.claim_due_deliveries("w2", 10, 60.0)
    assert [(d.tier, d.event_id) for d in rest] == [(1, "evt-3"), (2, "evt-1")]


def test_an_expired_lease_makes_the_delivery_claimable_again(any_store: Store) -> None:
    append(any_store, event(1))
    [taken] = claim_ids(any_store, "w1", lease=0.2)
    assert claim_ids(any_store, "w2") == []
    time.sleep(0.3)
    assert claim_ids(any_store, "w2") == [taken]
    assert delivery(any_store, taken)["lease_owner"] == "w2"


def test_a_worker_that_lost_its_lease_records_nothing(any_store: Store) -> None:
    append(any_store, event(1))
    [taken] = claim_ids(any_store, "w1", lease=0.2)
    time.sleep(0.3)
    assert claim_ids(any_store, "w2") == [taken]
    assert any_store.record_attempts("w1", [result(taken, Outcome.DELIVERED)]) == 0
    row = delivery(any_store, taken)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 0, "w2")
    assert any_store.delivery_attempts(taken) == []
    assert any_store.record_attempts("w2", [result(taken, Outcome.DELIVERED)]) == 1
    assert delivery(any_store, taken)["status"] == "delivered"


def test_a_retry_is_not_claimable_before_its_time(any_store: Store) -> None:
    append(any_store, event(1))
    [taken] = claim_ids(any_store, "w1")
    due = time.time() + 0.4
    retry = result(taken, Outcome.RETRY, 503, "erp answered 503", next_attempt_at=due)
    assert any_store.record_attempts("w1", [retry]) == 1
    row = delivery(any_store, taken)
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("pending", 1, None)
    assert (row["last_status"], row["last_error"]) == (503, "erp answered 503")
    assert row["next_attempt_at"] == pytest.approx(due, abs=0.001)
    assert any_store.next_due_at() == pytest.approx(due, abs=0.001)
    assert claim_ids(any_store, "w2") == []
    time.sleep(max(0.0, due - time.time()) + 0.1)
    [again] = any_store.claim_due_deliveries("w2", 10, 60.0)
    assert (again.id, again.attempts) == (taken, 1)


def test_delivered_and_dead_are_final(any_store: Store) -> None:
    append(any_store, event(1), event(2), event(3))
    done, dead, waiting = claim_ids(any_store, "w1")
    recorded = any_store.record_attempts(
        "w1",
        [
            result(done, Outcome.DELIVERED, 201),
            result(dead, Outcome.DEAD, 422, "not retryable: erp answered 422"),
        ],
    )
    assert recorded == 2
    assert (delivery(any_store, done)["status"], delivery(any_store, dead)["status"]) == (
        "delivered",
        "dead",
    )
    assert delivery(any_store, done)["delivered_at"] is not None
    assert delivery(any_store, dead)["delivered_at"] is None
    assert delivery(any_store, dead)["last_error"] == "not retryable: erp answered 422"
    # Recording again (a duplicate flush) changes nothing: the lease went with the outcome.
    assert any_store.record_attempts("w1", [result(done, Outcome.DEAD)]) == 0
    assert any_store.release_leases(None) == 1
    assert claim_ids(any_store, "w2") == [waiting]
    any_store.record_attempts("w2", [result(waiting, Outcome.DELIVERED)])
    assert any_store.next_due_at() is None
    assert claim_ids(any_store, "w3") == []
    assert len(any_store.latencies()) == 2


def test_released_frees_the_lease_without_counting_an_attempt(any_store: Store) -> None:
    append(any_store, event(1))
    [taken] = claim_ids(any_store, "w1")
    stopped = result(taken, Outcome.RELEASED, None, "stopped")
    assert any_store.record_attempts("w1", [stopped]) == 0
    row = delivery(any_store, taken)
    assert (row["attempts"], row["lease_owner"], row["lease_expires_at"]) == (0, None, None)
    assert any_store.delivery_attempts(taken) == []
    assert claim_ids(any_store, "w2") == [taken]


def test_release_leases_of_one_worker_or_of_all(any_store: Store) -> None:
    append(any_store, *(event(n) for n in range(6)))
    mine = claim_ids(any_store, "w1", limit=2)
    theirs = claim_ids(any_store, "w2", limit=3)
    every = {r["id"] for r in any_store.list_deliveries()}
    assert any_store.release_leases("w1") == 2
    assert any_store.release_leases("w1") == 0
    assert delivery(any_store, theirs[0])["lease_owner"] == "w2"
    again = set(claim_ids(any_store, "w3"))
    assert again == every - set(theirs)
    assert set(mine) < again
    assert any_store.release_leases(None) == 6
    assert len(claim_ids(any_store, "w4")) == 6


def test_next_due_at_counts_leases_and_retries(any_store: Store) -> None:
    assert any_store.next_due_at() is None
    append(any_store, event(1))
    created = float(any_store.list_deliveries()[0]["created_at"])
    assert any_store.next_due_at() == pytest.approx(created, abs=0.001)
    [taken] = claim_ids(any_store, "w1", lease=30.0)
    expires = float(delivery(any_store, taken)["lease_expires_at"])
    assert any_store.next_due_at() == pytest.approx(expires, abs=0.001)


# reading


def test_counts_and_the_attempt_log(any_store: Store) -> None:
    append(any_store, event(1), event(2), event(3))
    first, second, third = claim_ids(any_store, "w1")
    soon = time.time() - 1  # already due again
    any_store.record_attempts(
        "w1",
        [
            result(first, Outcome.DELIVERED, 201),
            result(second, Outcome.RETRY, 503, "erp answered 503", next_attempt_at=soon),
            result(third, Outcome.DEAD, 400, "not retryable: bad request"),
        ],
    )
    assert claim_ids(any_store, "w1") == [second]
    any_store.record_attempts("w1", [result(second, Outcome.DELIVERED, 200)])
    assert any_store.delivery_counts() == DeliveryCounts(
        received=3, pending=0, delivered=2, dead=1, retried=1, attempts=4
    )
    log = any_store.delivery_attempts(second)
    assert [(a["number"], a["outcome"], a["status_code"], a["error"]) for a in log] == [
        (1, "retry", 503, "erp answered 503"),
        (2, "delivered", 200, None),
    ]
    assert all(a["delivery_id"] == second and a["latency_ms"] == 12.5 for a in log)
    assert any_store.delivery_attempts(999) == []


def test_list_deliveries_is_newest_first_and_filters(any_store: Store) -> None:
    append(any_store, *(event(n) for n in range(4)))
    ids = [r["id"] for r in any_store.list_deliveries()]
    assert ids == sorted(ids, reverse=True)
    assert len(any_store.list_deliveries(limit=2)) == 2
    [done] = claim_ids(any_store, "w1", limit=1)
    any_store.record_attempts("w1", [result(done, Outcome.DELIVERED)])
    assert [r["id"] for r in any_store.list_deliveries(DeliveryStatus.DELIVERED)] == [done]
    assert len(any_store.list_deliveries(DeliveryStatus.PENDING, INTEGRATION)) == 3
    assert any_store.list_deliveries(integration="other") == []
    assert any_store.get_delivery(999) is None


# the fake's own promises


def test_the_fake_reads_back_the_columns_of_the_database() -> None:
    store = MemoryStore()
    append(store, event(1))
    row = store.get_event("evt-1")
    assert row is not None and set(row) == {c.name for c in events.columns}
    assert set(store.list_deliveries()[0]) == {c.name for c in deliveries.columns}


def test_the_fake_follows_its_clock() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    append(store, event(1))
    assert claim_ids(store, "w1", lease=30.0) == [1]
    assert delivery(store, 1)["lease_expires_at"] == 1030.0
    now[0] = 1029.0
    assert claim_ids(store, "w2") == []
    now[0] = 1030.5
    assert claim_ids(store, "w2") == [1]
    store.record_attempts("w2", [result(1, Outcome.RETRY, next_attempt_at=2000.0)])
    now[0] = 1999.0
    assert claim_ids(store, "w3") == []
    now[0] = 2000.0
    assert claim_ids(store, "w3") == [1]


def test_the_fake_is_safe_to_share_between_threads() -> None:
    store = MemoryStore()
    append(store, *(event(n) for n in range(400)))
    claimed: dict[str, list[int]] = {}

    def work(worker: str) -> None:
        mine = claimed.setdefault(worker, [])
        while batch := claim_ids(store, worker, limit=7):
            mine.extend(batch)
            store.record_attempts(worker, [result(i, Outcome.DELIVERED) for i in batch])

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    every = [i for ids in claimed.values() for i in ids]
    assert sorted(every) == list(range(1, 401))
    assert store.delivery_counts().delivered == 400


# PostgreSQL: many workers, one database


@pytest.mark.postgres
def test_concurrent_claims_never_share_a_delivery(store: SqlStore, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("concurrent claiming with SKIP LOCKED is a PostgreSQL feature")
    append(store, *(event(n) for n in range(500)))
    start = threading.Barrier(2)
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}

    def work(worker: str) -> None:
        start.wait(timeout=10)
        while batch := claim_ids(store, worker, limit=10):
            claimed[worker].extend(batch)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    first, second = claimed["w1"], claimed["w2"]
    assert first and second, "both workers should have claimed some"
    assert not set(first) & set(second)
    assert len(first) + len(second) == 500
    assert sorted(first + second) == sorted(r["id"] for r in store.list_deliveries(limit=1000))
    owners = {r["id"]: r["lease_owner"] for r in store.list_deliveries(limit=1000)}
    assert all(owners[i] == "w1" for i in first)
    assert all(owners[i] == "w2" for i in second)
