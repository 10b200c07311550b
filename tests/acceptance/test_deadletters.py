"""Dead letters end to end: ``charter up`` and the simulated ERP on real ports, the API over
HTTP and ``charter dlq`` in a subprocess, as an operator uses them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from charter.hub import delivery_key
from charter.processes import HubProcess
from charter.sim import SimProcess
from tests.acceptance.conftest import (
    INTEGRATION,
    deal,
    deals,
    post_events,
    problem_of,
    running_hub,
    settled,
    wait_until,
)
from tests.conftest import copy_starter

SETTLE_S = 60.0
# A pick-list the ERP mapping only half knows: a lost deal (status "cancelled") cannot be
# mapped and its delivery always fails, as a poison event does.
POISON_VALUES = "  status: {from: status, values: {open: open}}\n"
FIXED_VALUES = "  status: {from: status, values: {open: open, cancelled: cancelled}}\n"
STARTER_STATUS = "  status: {from: status, default: open}\n"
STARTER_OWNER = "status: {system_of_record: erp, policy: ignore}"
CRM_OWNS_STATUS = "status: {system_of_record: crm}"
FAST_RETRY = "retry:\n  max_attempts: 3\n  initial_backoff: 50ms\n  max_backoff: 100ms\n"


def dead_letter_project(directory: Path) -> Path:
    """The starter project with a poison pick-list in order-to-erp@1 and quick retries; the CRM
    owns order.status here, so a lost deal's status reaches the ERP mapping."""
    project = copy_starter(directory)
    entity = project / "entities" / "order.yaml"
    entity.write_text(entity.read_text().replace(STARTER_OWNER, CRM_OWNS_STATUS))
    mapping = project / "mappings" / "order-to-erp.yaml"
    text = mapping.read_text()
    assert STARTER_STATUS in text
    mapping.write_text(text.replace(STARTER_STATUS, POISON_VALUES))
    integration = project / "integrations" / "deal-to-erp-order.yaml"
    text = integration.read_text()
    start, end = text.index("retry:\n"), text.index("slo:\n")
    integration.write_text(text[:start] + FAST_RETRY + text[end:])
    return project


def fix_mapping(project: Path) -> None:
    """Publish order-to-erp@2, which knows cancelled orders, and route the integration to it."""
    v1 = (project / "mappings" / "order-to-erp.yaml").read_text()
    (project / "mappings" / "order-to-erp-v2.yaml").write_text(
        v1.replace("version: 1", "version: 2", 1).replace(POISON_VALUES, FIXED_VALUES)
    )
    integration = project / "integrations" / "deal-to-erp-order.yaml"
    integration.write_text(integration.read_text().replace("order-to-erp@1", "order-to-erp@2"))


def lost_deal(ce_id: str) -> dict[str, Any]:
    event = deal(ce_id)
    event["data"]["stage"] = "closed_lost"
    return event


