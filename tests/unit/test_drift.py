"""Runtime drift at ingest: unknown fields, unmapped pick-list values and stopped fields,
counted per system and field, written in batches, and told to the system's owner."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import load_project
from charter.errors import InvalidEvent
from charter.governance.drift import (
    DriftRecorder,
    DriftTally,
    PayloadShape,
    drift_report,
    parse_since,
    stopped_fields,
)
from charter.hub import IngestService, Router
from charter.hub.parsing import BATCH, STRUCTURED
from charter.store import MemoryStore

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "account": {"type": "object", "properties": {"id": {}, "name": {}}},
        "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {}}}},
        "extra": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def walk(schema: dict[str, Any], payload: Any) -> tuple[list[str], dict[str, int]]:
    unknown: list[str] = []
    seen: dict[str, int] = {}
    PayloadShape(schema).walk(payload, unknown, seen)
    return unknown, seen


def test_unknown_fields_are_found_at_any_depth_and_declared_ones_counted() -> None:
    unknown, seen = walk(
        SCHEMA,
        {
            "id": "1",
            "channel": "partner",
            "account": {"id": "A", "region": "EU"},
            "lines": [{"sku": "S", "discount": 1}, {"sku": "T"}],
            "extra": {"anything": "goes"},
        },
    )
    assert unknown == ["channel", "account.region", "lines[].discount"]
    assert seen == {
        "id": 1,
        "account": 1,
        "account.id": 1,
        "lines": 1,
        "lines[].sku": 2,
        "extra": 1,
    }


def test_objects_that_admit_more_properties_are_not_checked() -> None:
    for open_schema in (
        {"type": "object"},
        {"properties": {"a": {}}, "additionalProperties": {"type": "string"}},
        {"properties": {"a": {}}, "patternProperties": {"^x": {}}},
        {"properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]},
    ):
        assert walk(open_schema, {"a": 1, "b": 2})[0] == []
    assert walk({"properties": {"a": {}}, "additionalProperties": True}, {"b": 2})[0] == ["b"]


def v2_deal(ce_id: str, stage: str = "closed_won_partner") -> dict[str, Any]:
    return {
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
            "channel": "partner" if stage == "closed_won_partner" else "direct",
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def service_for(project_dir: Path, store: MemoryStore, clock: Clock) -> IngestService:
    project = load_project(project_dir)
    recorder = DriftRecorder(store, project, stopped_after=600, clock=clock)
    return IngestService(Router(project), store, drift=recorder)


@pytest.fixture
def service(project_dir: Path, store: MemoryStore, clock: Clock) -> Iterator[IngestService]:
    service = service_for(project_dir, store, clock)
    yield service
    service.close()


def drift_rows(store: MemoryStore) -> dict[tuple[str, ...], int]:
    return {
        (r["system"], r["event_type"], r["kind"], r["field"], r["value"]): r["count"]
        for r in store.drift_counts(kinds=("unknown_field", "unmapped_value"))
    }


def test_an_unmapped_value_is_still_refused_but_counted_with_the_unknown_field(
    service: IngestService, store: MemoryStore
) -> None:
    for n in range(3):
        with pytest.raises(InvalidEvent, match="closed_won_partner"):
            service.ingest("crm", orjson.dumps(v2_deal(f"p{n}")), STRUCTURED)
    assert (
        service.ingest("crm", orjson.dumps(v2_deal("d1", "closed_won")), STRUCTURED).status == 202
    )
    # Nothing was written yet: counting never adds a write to an ingest.
    assert store.drift_counts() == []
    service.drift.flush()
    assert drift_rows(store) == {
        ("crm", "deal.closed", "unknown_field", "channel", ""): 4,
        ("crm", "deal.closed", "unmapped_value", "stage", "closed_won_partner"): 3,
    }
    # No refused event reached the store, so no target will see the unmapped value.
    assert [orjson.loads(r["payload"])["order_id"] for r in store.list_deliveries()] == ["D-d1"]


def test_each_new_kind_of_drift_is_told_to_the_owner_once(
    service: IngestService, store: MemoryStore
) -> None:
    with pytest.raises(InvalidEvent):
        service.ingest("crm", orjson.dumps(v2_deal("p1")), STRUCTURED)
    service.drift.flush()
    notices = store.list_notices(team="sales-ops")
    assert sorted(n["subject"] for n in notices) == [
        "crm deal.closed: unknown_field channel",
        "crm deal.closed: unmapped_value stage = 'closed_won_partner'",
    ]
    assert {n["kind"] for n in notices} == {"drift.detected"}
    assert {n["detail"]["field"] for n in notices} == {"channel", "stage"}
    with pytest.raises(InvalidEvent):
        service.ingest("crm", orjson.dumps(v2_deal("p2")), STRUCTURED)
    service.drift.flush()
    assert len(store.list_notices()) == 2
    assert store.list_notices(team="finance-ops") == []
    assert drift_rows(store)[("crm", "deal.closed", "unknown_field", "channel", "")] == 2


def test_a_batch_refused_for_one_event_counts_the_events_before_it(
    service: IngestService, store: MemoryStore
) -> None:
    batch = [v2_deal("d1", "closed_won"), v2_deal("p1"), v2_deal("d2", "closed_won")]
    with pytest.raises(InvalidEvent) as caught:
        service.ingest("crm", orjson.dumps(batch), BATCH)
    assert caught.value.extra["pointer"] == "/1/data/stage"
    service.drift.flush()
    assert drift_rows(store)[("crm", "deal.closed", "unknown_field", "channel", "")] == 2


def test_values_mapped_by_default_or_passed_are_counted_too(
    project_dir: Path, store: MemoryStore, clock: Clock
) -> None:
    mapping = project_dir / "mappings" / "crm-deal-to-order.yaml"
    text = mapping.read_text()
    old = "    values: {closed_won: open, closed_lost: cancelled}\n"
    assert old in text
    mapping.write_text(text.replace(old, old + "    on_unmapped: default\n    default: open\n"))
    service = service_for(project_dir, store, clock)
    try:
        answer = service.ingest("crm", orjson.dumps(v2_deal("p1")), STRUCTURED)
        assert answer.status == 202
        service.drift.flush()
        assert (
            drift_rows(store)[
                ("crm", "deal.closed", "unmapped_value", "stage", "closed_won_partner")
            ]
            == 1
        )
    finally:
        service.close()


def test_the_report_names_the_owner_and_filters_by_system_and_time(
    service: IngestService, store: MemoryStore, clock: Clock
) -> None:
    with pytest.raises(InvalidEvent):
        service.ingest("crm", orjson.dumps(v2_deal("p1")), STRUCTURED)
    service.drift.flush()
    project = service.router.project
    rows = drift_report(project, store, now=clock.now)
    assert [(r["kind"], r["field"], r["value"], r["count"], r["team"]) for r in rows] == [
        ("unknown_field", "channel", "", 1, "sales-ops"),
        ("unmapped_value", "stage", "closed_won_partner", 1, "sales-ops"),
    ]
    assert drift_report(project, store, system="erp", now=clock.now) == []
    assert drift_report(project, store, since=clock.now + 1, now=clock.now) == []
    assert parse_since("1h", now=clock.now) == clock.now - 3600


def deal_without_account_country(ce_id: str) -> bytes:
    event = v2_deal(ce_id, "closed_won")
    del event["data"]["channel"]
    return orjson.dumps(event)


def test_a_field_that_stops_arriving_while_events_do_is_reported_and_told_once(
    service: IngestService, store: MemoryStore, clock: Clock
) -> None:
    with_country = v2_deal("c1", "closed_won")
    del with_country["data"]["channel"]
    with_country["data"]["account"]["country"] = "DE"
    service.ingest("crm", orjson.dumps(with_country), STRUCTURED)
    service.drift.flush()
    clock.now += 601
    service.ingest("crm", deal_without_account_country("c2"), STRUCTURED)
    service.drift.flush()
    rows = drift_report(service.router.project, store, now=clock.now, stopped_after=600)
    assert [(r["kind"], r["field"], r["count"], r["team"]) for r in rows] == [
        ("stopped_field", "account.country", 1, "sales-ops")
    ]
    assert service.drift.check_stopped() == 1
    assert service.drift.check_stopped() == 0
    [notice] = store.list_notices(team="sales-ops")
    assert notice["subject"] == "crm deal.closed: stopped_field account.country"


def test_a_field_is_not_stopped_when_no_events_arrive_at_all() -> None:
    rows = [
        {"system": "crm", "event_type": "t", "kind": "seen", "field": "", "last_seen": 100.0},
        {"system": "crm", "event_type": "t", "kind": "seen", "field": "a", "last_seen": 100.0},
    ]
    assert stopped_fields(rows, now=1000.0, after=600) == []
    rows[0]["last_seen"] = 900.0
    assert [r["field"] for r in stopped_fields(rows, now=1000.0, after=600)] == ["a"]


def test_the_recorder_flushes_by_itself_and_on_close(project_dir: Path, store: MemoryStore) -> None:
    project = load_project(project_dir)
    recorder = DriftRecorder(store, project, interval=0.05)
    tally = DriftTally()
    tally.counts[("crm", "deal.closed", "unknown_field", "channel", "")] = 2
    recorder.add(tally)
    deadline = time.monotonic() + 5
    while not store.drift_counts() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.drift_counts()[0]["count"] == 2
    recorder.add(tally)
    recorder.close()
    assert store.drift_counts()[0]["count"] == 4


class FlakyStore(MemoryStore):
    """Refuses the first drift write, as a database that is briefly away."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 1

    def record_drift(self, counts: list[Any]) -> int:
        if self.refusals:
            self.refusals -= 1
            raise OSError("database away")
        return super().record_drift(counts)


def test_counts_a_failed_flush_could_not_write_are_written_by_the_next(project_dir: Path) -> None:
    store = FlakyStore()
    recorder = DriftRecorder(store, load_project(project_dir))
    tally = DriftTally()
    tally.counts[("crm", "deal.closed", "unknown_field", "channel", "")] = 2
    recorder.add(tally)
    with pytest.raises(OSError):
        recorder.flush()
    recorder.add(tally)
    recorder.flush()
    assert [r["count"] for r in store.drift_counts()] == [4]
    recorder.close()
