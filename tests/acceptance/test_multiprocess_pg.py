"""One ``charter server`` and separate ``charter worker`` processes sharing PostgreSQL, and a
worker that goes on when its connections to the database are cut."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import make_url, text

from charter.processes import HubProcess
from charter.sim import SimProcess
from charter.store import SqlStore
from tests.acceptance.conftest import (
    applied_keys,
    deals,
    expected_keys,
    post_events,
    running_hub,
    settled,
    wait_until,
    wait_until_listening,
)
from tests.conftest import PG_ADMIN

pytestmark = pytest.mark.postgres

SETTLE_S = 60.0


class Leases:
    """Who holds delivery leases right now, read from the shared database."""

    def __init__(self, url: str) -> None:
        self.store = SqlStore.from_url(url)

    def holders(self) -> dict[int, int]:
        """Leases held, by the pid in each worker's lease owner (``host:pid:suffix``)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT lease_owner, count(*) FROM deliveries "
                    "WHERE lease_owner IS NOT NULL GROUP BY lease_owner"
                )
            ).all()
        return {int(owner.split(":")[-2]): count for owner, count in rows}

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def leases(pg_url: str) -> Iterator[Leases]:
    reader = Leases(pg_url)
    yield reader
    reader.close()


def start_worker(
    stack: ExitStack, project: Path, erp: SimProcess, database: str, **env: str
) -> HubProcess:
    """``charter worker`` on ``database``; stopped (SIGTERM) when ``stack`` closes."""
    worker = HubProcess(
        project,
        command="worker",
        env={"CHARTER_ERP_URL": erp.url, **env},
        database=database,
    )
    stack.callback(worker.close)
    return worker.start()


def assert_delivered_once(stats: dict[str, Any], erp: SimProcess, ids: list[str]) -> None:
    """Every event of ``ids`` delivered, none dead, and the ERP applied each once."""
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (len(ids), 0)
    report = erp.report()
    assert (report["applied"], report["applied_more_than_once"]) == (len(ids), 0), report
    assert sorted(applied_keys(erp)) == sorted(expected_keys(ids))


def test_two_workers_share_2000_events_and_a_stopped_one_hands_over_its_work(
    project_dir: Path, pg_url: str, erp: SimProcess, leases: Leases
) -> None:
    # 150 ms per call: one worker alone needs seconds for what is left after the stop.
    erp.fault(latency_ms=150)
    events = deals(2000)
    seen: dict[int, int] = {}

    def sample() -> dict[str, Any]:
        """Note who holds leases now; return the ERP's counters."""
        for pid, count in leases.holders().items():
            seen[pid] = max(seen.get(pid, 0), count)
        return erp.report()

    with ExitStack() as stack:
        server = stack.enter_context(
            running_hub(project_dir, erp, database=pg_url, command="server")
        )
        first = start_worker(stack, project_dir, erp, pg_url)
        second = start_worker(stack, project_dir, erp, pg_url)
        ids: list[str] = []
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as api:
            for start in range(0, len(events), 100):
                ids += post_events(api, events[start : start + 100])
                sample()
        wait_until(sample, lambda r: r["applied"] >= 800, SETTLE_S, 0.02)
        assert first.stop() == 0, first.log_tail()
        assert first.pid not in leases.holders(), "the stopped worker kept leases"
        stopped_at = erp.report()["applied"]
        stats = wait_until(server.stats, settled(2000), SETTLE_S)
        assert second.running, second.log_tail()

    assert {first.pid, second.pid} <= set(seen), f"lease holders seen: {seen}"
    assert stopped_at < 2000, "everything was delivered before a worker stopped"
    assert stats["received"] == 2000
    assert_delivered_once(stats, erp, ids)


def test_a_killed_worker_s_deliveries_are_taken_over_when_its_leases_expire(
    project_dir: Path, pg_url: str, erp: SimProcess, leases: Leases
) -> None:
    erp.fault(latency_ms=300)
    with ExitStack() as stack:
        server = stack.enter_context(
            running_hub(project_dir, erp, database=pg_url, command="server")
        )
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, deals(500))
        doomed = start_worker(stack, project_dir, erp, pg_url, CHARTER_LEASE_SECONDS="2")
        held = wait_until(leases.holders, lambda h: h.get(doomed.pid, 0) > 0, 20, 0.02)
        doomed.kill()
        orphaned = leases.holders().get(doomed.pid, 0)
        start_worker(stack, project_dir, erp, pg_url, CHARTER_LEASE_SECONDS="2")
        # Within 30 s: with the default 60 s lease this could not happen.
        stats = wait_until(server.stats, settled(500), 30)

    assert orphaned > 0, f"the killed worker held no leases: {held}"
    assert doomed.pid not in leases.holders()
    assert_delivered_once(stats, erp, ids)


