"""Process call steps take their system's quota like deliveries do, and waiting costs no attempt.

``charter up`` on SQLite runs a process of two calls to a ledger whose quota
is 20 calls/s; the ledger itself answers 429 past 21 calls in a second, so a
call sent over the budget would show there, and would cost its step an
attempt.
"""

from __future__ import annotations

import time
from pathlib import Path

from charter.processes import HubProcess
from tests.acceptance._recorder import RecorderProcess
from tests.acceptance._resilience import max_per_window
from tests.conftest import copy_starter

RATE = 20
INSTANCES = 60

LEDGER = """\
kind: System
name: ledger
role: record
owner: finance-ops
description: Books every order twice (a recorder of arrival times).
connector: {{base_url: "{url}"}}
quota: {{rate_per_s: {rate}, burst: 1}}
"""

PROCESS = """\
kind: Process
name: book-order
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99.0, latency: 1m}
retry: {max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms}
steps:
  - id: debit
    call: {system: ledger, path: /debit, body: {order: {from: input.id}}}
  - id: credit
    call: {system: ledger, path: /credit, body: {order: {from: input.id}}}
"""


def test_process_calls_share_the_systems_quota_and_wait_without_burning_attempts(
    tmp_path: Path,
) -> None:
    with RecorderProcess() as ledger:
        ledger.fault(rate_limit_per_s=RATE + 1, retry_after_s=1)
        project = copy_starter(tmp_path / "project")
        (project / "systems" / "ledger.yaml").write_text(LEDGER.format(url=ledger.url, rate=RATE))
        (project / "processes").mkdir(exist_ok=True)
        (project / "processes" / "book-order.yaml").write_text(PROCESS)
        hub = HubProcess(project).start()
        try:
            items = [
                {"business_key": f"o-{n}", "input": {"id": f"o-{n}"}} for n in range(INSTANCES)
            ]
            started = hub.client.post(
                "/v1/processes/book-order/instances/batch", json={"instances": items}
            )
            assert started.status_code == 201, started.text
            ids = [row["id"] for row in started.json()["instances"]]
            deadline = time.monotonic() + 60
            while True:
                counts = hub.client.get("/v1/processes").json()["instances"]
                assert set(counts) <= {"running", "completed"}, counts  # no step ran out
                if counts.get("completed", 0) == INSTANCES:
                    break
                assert time.monotonic() < deadline, counts
                time.sleep(0.2)
            for ident in ids[:10]:
                steps = hub.client.get(f"/v1/processes/instances/{ident}").json()["steps"]
                assert {s: steps[s]["attempt"] for s in ("debit", "credit")} == {
                    "debit": 1,
                    "credit": 1,
                }
            quota = hub.client.get("/v1/systems/ledger/quota")
            assert quota.status_code == 200, quota.text
            assert "process:book-order" in quota.text
        finally:
            hub.close()
        arrivals = ledger.requests()
        assert len(arrivals) == 2 * INSTANCES
        assert all(status == 201 for *_, status in arrivals), [a for a in arrivals if a[3] != 201]
        assert max_per_window([t for t, *_ in arrivals]) <= RATE + 1
        assert ledger.report()["duplicates"] == 0
