"""Lineage end to end: ``charter up`` and the simulated ERP on real ports; a delivered order
traced with ``charter lineage`` in a subprocess and over the API; the exports parsed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from charter.hub import event_id
from charter.processes import HubProcess
from charter.sim import SimProcess
from tests.acceptance.conftest import deal, post_events, problem_of, running_hub, wait_until
from tests.acceptance.test_cli import charter, one_line_error, table_rows
from tests.conftest import copy_starter


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_starter(tmp_path_factory.mktemp("lineage") / "shop")


@pytest.fixture(scope="module")
def hub(project: Path, erp_process: SimProcess) -> Iterator[HubProcess]:
    with running_hub(project, erp_process) as running:
        yield running


@pytest.fixture(scope="module")
def delivered(hub: HubProcess) -> tuple[str, str]:
    """A deal ingested and delivered to the ERP: (order id, hub event id)."""
    ce_id = uuid.uuid4().hex[:8]
    [hub_id] = post_events(hub.client, [deal(ce_id, amount=42.0)])
    assert hub_id == event_id("crm", ce_id)

    def delivered_count(stats: dict[str, Any]) -> bool:
        return bool(stats["deliveries"]["delivered"] >= 1)

    wait_until(hub.stats, delivered_count, timeout=30)
    return f"D-{ce_id}", hub_id


def test_lineage_of_a_delivered_order_shows_event_mappings_origins_and_delivery(
    project: Path, delivered: tuple[str, str]
) -> None:
    order, hub_id = delivered
    done = charter("lineage", f"order/{order}", "-p", str(project))
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert [hub_id, "crm", "deal.closed"] == next(r for r in rows if r[0] == hub_id)[:3]
    assert any(
        r[:3] == ["customer.id", "A-1", "crm deal.closed"] and "from account.id" in r[3]
        for r in rows
    ), done.stdout
    assert any(r[0] == "status" and "(not in record)" in r[1] for r in rows), done.stdout
    assert "crm-deal-to-order@1" in done.stdout
    delivery = next(r for r in rows if r[2:5] == ["erp", "order-to-erp@1", "delivered"])
    assert delivery[1] == "deal-to-erp-order" and delivery[5] == "1"
    assert any(r[0] == delivery[0] and r[4] == "delivered" for r in rows)

    as_json = charter("lineage", f"order/{order}", "-p", str(project), "--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    [event] = body["events"]
    assert (event["id"], event["mapping"], event["canonical"]["total"]) == (
        hub_id,
        "crm-deal-to-order@1",
        42.0,
    )
    [sent] = body["deliveries"]
    [attempt] = sent["attempts"]
    assert attempt["outcome"] == "delivered" and 200 <= attempt["status_code"] < 300


def test_the_api_answers_lineage_and_404_for_unknown_records(
    hub: HubProcess, delivered: tuple[str, str]
) -> None:
    order, hub_id = delivered
    response = hub.client.get(f"/v1/lineage/order/{order}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["events"][0]["id"] == hub_id
    assert body["deliveries"][0]["status"] == "delivered"
    origins = {f["field"]: f for f in body["events"][0]["fields"]}
    assert origins["total"]["rule"] == "from amount"
    missing = problem_of(hub.client.get("/v1/lineage/order/D-nothing"), 404)
    assert "D-nothing" in missing["detail"]
    unknown = problem_of(hub.client.get(f"/v1/lineage/invoice/{order}"), 404)
    assert "invoice" in unknown["detail"]


def test_an_unknown_record_or_entity_is_one_line_naming_it_and_the_fix(
    project: Path, hub: HubProcess
) -> None:
    line = one_line_error(charter("lineage", "order/D-nothing", "-p", str(project)))
    assert "'D-nothing'" in line and "order_id" in line
    line = one_line_error(charter("lineage", "invoice/1", "-p", str(project)))
    assert "'invoice'" in line and "order" in line
    line = one_line_error(charter("lineage", "order", "-p", str(project)))
    assert "ENTITY/KEY" in line


def test_exports_are_parseable_documents_with_the_jobs_and_fields(
    project: Path, hub: HubProcess, tmp_path: Path
) -> None:
    out = tmp_path / "lineage.json"
    done = charter("export", "openlineage", "-p", str(project), "--out", str(out))
    assert done.returncode == 0, done.stderr
    [job] = json.loads(out.read_text())
    assert job["job"]["name"] == "deal-to-erp-order"
    columns = job["outputs"][0]["facets"]["columnLineage"]["fields"]
    assert columns["order_id"]["inputFields"][0]["field"] == "id"

    done = charter("export", "odcs", "order", "-p", str(project))
    assert done.returncode == 0, done.stderr
    contract = yaml.safe_load(done.stdout)
    assert contract["kind"] == "DataContract" and contract["apiVersion"].startswith("v3.0")
    names = [p["name"] for p in contract["schema"][0]["properties"]]
    assert names[:4] == ["order_id", "customer", "total", "currency"]
    assert contract["team"][0]["username"] == "finance-ops"
    line = one_line_error(charter("export", "odcs", "invoice", "-p", str(project)))
    assert "'invoice'" in line
