"""Held writes, write counts, drift counters and notices: the Store contract on the in-memory
fake, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from sqlalchemy import delete

from charter.errors import Conflict, NotFound
from charter.store import (
    DriftCount,
    EventFilter,
    FieldHold,
    FieldWrite,
    MemoryStore,
    NewEvent,
    Operator,
    QuarantineStatus,
    ReplayDelivery,
    SqlStore,
    Store,
)
from charter.store.schema import drift as drift_table
from tests.integration.test_store import any_store, append, claim_ids, event

__all__ = ["any_store"]

ANA = Operator("ana", "checked with the ERP")
HOLD = FieldHold(
    integration="deal-to-erp-order",
    entity="order",
    field="status",
    value='"cancelled"',
    system_of_record="erp",
    team="finance-ops",
)
QUARANTINED = FieldWrite("crm", "order", "status", "quarantine", "quarantined")


def held_event(n: int) -> NewEvent:
    plain = event(n)
    deliveries = [
        dataclasses.replace(d, payload=f'{{"order_id": "D-{n}", "status": "cancelled"}}')
        for d in plain.deliveries
    ]
    return dataclasses.replace(plain, deliveries=deliveries, holds=[HOLD], writes=[QUARANTINED])


def writes(store: Store) -> dict[tuple[str, ...], int]:
    return {
        (r["system"], r["entity"], r["field"], r["policy"], r["outcome"]): r["count"]
        for r in store.write_counts()
    }


def test_held_deliveries_are_stored_quarantined_and_never_claimed(any_store: Store) -> None:
    append(any_store, held_event(1), event(2))
    append(any_store, held_event(1))  # a resend: stored and counted once
    statuses = {r["event_id"]: r["status"] for r in any_store.list_deliveries()}
    assert statuses == {"evt-1": "quarantined", "evt-2": "pending"}
    assert len(claim_ids(any_store, "w1")) == 1
    assert any_store.delivery_counts().quarantined == 1
    [hold] = any_store.list_quarantine(status=QuarantineStatus.OPEN)
    assert (hold["event_id"], hold["field"], hold["value"], hold["team"]) == (
        "evt-1",
        "status",
        '"cancelled"',
        "finance-ops",
    )
    assert (hold["system"], hold["system_of_record"], hold["status"]) == ("crm", "erp", "open")
    assert len(hold["deliveries"]) == 1
    assert any_store.list_quarantine(team="sales-ops") == []
    assert writes(any_store) == {("crm", "order", "status", "quarantine", "quarantined"): 1}


def test_accepting_a_hold_makes_its_deliveries_due_as_they_were(any_store: Store) -> None:
    append(any_store, held_event(1))
    [hold] = any_store.list_quarantine()
    decided = any_store.decide_quarantine(hold["id"], True, ANA)
    assert (decided["status"], decided["decided_by"], decided["reason"]) == (
        "accepted",
        "ana",
        "checked with the ERP",
    )
    assert decided["released"] == hold["deliveries"]
    assert claim_ids(any_store, "w1") == hold["deliveries"]
    row = any_store.get_delivery(hold["deliveries"][0])
    assert row is not None and orjson.loads(row["payload"])["status"] == "cancelled"
    [action] = any_store.delivery_actions(row["id"])
    assert (action["action"], action["by"], action["details"]) == (
        "accept",
        "ana",
        {"hold": hold["id"], "field": "status"},
    )
    assert writes(any_store)[("crm", "order", "status", "quarantine", "accepted")] == 1
    with pytest.raises(Conflict):
        any_store.decide_quarantine(hold["id"], False, ANA)


def test_rejecting_a_hold_removes_the_field_then_makes_the_deliveries_due(any_store: Store) -> None:
    append(any_store, held_event(1))
    [hold] = any_store.list_quarantine()
    any_store.decide_quarantine(hold["id"], False, ANA)
    row = any_store.get_delivery(hold["deliveries"][0])
    assert row is not None
    assert (row["status"], orjson.loads(row["payload"])) == ("pending", {"order_id": "D-1"})
    [action] = any_store.delivery_actions(row["id"])
    assert action["action"] == "reject"
    assert action["details"]["payload_before"] == {"order_id": "D-1", "status": "cancelled"}
    assert [h["status"] for h in any_store.list_quarantine()] == ["rejected"]
    with pytest.raises(NotFound):
        any_store.decide_quarantine(hold["id"] + 1000, True, ANA)


def test_deliveries_stay_held_until_every_hold_on_them_is_decided(any_store: Store) -> None:
    second = dataclasses.replace(HOLD, field="total", value="10")
    base = held_event(1)
    append(any_store, dataclasses.replace(base, holds=[HOLD, second]))
    holds = sorted(any_store.list_quarantine(), key=lambda h: h["field"])
    first = any_store.decide_quarantine(holds[0]["id"], False, ANA)
    assert first["released"] == []
    assert claim_ids(any_store, "w1") == []
    last = any_store.decide_quarantine(holds[1]["id"], True, ANA)
    assert claim_ids(any_store, "w1") == last["released"]
    row = any_store.get_delivery(last["released"][0])
    assert row is not None and orjson.loads(row["payload"]) == {"order_id": "D-1"}


def test_a_replay_leaves_held_deliveries_to_their_owner(any_store: Store) -> None:
    append(any_store, held_event(1))
    planned = ReplayDelivery(
        event_id="evt-1",
        integration="deal-to-erp-order",
        target="erp",
        tier=0,
        mapping="order-to-erp@1",
        payload='{"order_id": "D-1", "status": "cancelled"}',
        idempotency_key="evt-1:deal-to-erp-order",
        changed_key="evt-1:deal-to-erp-order:x",
    )
    result = any_store.replay("r1", [planned], ANA)
    assert (result.pending, result.rearmed, result.created) == (1, 0, 0)
    assert [r["status"] for r in any_store.list_deliveries()] == ["quarantined"]


def test_write_counts_add_up_across_appends_and_refusals(any_store: Store) -> None:
    refused = FieldWrite("crm", "order", "status", "reject", "rejected")
    any_store.count_writes([refused, refused])
    any_store.count_writes([refused])
    any_store.count_writes([])
    [row] = any_store.write_counts()
    assert row["count"] == 3
    assert row["first_at"] <= row["last_at"]


def drift(kind: str, field: str, value: str = "", count: int = 1, at: float = 100.0) -> DriftCount:
    return DriftCount("crm", "deal.closed", kind, field, value, count, at, at, "sales-ops")


def test_drift_counts_add_up_and_each_new_row_sends_one_notice(any_store: Store) -> None:
    assert any_store.record_drift([]) == 0
    new = any_store.record_drift(
        [
            drift("unknown_field", "channel", count=3),
            drift("unmapped_value", "stage", "closed_won_partner", count=2),
            drift("seen", "", count=5),
        ]
    )
    assert new == 3
    assert (
        any_store.record_drift(
            [drift("unknown_field", "channel", count=4, at=200.0), drift("seen", "", at=150.0)]
        )
        == 0
    )
    rows = {(r["kind"], r["field"], r["value"]): r for r in any_store.drift_counts()}
    channel = rows[("unknown_field", "channel", "")]
    assert (channel["count"], channel["first_seen"], channel["last_seen"]) == (7, 100.0, 200.0)
    assert rows[("seen", "", "")]["count"] == 6
    assert rows[("unmapped_value", "stage", "closed_won_partner")]["count"] == 2
    notices = any_store.list_notices(team="sales-ops")
    assert sorted(n["subject"] for n in notices) == [
        "crm deal.closed: unknown_field channel",
        "crm deal.closed: unmapped_value stage = 'closed_won_partner'",
    ]
    assert notices[0]["kind"] == "drift.detected" and isinstance(notices[0]["detail"], dict)
    assert any_store.list_notices(team="finance-ops") == []
    # Filters: system, last seen since, kinds.
    assert [r["field"] for r in any_store.drift_counts(since=180.0)] == ["channel"]
    assert [r["kind"] for r in any_store.drift_counts(kinds=("seen",))] == ["seen"]
    assert any_store.drift_counts(system="erp") == []


def forget_drift(store: Store) -> None:
    """Drop the drift rows, as a retention purge would: the next count of a key is new."""
    if isinstance(store, MemoryStore):
        store._drift.clear()
        return
    assert isinstance(store, SqlStore)
    with store.engine.begin() as conn:
        conn.execute(delete(drift_table))


def test_each_drift_notice_is_logged_once_as_a_cloudevent_that_nothing_routes(
    any_store: Store,
) -> None:
    append(any_store, event(1))
    any_store.record_drift(
        [drift("unmapped_value", "stage", "closed_won_partner", count=2), drift("seen", "")]
    )
    [notice] = any_store.list_notices(team="sales-ops")
    cloud = notice["event"]
    assert cloud == {
        "specversion": "1.0",
        "id": notice["event_id"],
        "source": "charter://hub/governance",
        "type": "charter.drift.detected",
        "datacontenttype": "application/json",
        "subject": "crm/deal.closed/stage",
        "time": cloud["time"],
        "data": notice["detail"],
    }
    assert cloud["data"]["value"] == "closed_won_partner" and cloud["data"]["team"] == "sales-ops"
    assert cloud["time"].endswith("Z") and cloud["time"][:4] >= "2026"
    logged = any_store.get_event(notice["event_id"])
    assert logged is not None
    assert (logged["system"], logged["type"], logged["ce_id"]) == (
        "@hub",
        "charter.drift.detected",
        notice["event_id"],
    )
    # Not received from a system, not replayed, no deliveries.
    assert any_store.delivery_counts().received == 1
    replayable = any_store.events_for_replay(EventFilter(), 0, 100)
    assert [e["id"] for e in replayable] == ["evt-1"]
    assert all(d["event_id"] != notice["event_id"] for d in any_store.list_deliveries())

    # The same drift noticed again (its row purged meanwhile) logs no second event.
    forget_drift(any_store)
    any_store.record_drift([drift("unmapped_value", "stage", "closed_won_partner")])
    again = any_store.list_notices(team="sales-ops")
    assert len(again) == 2
    assert {n["event_id"] for n in again} == {notice["event_id"]}
    assert any_store.delivery_counts().received == 1
    # Another value is another event.
    any_store.record_drift([drift("unmapped_value", "stage", "closed_lost_partner")])
    newest = any_store.list_notices(team="sales-ops")[0]
    assert newest["event_id"] not in (None, notice["event_id"])
    assert newest["event"]["data"]["value"] == "closed_lost_partner"
