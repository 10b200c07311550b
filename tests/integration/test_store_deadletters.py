"""The Store contract for dead letters and replay, on the fake, SQLite and PostgreSQL."""

from __future__ import annotations

import time

import orjson

from charter.store import (
    DeadLetterFilter,
    DeliveryStatus,
    ErrorClass,
    EventFilter,
    Operator,
    Outcome,
    OwnedBy,
    Rearm,
    ReplayDelivery,
    ReplayResult,
    Store,
)
from tests.integration import test_store as contract
from tests.integration.test_store import INTEGRATION, append, claim_ids, delivery, event, result

any_store = contract.any_store
WHO = Operator("ana", "the ERP fixed its validation")


def fail(store: Store, outcome: Outcome, status: int | None, error: str) -> list[int]:
    """Claim every due delivery and record one failed attempt for each."""
    ids = claim_ids(store, "w1")
    store.record_attempts("w1", [result(i, outcome, status, error) for i in ids])
    return ids


def deliver(store: Store) -> list[int]:
    ids = claim_ids(store, "w1")
    store.record_attempts("w1", [result(i, Outcome.DELIVERED) for i in ids])
    return ids


def planned(n: int, payload: str | None = None, mapping: str = "order-to-erp@1") -> ReplayDelivery:
    return ReplayDelivery(
        event_id=f"evt-{n}",
        integration=INTEGRATION,
        target="erp",
        tier=0,
        mapping=mapping,
        payload=payload or f'{{"order_id": "D-{n}"}}',
        idempotency_key=f"evt-{n}:{INTEGRATION}",
        changed_key=f"evt-{n}:{INTEGRATION}:changed",
    )


def test_dead_letters_are_listed_with_their_class_and_filtered(any_store: Store) -> None:
    append(any_store, event(1), event(2), event(3, targets=("crm",)), event(4))
    ids = claim_ids(any_store, "w1")
    any_store.record_attempts(
        "w1",
        [
            result(ids[0], Outcome.DEAD, 503, "gave up after 12 attempts: erp answered 503"),
            result(ids[1], Outcome.DEAD, 422, "not retryable: erp answered 422"),
            result(ids[2], Outcome.DEAD, None, "not retryable: erp: read timeout calling POST"),
            result(ids[3], Outcome.DELIVERED),
        ],
    )
    everything = any_store.list_dead_letters(DeadLetterFilter())
    assert [r["id"] for r in everything] == sorted(ids[:3], reverse=True)
    assert {r["id"]: r["error_class"] for r in everything} == {
        ids[0]: "http_5xx",
        ids[1]: "http_4xx",
        ids[2]: "timeout",
    }
    assert all(r["dead_at"] <= time.time() for r in everything)

    def listed(**where: object) -> list[int]:
        rows = any_store.list_dead_letters(DeadLetterFilter(**where))  # type: ignore[arg-type]
        return sorted(r["id"] for r in rows)

    assert listed(error_class=ErrorClass.HTTP_4XX) == [ids[1]]
    assert listed(system="crm") == [ids[2]]
    assert listed(integration="other") == []
    assert listed(owned_by=OwnedBy(frozenset(), frozenset({"crm"}))) == [ids[2]]
    assert listed(owned_by=OwnedBy(frozenset({INTEGRATION}), frozenset())) == sorted(ids[:3])
    assert listed(owned_by=OwnedBy(frozenset(), frozenset())) == []
    assert listed(dead_before=time.time() + 60) == sorted(ids[:3])
    assert listed(dead_before=time.time() - 60) == []
    assert any_store.list_dead_letters(DeadLetterFilter(), limit=1)[0]["id"] == ids[2]


def test_a_redrive_makes_a_dead_letter_due_with_a_fresh_counter_and_keeps_history(
    any_store: Store,
) -> None:
    append(any_store, event(1))
    [ident] = fail(any_store, Outcome.DEAD, 422, "not retryable: refused")
    edited = '{"order_id": "D-1", "total": 3}'
    assert any_store.redrive(
        [Rearm(ident, mapping="order-to-erp@2", payload=edited, idempotency_key="k2")], WHO
    ) == [ident]
    row = delivery(any_store, ident)
    assert (row["status"], row["attempts"], row["mapping"], row["idempotency_key"]) == (
        "pending",
        0,
        "order-to-erp@2",
        "k2",
    )
    assert orjson.loads(row["payload"]) == {"order_id": "D-1", "total": 3}
    assert row["next_attempt_at"] <= time.time() + 1
    actions = any_store.delivery_actions(ident)
    assert [(a["action"], a["by"], a["reason"]) for a in actions] == [
        ("edit", "ana", WHO.reason),
        ("redrive", "ana", WHO.reason),
    ]
    assert actions[0]["details"]["payload_before"] == {"order_id": "D-1"}
    assert actions[1]["details"]["mapping_before"] == "order-to-erp@1"
    assert actions[1]["details"]["key_before"] == f"evt-1:{INTEGRATION}"
    # The next attempt is number 1 of the new run; the first run's attempt is kept.
    [again] = claim_ids(any_store, "w1")
    any_store.record_attempts("w1", [result(again, Outcome.DELIVERED)])
    assert [a["outcome"] for a in any_store.delivery_attempts(ident)] == ["dead", "delivered"]
    assert delivery(any_store, ident)["status"] == "delivered"


