"""Runtime drift end to end: the simulated CRM pushes deals to ``charter up``, switches to
deal version 2 (a new field ``channel`` and a new stage ``closed_won_partner``) while it
runs, and the owning team sees it through the API and ``charter drift`` within a minute,
while no unmapped value reaches the ERP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from charter.sim import SimProcess, spawn
from tests.acceptance.conftest import running_hub, wait_until
from tests.conftest import copy_starter

V1_DEALS = 20
V2_DEALS = 60
DETECT_S = 60.0


def generate(crm: SimProcess, count: int, run: str) -> None:
    answer = httpx.post(
        f"{crm.url}/admin/generate",
        json={"count": count, "batch_size": 1, "run": run},
        trust_env=False,
        timeout=10,
    )
    assert answer.status_code == 202, answer.text


def settled(generated: int) -> Any:
    return lambda r: r["generated"] == generated and r["pending"] == 0 and not r["running"]


def drift(api: httpx.Client) -> dict[tuple[str, str, str], dict[str, Any]]:
    response = api.get("/v1/drift", params={"system": "crm"})
    assert response.status_code == 200, response.text
    return {(r["kind"], r["field"], r["value"]): r for r in response.json()["drift"]}


def charter(*args: str, project: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["COLUMNS"] = "250"
    done = subprocess.run(
        [sys.executable, "-m", "charter", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_crm_switched_to_a_new_deal_version_is_reported_and_nothing_unmapped_is_delivered(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = copy_starter(tmp_path / "project")
    with running_hub(project, erp) as hub, spawn("crm", hub_url=hub.url) as crm:
        generate(crm, V1_DEALS, "v1")
        wait_until(crm.report, settled(V1_DEALS), 30)
        assert drift(hub.client) == {}

        crm.fault(schema_version=2)  # at runtime, as `charter sim fault --schema-version 2`
        switched = time.monotonic()
        generate(crm, V2_DEALS, "v2")
        report = wait_until(crm.report, settled(V1_DEALS + V2_DEALS), 30)
        partner = report["rejected"]
        assert 0 < partner < V2_DEALS
        assert (report["acknowledged"], report["retries"]) == (V1_DEALS + V2_DEALS - partner, 0)

        # Within a minute of the switch, the drift report names system, field, value, count.
        def reported(rows: dict[tuple[str, str, str], dict[str, Any]]) -> bool:
            channel = rows.get(("unknown_field", "channel", ""), {}).get("count")
            stage = rows.get(("unmapped_value", "stage", "closed_won_partner"), {}).get("count")
            return (channel, stage) == (V2_DEALS, partner)

        rows = wait_until(lambda: drift(hub.client), reported, DETECT_S, interval=0.5)
        assert time.monotonic() - switched < DETECT_S
        for row in rows.values():
            assert (row["system"], row["event_type"], row["team"]) == (
                "crm",
                "deal.closed",
                "sales-ops",
            )

        table = charter("drift", "--system", "crm", project=project)
        assert "closed_won_partner" in table and "channel" in table and "sales-ops" in table
        [channel_line] = [line for line in table.splitlines() if " channel " in line]
        assert f" {V2_DEALS} " in channel_line and "unknown_field" in channel_line
        [stage_line] = [line for line in table.splitlines() if "closed_won_partner" in line]
        assert f" {partner} " in stage_line and "sales-ops" in stage_line
        listed = orjson.loads(charter("drift", "--system", "crm", "--json", project=project))
        assert {(r["kind"], r["field"], r["value"], r["count"]) for r in listed} == {
            ("unknown_field", "channel", "", V2_DEALS),
            ("unmapped_value", "stage", "closed_won_partner", partner),
        }

        notices = hub.client.get("/v1/notices", params={"team": "sales-ops"}).json()["notices"]
        assert sorted(n["subject"] for n in notices) == [
            "crm deal.closed: unknown_field channel",
            "crm deal.closed: unmapped_value stage = 'closed_won_partner'",
        ]
        listed_notices = charter("notices", "--team", "sales-ops", project=project)
        assert "unmapped_value" in listed_notices

        # Each notice is also a CloudEvent in the hub's event log, shown with the notice.
        for notice in notices:
            cloud = notice["event"]
            assert (cloud["specversion"], cloud["type"], cloud["source"]) == (
                "1.0",
                "charter.drift.detected",
                "charter://hub/governance",
            )
            assert cloud["id"] == notice["event_id"] and cloud["id"] in listed_notices
            assert cloud["subject"] == f"crm/deal.closed/{notice['detail']['field']}"
            assert cloud["data"] == notice["detail"]
            logged = hub.client.get(f"/v1/events/{notice['event_id']}")
            assert logged.status_code == 200, logged.text
            assert (logged.json()["type"], logged.json()["data"]) == (
                "charter.drift.detected",
                notice["detail"],
            )
        # They are not events received from a system, and no integration takes them.
        assert hub.client.get("/v1/stats").json()["received"] == report["acknowledged"]

        # The ERP's own books: one order per acknowledged deal, none from a partner deal.
        wait_until(lambda: erp.report()["orders"], lambda n: n == report["acknowledged"], 30)
        orders = httpx.get(f"{erp.url}/orders", trust_env=False, timeout=10).json()
        assert "closed_won_partner" not in orders_text(orders)
        for order in orders:
            deal = httpx.get(f"{crm.url}/deals/{order['external_ref']}", trust_env=False).json()
            assert deal["stage"] == "closed_won", order


def orders_text(orders: list[dict[str, Any]]) -> str:
    return orjson.dumps(orders).decode()
