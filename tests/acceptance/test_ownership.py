"""The ERP owns ``order.status``; the CRM's mapping writes it. Each policy end to end:
``charter up`` and the simulated ERP on real ports, the API over HTTP and ``charter
quarantine`` / ``charter ownership`` in a subprocess, as the owning team uses them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from charter.hub import delivery_key
from charter.sim import SimProcess
from tests.acceptance.conftest import (
    EVENTS,
    INTEGRATION,
    SINGLE,
    applied_keys,
    deal,
    problem_of,
    running_hub,
    wait_until,
)
from tests.conftest import copy_starter

OWNED = "status: {system_of_record: erp, policy: ignore}"


def project_with(directory: Path, policy: str) -> Path:
    project = copy_starter(directory)
    entity = project / "entities" / "order.yaml"
    text = entity.read_text()
    assert OWNED in text
    entity.write_text(text.replace(OWNED, f"status: {{system_of_record: erp, policy: {policy}}}"))
    return project


def lost_deal(ce_id: str) -> dict[str, Any]:
    event = deal(ce_id)
    event["data"]["stage"] = "closed_lost"  # the CRM says: status cancelled
    return event


def post(api: httpx.Client, event: dict[str, Any]) -> httpx.Response:
    return api.post(EVENTS, content=orjson.dumps(event), headers={"content-type": SINGLE})


def charter(*args: str, project: Path) -> str:
    """``charter ARGS --project PROJECT`` with no terminal, as in CI; must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [sys.executable, "-m", "charter", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def write_counts(api: httpx.Client) -> dict[tuple[str, str], int]:
    response = api.get("/v1/ownership/writes")
    assert response.status_code == 200, response.text
    return {
        (r["policy"], r["outcome"]): r["count"]
        for r in response.json()["writes"]
        if (r["system"], r["entity"], r["field"]) == ("crm", "order", "status")
    }


def delivery(api: httpx.Client, ident: int) -> dict[str, Any]:
    response = api.get(f"/v1/deliveries/{ident}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_under_reject_the_crm_is_refused_with_the_owner_named_and_the_refusal_counted(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = project_with(tmp_path / "project", "reject")
    ce_id = uuid.uuid4().hex
    with running_hub(project, erp) as hub:
        answer = post(hub.client, lost_deal(ce_id))
        problem = problem_of(answer, 422)
        assert problem["type"].endswith("/field-write-refused")
        assert (problem["field"], problem["system_of_record"], problem["policy"]) == (
            "order.status",
            "erp",
            "reject",
        )
        assert "finance-ops" in problem["fix"]
        assert hub.stats()["received"] == 0  # nothing stored
        counts = wait_until(lambda: write_counts(hub.client), bool, 10)
        assert counts == {("reject", "rejected"): 1}
    assert applied_keys(erp) == []


def test_under_ignore_the_order_is_delivered_without_the_crms_status(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = copy_starter(tmp_path / "project")  # the starter: policy ignore
    ce_id = uuid.uuid4().hex
    with running_hub(project, erp) as hub:
        answer = post(hub.client, lost_deal(ce_id))
        assert answer.status_code == 202, answer.text
        [hub_id] = answer.json()["ids"]
        wait_until(hub.stats, lambda s: s["deliveries"]["delivered"] == 1, 20)
        [row] = hub.client.get("/v1/deliveries").json()["deliveries"]
        assert "status" not in row["payload"] and row["payload"]["order_id"] == f"D-{ce_id}"
        assert write_counts(hub.client) == {("ignore", "ignored"): 1}
        assert "ignored" in charter("ownership", project=project)
    assert applied_keys(erp) == [delivery_key(hub_id, INTEGRATION)]


def test_under_quarantine_writes_wait_for_the_owner_who_accepts_or_rejects_each(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = project_with(tmp_path / "project", "quarantine")
    accepted_id, rejected_id = uuid.uuid4().hex, uuid.uuid4().hex
    with running_hub(project, erp) as hub:
        api = hub.client
        ids = [post(api, lost_deal(ce)).json()["ids"][0] for ce in (accepted_id, rejected_id)]
        held = wait_until(
            lambda: api.get("/v1/quarantine", params={"team": "finance-ops"}).json()["quarantine"],
            lambda rows: len(rows) == 2,
            10,
        )
        by_event = {h["event_id"]: h for h in held}
        assert {(h["system"], h["field"], h["value"]) for h in held} == {
            ("crm", "status", "cancelled")
        }
        assert {h["system_of_record"] for h in held} == {"erp"}
        quarantined = api.get("/v1/deliveries", params={"status": "quarantined"}).json()
        assert len(quarantined["deliveries"]) == 2
        assert hub.stats()["deliveries"]["pending"] == 0
        assert applied_keys(erp) == []  # held: nothing reached the ERP

        # Accept one through the API: who and why are required.
        first = by_event[ids[0]]
        problem_of(api.post(f"/v1/quarantine/{first['id']}/accept", json={"by": "fin"}), 422)
        review = {"by": "fin", "reason": "the ERP cancelled it too"}
        answer = api.post(f"/v1/quarantine/{first['id']}/accept", json=review)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["released"]) == (
            "accepted",
            first["deliveries"],
        )
        wait_until(hub.stats, lambda s: s["deliveries"]["delivered"] == 1, 20)
        assert delivery(api, first["deliveries"][0])["payload"]["status"] == "cancelled"
        problem_of(api.post(f"/v1/quarantine/{first['id']}/reject", json=review), 409)

        # Reject the other through the CLI: delivered without the CRM's status.
        second = by_event[ids[1]]
        shown = charter(
            "quarantine", "reject", str(second["id"]), "--by", "bob",
            "--reason", "status is ours", project=project,
        )  # fmt: skip
        assert f"held write {second['id']}" in shown and "rejected by bob" in shown
        wait_until(hub.stats, lambda s: s["deliveries"]["delivered"] == 2, 20)
        assert "status" not in delivery(api, second["deliveries"][0])["payload"]

        assert write_counts(api) == {
            ("quarantine", "quarantined"): 2,
            ("quarantine", "accepted"): 1,
            ("quarantine", "rejected"): 1,
        }
        audit = orjson.loads(
            charter("quarantine", "list", "--status", "all", "--json", project=project)
        )
        assert {(h["status"], h["decided_by"], h["reason"]) for h in audit} == {
            ("accepted", "fin", "the ERP cancelled it too"),
            ("rejected", "bob", "status is ours"),
        }
        assert api.get("/v1/quarantine").json()["count"] == 0
        stats = hub.stats()["deliveries"]
        assert (stats["pending"], stats["dead"]) == (0, 0)
    keys = applied_keys(erp)
    assert sorted(keys) == sorted(delivery_key(i, INTEGRATION) for i in ids)  # once each
