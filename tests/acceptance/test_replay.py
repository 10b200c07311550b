"""Replay end to end: ``charter up`` and the simulated ERP on real ports; ``charter replay`` in a
subprocess and ``POST /v1/replays`` over HTTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from charter.sim import SimProcess
from tests.acceptance.conftest import (
    deals,
    post_events,
    problem_of,
    running_hub,
    settled,
    wait_until,
)
from tests.acceptance.test_deadletters import charter, ok, orders_for
from tests.conftest import copy_starter

SETTLE_S = 90.0


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def test_replaying_10000_delivered_events_makes_no_new_effect_at_the_erp(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = copy_starter(tmp_path / "project")
    with running_hub(project, erp) as hub:
        post_events(hub.client, deals(10_000), batch_size=1000)
        wait_until(hub.stats, settled(10_000), SETTLE_S, interval=0.2)
        assert erp.report()["applied"] == 10_000

        counted = ok(charter("replay", "--dry-run", project=project))
        assert "10000 event(s) selected; 10000 deliveries to queue" in counted
        # Without a terminal, no --yes means no replay, and an answer rather than a hang.
        blocked = charter("replay", "--reason", "audit", project=project)
        assert blocked.returncode != 0
        assert "--yes" in blocked.stderr
        assert hub.stats()["deliveries"]["pending"] == 0

        started = time.monotonic()
        done = ok(charter("replay", "--reason", "prove idempotency", "--yes", project=project))
        took = time.monotonic() - started
        assert "10000 event(s)" in done and "10000 re-armed" in done
        assert took < 30, f"replaying 10,000 events took {took:.1f} s"
        stats = wait_until(hub.stats, settled(10_000), SETTLE_S, interval=0.2)
        assert stats["deliveries"]["delivered"] == 10_000
    report = erp.report()
    # Every replayed delivery reached the ERP, which answered each as a repeat.
    assert report["duplicates"] == 10_000
    assert (report["applied"], report["applied_more_than_once"]) == (10_000, 0)


def test_a_replay_after_a_mapping_fix_corrects_the_target(tmp_path: Path, erp: SimProcess) -> None:
    project = copy_starter(tmp_path / "project")
    mapping = project / "mappings" / "order-to-erp.yaml"
    v1 = mapping.read_text()
    # The bug: the ERP's total is read from a field the canonical order does not have.
    mapping.write_text(v1.replace("total: {from: total}", "total: {from: amount}"))
    before = time.time()
    with running_hub(project, erp) as hub:
        ids = post_events(hub.client, deals(50))
        wait_until(hub.stats, settled(50), SETTLE_S)
        assert hub.stats()["deliveries"]["dead"] == 50
        assert erp.report()["applied"] == 0  # the ERP refused every order without a total

    (project / "mappings" / "order-to-erp-v2.yaml").write_text(
        v1.replace("version: 1", "version: 2", 1)
    )
    integration = project / "integrations" / "deal-to-erp-order.yaml"
    integration.write_text(integration.read_text().replace("order-to-erp@1", "order-to-erp@2"))
    with running_hub(project, erp) as hub:
        api = hub.client
        window = {"since": iso(before), "until": iso(time.time() + 1), "type": "deal.closed"}
        problem_of(api.post("/v1/replays", json=window | {"until": iso(before - 60)}), 422)
        problem_of(api.post("/v1/replays", json=window | {"by": "ana"}), 422)  # no reason
        dry = api.post("/v1/replays", json=window | {"dry_run": True}).json()
        assert (dry["events"], dry["deliveries"], dry["rearmed"]) == (50, 50, 0)
        deal_id = api.get(f"/v1/events/{ids[0]}").json()["data"]["id"]
        one = api.post("/v1/replays", json={"key": deal_id, "dry_run": True})
        assert one.json()["events"] == 1
        ran = api.post(
            "/v1/replays",
            json=window
            | {"integration": "deal-to-erp-order", "by": "ana", "reason": "order-to-erp@2 fix"},
        )
        assert ran.status_code == 202, ran.text
        assert ran.json()["rearmed"] == 50
        stats = wait_until(hub.stats, settled(50), SETTLE_S)
        assert stats["deliveries"]["delivered"] == 50
        event = api.get(f"/v1/events/{ids[0]}").json()
        [order] = orders_for(erp, event["data"]["id"])
        assert order["total"] == event["data"]["amount"]

        # A second replay with the same mapping is a no-op at the ERP.
        again = api.post("/v1/replays", json=window | {"by": "ana", "reason": "once more"})
        assert again.json()["rearmed"] == 50
        wait_until(hub.stats, settled(50), SETTLE_S)
    report = erp.report()
    assert (report["applied"], report["applied_more_than_once"]) == (50, 0)
    assert report["duplicates"] == 50
