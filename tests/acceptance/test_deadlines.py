"""Call deadlines against socket faults (trickle, reset, blackhole), and a healthy target's
throughput while another target hangs: ``charter up`` with a TCP fault proxy."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from charter.processes import HubProcess
from charter.sim import SimProcess, spawn, spawn_proxy
from tests.acceptance._resilience import event, integration, project_with, target_system
from tests.acceptance.conftest import post_events, wait_until

DEADLINE_S = 1.0
# Enough events for a window of several seconds: shorter ones moved by more than 10 %
# between two healthy phases when other suites shared the machine.
EVENTS = 1500
FROM, TO = 200, 1300


def erp_throughput(hub: HubProcess, erp: SimProcess, prefix: str) -> float:
    """Orders per second the ERP applied for ``EVENTS`` new events, in steady state: from
    the ``FROM``th order applied to the ``TO``th (ramp-up and the tail are left out)."""
    before = erp.report()["applied"]
    post_events(hub.client, [event(f"{prefix}-{n}") for n in range(EVENTS)])
    # (orders applied, when) as first seen at or past each mark: the counts, not the marks,
    # measure the window, however late the first look comes.
    seen: dict[int, tuple[int, float]] = {}
    while len(seen) < 2:
        applied = erp.report()["applied"] - before
        for mark in (FROM, TO):
            if applied >= mark and mark not in seen:
                seen[mark] = (applied, time.monotonic())
        time.sleep(0.01)
    wait_until(erp.report, lambda r: r["applied"] >= before + EVENTS, 30, 0.02)
    (first, start), (last, end) = seen[FROM], seen[TO]
    return (last - first) / (end - start)


def deadline_errors_since(project: Path, since: float) -> list[str]:
    """Archive attempts that ended at their deadline since ``since``, read from the hub's
    database (WAL: a reader beside the running hub)."""
    engine = create_engine(f"sqlite:///{project / '.charter' / 'charter.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
                    "WHERE d.target = 'archive' AND a.started_at >= :since "
                    "AND a.error LIKE '%deadline%'"
                ),
                {"since": since},
            ).all()
    finally:
        engine.dispose()
    return [str(r[0]) for r in rows]


def test_every_call_ends_by_its_deadline_and_a_hanging_target_does_not_slow_the_others(
    tmp_path: Path,
) -> None:
    project = project_with(
        tmp_path / "project",
        {
            "integrations/deal-to-archive.yaml": integration(
                "deal-to-archive", "informational", system="archive"
            )
        },
        # The healthy ERP is bound by its concurrency (16 calls of 50 ms at once).
        "quota: {rate_per_s: 5000, concurrency: 16}\n",
    )
    target_system(
        project,
        "archive",
        "connector:\n"
        "  base_url: ${CHARTER_ARCHIVE_URL}\n"
        f"  timeout: 5s\n  connect_timeout: 5s\n  deadline: {DEADLINE_S:g}s\n"
        "breaker: {failures: 3, open_for: 500ms}\n",
    )
    run = uuid.uuid4().hex[:6]
    with spawn("erp") as erp, spawn("noop") as archive, spawn_proxy(archive.url) as proxy:
        erp.fault(latency_ms=50)
        env = {"CHARTER_ERP_URL": erp.url, "CHARTER_ARCHIVE_URL": proxy.url}
        with HubProcess(project, env=env) as hub:
            healthy = erp_throughput(hub, erp, f"{run}-a")
            proxy.fault(blackhole=True)
            hanging = erp_throughput(hub, erp, f"{run}-b")
            time.sleep(1.0)
            proxy.clear_faults()
            archive.fault(trickle_bytes_per_s=1)
            trickle_started = time.time()
            post_events(hub.client, [event(f"{run}-c-{n}") for n in range(20)])
            # Calls to the archive may be parked by its breaker for a while after the
            # blackhole: wait for a trickled call to reach its deadline, not a fixed time.
            wait_until(lambda: deadline_errors_since(project, trickle_started), bool, 30, 0.2)
            archive.clear_faults()
            trickle_ended = time.time()
            proxy.fault(reset=True)
            post_events(hub.client, [event(f"{run}-d-{n}") for n in range(20)])
            time.sleep(2.0)
            proxy.clear_faults()
        engine = create_engine(f"sqlite:///{project / '.charter' / 'charter.db'}")
        with engine.connect() as conn:
            attempts = conn.execute(
                text(
                    "SELECT a.latency_ms, a.error, a.started_at FROM attempts a JOIN deliveries d "
                    "ON d.id = a.delivery_id WHERE d.target = 'archive' AND a.error IS NOT NULL"
                )
            ).all()
        engine.dispose()

    assert hanging >= 0.9 * healthy, (hanging, healthy)
    assert attempts, "no archive call failed"
    slowest = max(latency for latency, _, _ in attempts)
    assert slowest <= (DEADLINE_S + 1.0) * 1000, slowest
    errors = [error for _, error, _ in attempts]
    # The blackhole and the trickled body both hit the deadline; resets end the call.
    assert sum("deadline of 1 s passed" in e for e in errors) >= 2, errors
    trickled = [
        e for _, e, at in attempts if trickle_started <= at < trickle_ended and "deadline" in e
    ]
    assert trickled, "no trickled answer reached the deadline"
    resets = [e for e in errors if "reset" in e.lower() or "disconnected" in e.lower()]
    assert resets, errors
