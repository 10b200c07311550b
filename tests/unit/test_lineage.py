"""Lineage of a record over the in-memory store, and the OpenLineage and ODCS exports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import Project, load_project
from charter.errors import NotFound
from charter.governance.exports import odcs, openlineage
from charter.governance.lineage import describe_rule, field_origins, lineage
from charter.hub import IngestService, Router
from charter.hub.parsing import STRUCTURED
from charter.mapping import FieldRule, MappingSpec
from charter.store import AttemptResult, MemoryStore, Operator, Outcome, Rearm


def deal(ce_id: str, order: str, **data: Any) -> bytes:
    payload: dict[str, Any] = {
        "id": order,
        "account": {"id": "A-1", "name": "Acme"},
        "amount": 10,
        "currency": "EUR",
        "stage": "closed_won",
        "lines": [{"sku": "X1", "qty": 2, "unit_price": 5}],
    }
    payload.update(data)
    event = {"specversion": "1.0", "id": ce_id, "source": "crm", "type": "deal.closed"}
    return orjson.dumps(event | {"data": payload})


@pytest.fixture
def project(project_dir: Path) -> Project:
    return load_project(project_dir)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def ingest(project: Project, store: MemoryStore) -> Iterator[IngestService]:
    service = IngestService(Router(project), store)
    yield service
    service.close()


def take(ingest: IngestService, body: bytes) -> None:
    answer = ingest.ingest("crm", body, STRUCTURED)
    assert answer.status == 202, answer.body


def attempt(store: MemoryStore, outcome: Outcome, status: int) -> None:
    [claimed] = store.claim_due_deliveries("w1", 10, 60.0)
    store.record_attempts(
        "w1", [AttemptResult(claimed.id, outcome, time.time(), 12.0, status_code=status)]
    )


def test_lineage_names_the_event_its_mapping_and_the_origin_of_each_field(
    project: Project, store: MemoryStore, ingest: IngestService
) -> None:
    take(ingest, deal("c-1", "D-1"))
    take(ingest, deal("c-2", "D-2"))
    found = lineage(store, project, "order", "D-1")
    [event] = found.events
    assert (event.system, event.type, event.ce_id) == ("crm", "deal.closed", "c-1")
    assert (event.integration, event.mapping) == ("deal-to-erp-order", "crm-deal-to-order@1")
    assert event.canonical is not None and event.canonical["order_id"] == "D-1"
    origins = {f.field: f for f in event.fields}
    assert origins["customer.id"].rule == "from account.id"
    assert (origins["customer.id"].system, origins["customer.id"].kind) == ("crm", "from")
    assert origins["order_id"].system_of_record == "crm"
    # The CRM maps status through a value map, but the ERP owns it (policy ignore): dropped.
    status = origins["status"]
    assert (status.rule, status.kind, status.present) == ("from stage, values map", "values", False)
    assert status.system_of_record == "erp"
    assert origins["customer.country"].present is False  # no value in this deal
    assert origins["lines"].rule.startswith("from lines, each (sku from sku;")
    assert (found.owner, found.system_of_record) == ("finance-ops", "erp")


def test_lineage_shows_every_delivery_with_its_attempts_and_actions(
    project: Project, store: MemoryStore, ingest: IngestService
) -> None:
    take(ingest, deal("c-1", "D-1"))
    [pending] = lineage(store, project, "order", "D-1").deliveries
    assert (pending.target, pending.mapping, pending.status) == ("erp", "order-to-erp@1", "pending")
    assert pending.attempts == []
    attempt(store, Outcome.DEAD, 400)
    store.redrive([Rearm(pending.id)], Operator("alice", "ERP fixed"))
    attempt(store, Outcome.DELIVERED, 201)
    [delivered] = lineage(store, project, "order", "D-1").deliveries
    assert delivered.status == "delivered" and delivered.delivered_at is not None
    assert [(a.status_code, a.outcome) for a in delivered.attempts] == [
        (400, "dead"),
        (201, "delivered"),
    ]
    assert [(a.action, a.by, a.reason) for a in delivered.actions] == [
        ("redrive", "alice", "ERP fixed")
    ]
    body = orjson.loads(orjson.dumps(lineage(store, project, "order", "D-1").to_json()))
    assert body["deliveries"][0]["attempts"][1]["status_code"] == 201
    assert body["events"][0]["fields"][0]["field"] == "order_id"


def test_a_record_seen_twice_lists_both_events(
    project: Project, store: MemoryStore, ingest: IngestService
) -> None:
    take(ingest, deal("c-1", "D-1"))
    take(ingest, deal("c-1b", "D-1", amount=12))
    found = lineage(store, project, "order", "D-1")
    assert [e.ce_id for e in found.events] == ["c-1", "c-1b"]
    assert len(found.deliveries) == 2


def test_unknown_entity_and_unknown_record_say_what_to_do(
    project: Project, store: MemoryStore, ingest: IngestService
) -> None:
    take(ingest, deal("c-1", "D-1"))
    with pytest.raises(NotFound, match="no entity 'ordr'") as unknown:
        lineage(store, project, "ordr", "D-1")
    assert unknown.value.fix is not None and "order" in unknown.value.fix
    with pytest.raises(NotFound, match="no event of order 'D-404'") as missing:
        lineage(store, project, "order", "D-404")
    assert missing.value.fix is not None and "order_id" in missing.value.fix


def rule(**given: Any) -> FieldRule:
    return FieldRule.model_validate(given)


def test_rules_read_like_the_spec() -> None:
    assert describe_rule(rule(expr="amount * 2")) == "expr amount * 2"
    assert describe_rule(rule(const="EUR")) == "const"
    assert describe_rule(rule(**{"from": "state", "default": "open"})) == "from state, default"


def test_a_default_that_filled_in_is_named_as_the_origin(project: Project) -> None:
    spec = MappingSpec.model_validate(
        {
            "name": "deal-to-order",
            "version": 2,
            "source": {"system": "crm", "event": "deal.closed"},
            "target": {"entity": "order", "version": 1},
            "fields": {
                "order_id": {"from": "id"},
                "currency": {"from": "currency", "default": "EUR"},
                "total": {"expr": "amount * 2"},
                "status": {"const": "open"},
            },
        }
    )
    entity = project.entities[("order", 1)]
    canonical = {"order_id": "D-1", "currency": "EUR", "total": 20, "status": "open"}
    origins = {f.field: f for f in field_origins(spec, entity, {"id": "D-1"}, canonical)}
    assert origins["currency"].kind == "default"
    assert (origins["total"].kind, origins["total"].source) == ("expr", "amount * 2")
    assert origins["status"].kind == "const"
    assert all(f.mapping == "deal-to-order@2" and f.present for f in origins.values())
    with_currency = field_origins(spec, entity, {"id": "D-1", "currency": "USD"}, canonical)
    assert {f.field: f.kind for f in with_currency}["currency"] == "from"


def test_openlineage_has_one_job_per_integration_with_column_lineage(project: Project) -> None:
    [job] = openlineage(project, "2026-01-01T00:00:00+00:00")
    assert job["job"] == {
        "namespace": "charter://order-to-cash",
        "name": "deal-to-erp-order",
        "facets": job["job"]["facets"],
    }
    assert job["eventTime"] == "2026-01-01T00:00:00+00:00"
    assert [d["name"] for d in job["inputs"]] == ["crm/deal.closed"]
    assert [d["name"] for d in job["outputs"]] == ["entity/order@1", "erp/order-to-erp"]
    entity, erp = job["outputs"]
    schema = {f["name"]: f.get("type") for f in entity["facets"]["schema"]["fields"]}
    assert schema["total"] == "number"
    columns = entity["facets"]["columnLineage"]["fields"]
    [source] = columns["customer.id"]["inputFields"]
    assert (source["name"], source["field"]) == ("crm/deal.closed", "account.id")
    assert source["transformations"][0]["subtype"] == "IDENTITY"
    assert columns["status"]["inputFields"][0]["transformations"][0]["subtype"] == (
        "TRANSFORMATION"
    )
    assert {f["field"] for f in columns["lines"]["inputFields"]} == {
        "lines[*].sku",
        "lines[*].qty",
        "lines[*].unit_price",
    }
    [ref] = erp["facets"]["columnLineage"]["fields"]["external_ref"]["inputFields"]
    assert (ref["name"], ref["field"]) == ("entity/order@1", "order_id")
    assert job["job"]["facets"]["ownership"]["owners"] == [
        {"name": "team:sales-ops", "type": "owner"}
    ]


def test_odcs_contract_has_owner_schema_and_sla(project: Project) -> None:
    contract = odcs(project, "order")
    assert contract["apiVersion"].startswith("v3.0.")
    assert (contract["kind"], contract["name"], contract["status"]) == (
        "DataContract",
        "order",
        "active",
    )
    [table] = contract["schema"]
    props = {p["name"]: p for p in table["properties"]}
    assert props["order_id"]["primaryKey"] is True and props["order_id"]["required"] is True
    assert props["total"]["logicalType"] == "number"
    assert props["currency"]["logicalTypeOptions"] == {"enum": ["EUR", "USD", "GBP"]}
    assert {p["name"] for p in props["customer"]["properties"]} == {"id", "name", "country"}
    assert props["status"]["customProperties"] == [{"property": "systemOfRecord", "value": "erp"}]
    assert contract["team"][0] == {"username": "finance-ops", "role": "owner"}
    latency = next(p for p in contract["slaProperties"] if p["property"] == "latency")
    assert (latency["value"], latency["unit"]) == (60.0, "s")
    with pytest.raises(NotFound, match="no entity 'invoice'"):
        odcs(project, "invoice")
