"""Circuit breakers against a target that fails for a while: two workers on PostgreSQL."""

from __future__ import annotations

import itertools
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from charter.processes import HubProcess
from tests.acceptance._recorder import RecorderProcess
from tests.acceptance._resilience import event, integration, project_with
from tests.acceptance.conftest import post_events, settled, wait_until

pytestmark = pytest.mark.postgres

OPEN_FOR = 1.0
MAX_ATTEMPTS = 6


def test_persistent_5xx_opens_the_breaker_probes_once_per_interval_and_drains_after(
    tmp_path: Path, pg_url: str
) -> None:
    project = project_with(
        tmp_path / "project",
        {
            "integrations/deal-to-erp-order.yaml": integration(
                "deal-to-erp-order",
                "revenue-critical",
                retry=f"{{max_attempts: {MAX_ATTEMPTS}, initial_backoff: 100ms, max_backoff: 1s}}",
            )
        },
        f"quota: {{rate_per_s: 1000}}\nbreaker: {{failures: 5, open_for: {OPEN_FOR:g}s}}\n",
    )
    with RecorderProcess() as target, ExitStack() as stack:
        env = {"CHARTER_ERP_URL": target.url}
        hubs = [
            HubProcess(project, command="server", env=env, database=pg_url),
            HubProcess(project, command="worker", env=env, database=pg_url),
            HubProcess(project, command="worker", env=env, database=pg_url),
        ]
        for hub in hubs:
            stack.callback(hub.close)
            hub.start()
        api = hubs[0].client
        target.fault(status=503)
        post_events(api, [event(f"b-{n}") for n in range(200)])
        wait_until(
            lambda: api.get("/v1/breakers").json()["breakers"],
            lambda rows: any(r["system"] == "erp" and r["state"] != "closed" for r in rows),
            20,
        )
        # Calls already on their way when it opened still arrive, and the other worker
        # learns of it at its next sync (every 0.25 s, later on a loaded machine): count
        # from a second on.
        outage_started = time.time() + 1.0
        time.sleep(5.5)
        during = api.get("/v1/breakers").json()["breakers"]
        target.clear_faults()
        outage_ended = time.time()
        stats = wait_until(hubs[0].stats, settled(200), 30)
        transitions = api.get("/v1/breakers/erp/transitions").json()["transitions"]
        engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            most_attempts = conn.execute(text("SELECT max(attempts) FROM deliveries")).scalar()
        engine.dispose()
        requests = target.requests()
        report = target.report()

    erp = next(r for r in during if r["system"] == "erp")
    assert erp["state"] in ("open", "half_open")
    assert "503" in (erp["last_error"] or "")
    # While open, at most one probe per half-open interval reached the target, from both
    # workers together.
    probes = [t for t, *_ in requests if outage_started <= t < outage_ended]
    assert 1 <= len(probes) <= (outage_ended - outage_started) / OPEN_FOR + 1, probes
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(gap >= OPEN_FOR * 0.95 for gap in gaps), gaps
    # Every transition is recorded: opened, probed, reopened by failed probes, closed.
    path = [(t["from_state"], t["to_state"]) for t in reversed(transitions)]
    assert path[0] == ("closed", "open")
    assert ("half_open", "open") in path
    assert path[-1] == ("half_open", "closed")
    # Waiting while open spent no attempts: nothing went dead, the policy was never exceeded.
    assert most_attempts is not None and most_attempts <= MAX_ATTEMPTS
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (200, 0)
    assert (report["applied"], report["duplicates"]) == (200, 0)