def test_only_dead_or_discarded_deliveries_are_redriven(any_store: Store) -> None:
    append(any_store, event(1), event(2))
    deliver(any_store)
    ids = [r["id"] for r in any_store.list_deliveries()]
    assert any_store.redrive([Rearm(i) for i in ids], WHO) == []
    assert all(delivery(any_store, i)["status"] == "delivered" for i in ids)
    assert all(any_store.delivery_actions(i) == [] for i in ids)


def test_a_discard_is_recorded_and_listed_apart(any_store: Store) -> None:
    append(any_store, event(1))
    [ident] = fail(any_store, Outcome.DEAD, 500, "gave up")
    assert any_store.discard(ident, Operator("bo", "duplicate of an order keyed by hand"))
    assert not any_store.discard(ident, WHO)  # only dead letters are discarded
    assert any_store.list_dead_letters(DeadLetterFilter()) == []
    [shown] = any_store.list_dead_letters(DeadLetterFilter(status=DeliveryStatus.DISCARDED))
    assert shown["id"] == ident
    [action] = any_store.delivery_actions(ident)
    assert (action["action"], action["by"], action["reason"]) == (
        "discard",
        "bo",
        "duplicate of an order keyed by hand",
    )
    assert any_store.redrive([Rearm(ident)], WHO) == [ident]  # on purpose, it can come back


def test_events_are_selected_for_replay_by_filter_and_paged_by_seq(any_store: Store) -> None:
    start = time.time() - 1
    append(any_store, *(event(n) for n in range(5)))
    later = time.time() + 1
    page = any_store.events_for_replay(EventFilter(), 0, 3)
    assert [e["id"] for e in page] == ["evt-0", "evt-1", "evt-2"]
    rest = any_store.events_for_replay(EventFilter(), page[-1]["seq"], 3)
    assert [e["id"] for e in rest] == ["evt-3", "evt-4"]
    assert len(any_store.events_for_replay(EventFilter(since=start, until=later), 0, 10)) == 5
    assert any_store.events_for_replay(EventFilter(since=later), 0, 10) == []
    assert any_store.events_for_replay(EventFilter(until=start), 0, 10) == []
    assert any_store.events_for_replay(EventFilter(type="deal.lost"), 0, 10) == []
    assert len(any_store.events_for_replay(EventFilter(system="crm"), 0, 10)) == 5
    # The key matches the subject or a JSON string of the data (the caller checks the field).
    assert [e["id"] for e in any_store.events_for_replay(EventFilter(key="D-3"), 0, 10)] == [
        "evt-3"
    ]
    assert any_store.events_for_replay(EventFilter(key="D-%"), 0, 10) == []


def test_a_replay_rearms_created_deliveries_keeping_their_key_when_content_is_the_same(
    any_store: Store,
) -> None:
    append(any_store, event(1), event(2), event(3), event(4))
    ids = claim_ids(any_store, "w1")
    any_store.record_attempts(
        "w1",
        [
            result(ids[0], Outcome.DELIVERED),
            result(ids[1], Outcome.DELIVERED),
            result(ids[2], Outcome.DEAD, 422, "refused"),
        ],
    )  # evt-4 stays pending (its lease is dropped below)
    any_store.release_leases("w1")
    any_store.discard(ids[2], WHO)
    plan = [
        planned(1),  # same content: same key
        planned(2, mapping="order-to-erp@2"),  # corrected: its own key
        planned(3),  # discarded: left to its operator
        planned(4),  # pending: delivered anyway
        ReplayDelivery("evt-1", "new-flow", "erp", 1, "m@1", "{}", "evt-1:new-flow", "x"),
    ]
    outcome = any_store.replay("r-1", plan, WHO)
    assert outcome == ReplayResult(created=1, rearmed=2, pending=1, discarded=1)
    first, second = delivery(any_store, ids[0]), delivery(any_store, ids[1])
    assert (first["status"], first["idempotency_key"]) == ("pending", f"evt-1:{INTEGRATION}")
    assert (second["mapping"], second["idempotency_key"]) == (
        "order-to-erp@2",
        f"evt-2:{INTEGRATION}:changed",
    )
    assert delivery(any_store, ids[2])["status"] == "discarded"
    [created] = any_store.list_deliveries(integration="new-flow")
    assert (created["status"], created["idempotency_key"]) == ("pending", "evt-1:new-flow")
    [action] = any_store.delivery_actions(ids[0])
    assert (action["action"], action["replay_id"], action["details"]["status_before"]) == (
        "replay",
        "r-1",
        "delivered",
    )
    assert any_store.delivery_actions(created["id"])[0]["replay_id"] == "r-1"
    assert sorted(claim_ids(any_store, "w2")) == sorted([ids[0], ids[1], ids[3], created["id"]])


def test_a_replay_of_10000_deliveries_is_written_in_batches_in_seconds(any_store: Store) -> None:
    for start in range(0, 10_000, 1000):
        append(any_store, *(event(n) for n in range(start, start + 1000)))
    while deliver(any_store):
        pass
    started = time.monotonic()
    outcome = any_store.replay("r-big", [planned(n) for n in range(10_000)], WHO)
    took = time.monotonic() - started
    assert outcome == ReplayResult(rearmed=10_000)
    assert took < 10, f"{took:.1f} s"
    # Same content, same keys: a target that applied them sees repeats.
    rows = any_store.list_deliveries(limit=10_000)
    assert {r["idempotency_key"] for r in rows} == {f"evt-{n}:{INTEGRATION}" for n in range(10_000)}