def test_a_server_alone_keeps_events_pending_until_a_worker_starts(
    project_dir: Path, pg_url: str, erp: SimProcess
) -> None:
    with ExitStack() as stack:
        server = stack.enter_context(
            running_hub(project_dir, erp, database=pg_url, command="server")
        )
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, deals(50))
        time.sleep(1.0)
        waiting = server.stats()
        assert erp.report()["received"] == 0
        worker = start_worker(stack, project_dir, erp, pg_url)
        stats = wait_until(server.stats, settled(50), SETTLE_S)
        assert worker.stop() == 0, worker.log_tail()

    assert waiting["received"] == 50
    assert (waiting["deliveries"]["pending"], waiting["deliveries"]["delivered"]) == (50, 0)
    assert_delivered_once(stats, erp, ids)


NAP = """\
kind: Process
name: nap
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: nap
    sleep: {for: 20ms}
"""


def cut_connections(database: str) -> int:
    """Close every connection to ``database`` from the server's side, as a restart of
    PostgreSQL or a failover does; how many were closed."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (make_url(database).database,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_worker_whose_database_connections_are_cut_goes_on_once_it_answers(
    project_dir: Path, pg_url: str, erp: SimProcess
) -> None:
    """Connections cut while the worker delivers events and runs processes: it waits and
    tries again instead of stopping, and everything acknowledged is done once, in the end."""
    (project_dir / "processes").mkdir(exist_ok=True)
    (project_dir / "processes" / "nap.yaml").write_text(NAP)
    # Slow enough that the worker is still delivering (writing results every few hundred
    # milliseconds, on connections too recently used to be pinged) while the cuts come.
    erp.fault(latency_ms=500)
    events = deals(600)
    with ExitStack() as stack:
        server = stack.enter_context(
            running_hub(project_dir, erp, database=pg_url, command="server")
        )
        since = time.time()
        worker = start_worker(stack, project_dir, erp, pg_url, CHARTER_LEASE_SECONDS="2")
        wait_until_listening(pg_url, since)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, events)
            for n in range(300):
                started = api.post(
                    "/v1/processes/nap/instances", json={"business_key": f"nap-{n}", "input": {}}
                )
                assert started.status_code == 201, started.text
        before = server.stats()["deliveries"]
        assert before["pending"] > 0, f"the work ended before the cuts: {before}"
        cut = 0
        for _ in range(5):
            cut += cut_connections(pg_url)
            time.sleep(0.3)
        time.sleep(1.5)  # the server's pooled connections are checked before use again
        stats = wait_until(server.stats, settled(600), SETTLE_S)
        counts = wait_until(
            lambda: server.client.get("/v1/processes").json()["instances"],
            lambda c: c.get("completed") == 300,
            SETTLE_S,
        )
        assert worker.running, worker.log_tail()
        log = worker.log_tail(200)

    assert cut >= 5
    # The worker met the cuts: a loop waited and tried again, or a write that may not have
    # been committed let go of its instances (which of the two depends on the moment).
    assert "the database cannot be reached" in log, log
    assert "trying again in" in log or "may not have been committed" in log, log
    assert counts == {"completed": 300}
    assert_delivered_once(stats, erp, ids)


def test_charter_up_stops_with_its_worker_rather_than_take_work_nothing_does(
    project_dir: Path, pg_url: str, erp: SimProcess
) -> None:
    """A worker that stops on an error it cannot wait out (here, a table gone) takes the
    API of its process down with it, and the process exits non-zero naming the error, so
    that whatever supervises it notices; the API does not go on acknowledging events."""
    with running_hub(project_dir, erp, database=pg_url, command="up") as hub:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE process_inbox RENAME TO process_inbox_gone")
        deadline = time.monotonic() + SETTLE_S
        while hub.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not hub.running, "charter up kept serving without its worker"
        code = hub.stop()
        log = hub.log_tail(50)
    assert code == 1, log
    assert "the worker stopped, so the server stops too" in log, log
    assert "process_inbox" in log.splitlines()[-1], log
