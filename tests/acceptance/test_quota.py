"""Quota budgets, as the target sees them: real hub processes, a target recording arrivals."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from charter.processes import HubProcess
from tests.acceptance._recorder import RecorderProcess
from tests.acceptance._resilience import (
    event,
    integration,
    max_per_window,
    percentile,
    project_with,
    second_event,
)
from tests.acceptance.conftest import post_events, settled, wait_until


@pytest.fixture
def target() -> Iterator[RecorderProcess]:
    with RecorderProcess() as recorder:
        yield recorder


@pytest.mark.postgres
def test_three_integrations_and_two_workers_stay_within_50_per_second_and_honour_retry_after(
    tmp_path: Path, pg_url: str, target: RecorderProcess
) -> None:
    project = project_with(
        tmp_path / "project",
        {
            "integrations/deal-audit.yaml": integration("deal-audit", "operational"),
            "integrations/deal-feed.yaml": integration("deal-feed", "informational"),
        },
        "quota: {rate_per_s: 50}\n",
    )
    target.fault(rate_limit_per_s=50, retry_after_s=1)
    env = {"CHARTER_ERP_URL": target.url}
    with ExitStack() as stack:
        hubs = [
            HubProcess(project, command="server", env=env, database=pg_url),
            HubProcess(project, command="worker", env=env, database=pg_url),
            HubProcess(project, command="worker", env=env, database=pg_url),
        ]
        for hub in hubs:
            stack.callback(hub.close)
            hub.start()
        api = hubs[0].client
        # 120 events, 3 deliveries each: 7 s of budget at 50/s.
        post_events(api, [event(f"q-{n}") for n in range(120)])
        # Once deliveries flow (workers may take seconds to start on a loaded machine),
        # the target tightens its limit for a while: it answers 429 with Retry-After: 1.
        wait_until(lambda: target.report()["received"], lambda n: n >= 50, 60)
        target.fault(rate_limit_per_s=10)
        time.sleep(2.0)
        target.fault(rate_limit_per_s=50)
        stats = wait_until(hubs[0].stats, settled(360), 60)
        # Workers report their use about once a second; every request took a token.
        received = target.report()["received"]
        quota = wait_until(
            lambda: api.get("/v1/systems/erp/quota").json(),
            lambda q: sum(f["granted"] for f in q["flows"]) >= received,
            15,
        )
        assert all(h.running for h in hubs[1:]), hubs[1].log_tail()

    requests = target.requests()
    times = [t for t, *_ in requests]
    assert max_per_window(times) <= 50 * 1.05, max_per_window(times)
    # No request left a worker before the Retry-After time: after a 429 answered at t,
    # nothing arrives in [t + 0.15 s, t + 1 s) (0.15 s: requests already on their way,
    # and the other worker's next lease of the shared bucket).
    limited = [t for t, _, _, status in requests if status == 429]
    assert limited, "the target never answered 429"
    early = [(t429, t) for t429 in limited for t in times if t429 + 0.15 <= t < t429 + 1.0]
    assert not early, f"{len(early)} requests during a Retry-After pause, e.g. {early[:3]}"
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (360, 0)
    assert target.report() == {"received": len(requests), "applied": 360, "duplicates": 0}
    # The use is visible per integration.
    flows = {f["flow"]: f for f in quota["flows"]}
    assert set(flows) == {"deal-to-erp-order", "deal-audit", "deal-feed"}
    assert sum(f["granted"] for f in flows.values()) == len(requests)
    assert sum(f["rate_limited"] for f in flows.values()) == len(limited)
    assert {f["tier"] for f in flows.values()} == {
        "revenue-critical",
        "operational",
        "informational",
    }


def test_revenue_critical_flow_keeps_its_share_while_an_informational_flood_waits(
    tmp_path: Path, target: RecorderProcess
) -> None:
    rate = 100
    project = project_with(
        tmp_path / "project",
        {"integrations/deal-notes.yaml": integration("deal-notes", "informational", "deal.noted")},
        f"quota: {{rate_per_s: {rate}}}\n",
    )
    second_event(project, "deal.noted")
    run = uuid.uuid4().hex[:6]
    offer_s = 2.0
    critical_sent: list[str] = []
    with HubProcess(project, env={"CHARTER_ERP_URL": target.url}) as hub:
        client = httpx.Client(base_url=hub.url, trust_env=False, timeout=30)
        started = time.monotonic()

        def flood() -> None:
            # 10x the budget: 1,000 informational events per second, in batches of 100.
            with httpx.Client(base_url=hub.url, trust_env=False, timeout=30) as own:
                n = 0
                while not offered.is_set():
                    post_events(own, [event(f"n-{run}-{n + i}", "deal.noted") for i in range(100)])
                    n += 100
                    time.sleep(max(0.0, started + n / (10 * rate) - time.monotonic()))

        offered = threading.Event()
        flooding = threading.Thread(target=flood)
        flooding.start()
        # 30 % of the budget: one revenue-critical event every 1/30 s, for ``offer_s``
        # (a count, not a time, so a slow answer from the loaded hub does not shrink it).
        for n in range(round(0.3 * rate * offer_s)):
            critical_sent += post_events(client, [event(f"c-{run}-{n}")])
            time.sleep(max(0.0, started + (n + 1) / (0.3 * rate) - time.monotonic()))
        offered.set()
        flooding.join()
        time.sleep(2.0)
        engine = create_engine(f"sqlite:///{project / '.charter' / 'charter.db'}")
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT integration, status, attempts, delivered_at - created_at "
                    "FROM deliveries"
                )
            ).all()
        critical = [r for r in rows if r[0] == "deal-to-erp-order"]
        notes = [r for r in rows if r[0] == "deal-notes"]
        # The informational flood is delayed, never lost: it drains at the budget's pace.
        total = len(rows)
        stats = wait_until(hub.stats, settled(total), 60, 0.5)
        client.close()
        engine.dispose()

    assert len(critical) == len(critical_sent) == round(0.3 * rate * offer_s)
    delivered = [r[3] for r in critical if r[1] == "delivered"]
    assert len(delivered) >= 0.95 * len(critical), (len(delivered), len(critical))
    assert percentile(delivered, 95) < 2.0, percentile(delivered, 95)
    waiting = [r for r in notes if r[1] == "pending"]
    assert len(waiting) > len(notes) / 2, "the informational flood was not held back"
    assert all(r[2] == 0 for r in waiting), "waiting for quota must not spend attempts"
    assert stats["deliveries"]["dead"] == 0
    assert stats["deliveries"]["delivered"] == total
    assert target.report()["duplicates"] == 0