def charter(*args: str, project: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``charter ARGS --project PROJECT`` with no terminal on stdin, as in CI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "charter", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def orders_for(erp: SimProcess, external_ref: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{erp.url}/orders", params={"external_ref": external_ref}, trust_env=False, timeout=10
    )
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def dead_letters(api: httpx.Client, **filters: Any) -> list[dict[str, Any]]:
    response = api.get("/v1/dead-letters", params={"limit": 1000, **filters})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["dead_letters"]
    return rows


def status_of(api: httpx.Client, ident: int) -> str:
    response = api.get(f"/v1/dead-letters/{ident}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def delivery_rate(hub: HubProcess, events: list[dict[str, Any]], total: int) -> float:
    """Post ``events`` and return good deliveries per second until all ``total`` settle."""
    before = hub.stats()["deliveries"]["delivered"]
    started = time.monotonic()
    post_events(hub.client, events, batch_size=500)
    stats = wait_until(hub.stats, settled(total), SETTLE_S, interval=0.02)
    return (stats["deliveries"]["delivered"] - before) / (time.monotonic() - started)


def test_a_poison_event_is_dead_lettered_the_others_flow_and_a_fix_delivers_it_once(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = dead_letter_project(tmp_path / "project")
    prefix = f"p{time.monotonic_ns()}"
    with running_hub(project, erp) as hub:
        api = hub.client
        # Throughput of good events alone and with poison events among them, measured in
        # alternating rounds (best of three each), so load from elsewhere hits both alike.
        alone: list[float] = []
        mixed: list[float] = []
        total = 0
        for round_ in range(3):
            total += 500
            alone.append(delivery_rate(hub, deals(500, f"{prefix}-a{round_}"), total))
            events = deals(500, f"{prefix}-b{round_}")
            events.insert(100 + 100 * round_, lost_deal(f"{prefix}-lost-{round_}"))
            total += 501
            mixed.append(delivery_rate(hub, events, total))
        events = deals(100, f"{prefix}-c")
        events.insert(50, lost_deal(f"{prefix}-lost-3"))
        post_events(api, events)
        stats = wait_until(hub.stats, settled(total + 101), SETTLE_S)["deliveries"]
        assert (stats["delivered"], stats["dead"]) == (3100, 4)
        # What keeps the others flowing, independent of the machine's load: each poison
        # event costs one attempt and no good event waits or retries behind it.
        assert stats["attempts"] == 3100 + 4, stats
        # The rates themselves are noisy on a shared machine (bench figures, not a test's):
        # this only catches a poison event stalling the flow.
        assert max(mixed) >= 0.5 * max(alone), (mixed, alone)
        assert erp.report()["applied"] == 3100

        # The dead letters, found by filter, with owners and the mapping error class.
        rows = dead_letters(api, error_class="mapping", integration=INTEGRATION)
        assert len(rows) == 4
        assert dead_letters(api, team="finance-ops", system="erp") == rows
        assert dead_letters(api, team="integration-platform") == []
        assert dead_letters(api, older_than="1h") == []
        assert {r["owners"]["integration"] for r in rows} == {"sales-ops"}
        first, second, third, fourth = sorted(rows, key=lambda r: r["id"])
        shown = api.get(f"/v1/dead-letters/{first['id']}").json()
        assert shown["event"]["data"]["stage"] == "closed_lost"
        assert shown["payload"]["status"] == "cancelled"
        assert "value map" in shown["last_error"]
        assert [a["outcome"] for a in shown["attempts_log"]] == ["dead"]

        # Bad input is answered as problem+json naming what is wrong.
        edited = shown["payload"] | {"status": "open"}
        bad = problem_of(
            api.post(
                f"/v1/dead-letters/{first['id']}/redrive",
                json={"by": "ana", "reason": "r", "payload": edited | {"total": "lots"}},
            ),
            422,
        )
        assert bad["pointer"] == "/payload/total"
        missing = problem_of(
            api.post(f"/v1/dead-letters/{first['id']}/redrive", json={"by": "ana"}), 422
        )
        assert "reason" in missing["detail"]
        problem_of(
            api.post("/v1/dead-letters/999999/discard", json={"by": "a", "reason": "r"}), 404
        )
        problem_of(api.get("/v1/dead-letters", params={"older_than": "yesterday"}), 422)
        problem_of(api.get("/v1/dead-letters", params={"error_class": "gremlins"}), 422)

        # Fix one by editing its payload (API), with the version it was created with.
        redriven = api.post(
            f"/v1/dead-letters/{first['id']}/redrive",
            json={
                "by": "ana",
                "reason": "customer re-opened the deal",
                "payload": edited,
                "mapping": "original",
            },
        )
        assert redriven.status_code == 200, redriven.text
        wait_until(lambda: status_of(api, first["id"]), lambda s: s == "delivered", SETTLE_S)
        ref = shown["payload"]["order_id"]
        # The ERP holds one order for the deal (it keeps its own status of orders).
        [order] = orders_for(erp, ref)
        assert order["idempotency_key"] == redriven.json()["idempotency_key"]
        again = problem_of(
            api.post(
                f"/v1/dead-letters/{first['id']}/redrive", json={"by": "ana", "reason": "again"}
            ),
            409,
        )
        assert "already delivered" in again["detail"]

        # Discard one with a reason (CLI); the audit shows who and why.
        ok(
            charter(
                "dlq",
                "discard",
                str(second["id"]),
                "--by",
                "bo",
                "--reason",
                "test deal",
                project=project,
            )
        )
        audit = orjson.loads(
            ok(charter("dlq", "show", str(second["id"]), "--json", project=project))
        )
        assert audit["status"] == "discarded"
        assert [(a["action"], a["by"], a["reason"]) for a in audit["actions"]] == [
            ("discard", "bo", "test deal")
        ]
        assert [r["id"] for r in dead_letters(api, status="discarded")] == [second["id"]]
        refused = charter("dlq", "discard", str(third["id"]), project=project)
        assert refused.returncode != 0
        assert "reason" in refused.stderr
        listed = ok(charter("dlq", "list", "--error-class", "mapping", project=project))
        assert str(third["id"]) in listed and str(second["id"]) not in listed

    # Fix the mapping, restart the hub on it, redrive one with the current version (CLI).
    fix_mapping(project)
    with running_hub(project, erp) as hub:
        api = hub.client
        out = ok(
            charter(
                "dlq", "redrive", str(third["id"]), "--reason", "v2 maps cancelled", project=project
            )
        )
        assert "order-to-erp@2" in out
        wait_until(lambda: status_of(api, third["id"]), lambda s: s == "delivered", SETTLE_S)
        ref = api.get(f"/v1/dead-letters/{third['id']}").json()["payload"]["order_id"]
        [order] = orders_for(erp, ref)
        assert order["external_ref"] == ref
        wait_until(hub.stats, lambda s: s["deliveries"]["pending"] == 0, SETTLE_S)
        report = erp.report()
        assert (report["applied"], report["applied_more_than_once"]) == (3102, 0)
        assert fourth["id"] in [r["id"] for r in dead_letters(api)]


def test_an_outage_dead_letters_after_the_retry_policy_and_a_bulk_redrive_delivers_once(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = dead_letter_project(tmp_path / "project")
    # With its breaker on, an outage parks deliveries without spending attempts; this test
    # is about what happens when every attempt is spent, so the ERP's breaker is off.
    erp_file = project / "systems" / "erp.yaml"
    erp_file.write_text(erp_file.read_text() + "breaker: {enabled: false}\n")
    events = deals(40)
    with running_hub(project, erp) as hub:
        api = hub.client
        erp.fault(outage=True)
        ids = post_events(api, events)
        wait_until(hub.stats, settled(40), SETTLE_S)
        rows = dead_letters(api, error_class="http_5xx")
        assert len(rows) == 40
        shown = api.get(f"/v1/dead-letters/{rows[0]['id']}").json()
        assert [a["status_code"] for a in shown["attempts_log"]] == [503, 503, 503]
        assert erp.report()["applied"] == 0
        erp.clear_faults()

        counted = api.post(
            "/v1/dead-letters/redrive",
            json={"by": "ana", "reason": "ERP back", "error_class": "http_5xx", "dry_run": True},
        ).json()
        assert counted["matched"] == 40
        # Without a terminal a bulk redrive must not wait for an answer that cannot come.
        blocked = charter(
            "dlq", "redrive", "--error-class", "http_5xx", "--reason", "x", project=project
        )
        assert blocked.returncode != 0
        assert "--yes" in blocked.stderr
        assert len(dead_letters(api)) == 40
        out = ok(
            charter(
                "dlq",
                "redrive",
                "--error-class",
                "http_5xx",
                "--system",
                "erp",
                "--reason",
                "ERP outage over",
                "--yes",
                project=project,
            )
        )
        assert "redrove 40" in out
        stats = wait_until(hub.stats, settled(40), SETTLE_S)
        assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (40, 0)
    report = erp.report()
    assert (report["applied"], report["applied_more_than_once"]) == (40, 0)
    response = httpx.get(f"{erp.url}/admin/applied", trust_env=False, timeout=10)
    assert sorted(response.json()) == sorted(delivery_key(i, INTEGRATION) for i in ids)
    assert shown["actions"] == []
