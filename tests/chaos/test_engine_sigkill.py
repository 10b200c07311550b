"""SIGKILL process workers again and again: every order-to-cash instance ends as it would
undisturbed, and each system applies one effect per (instance, step)."""

from __future__ import annotations

import random
import shutil
import time
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

import httpx
import orjson
import pytest

from charter.processes import HubProcess
from charter.sim import spawn

INSTANCES = 2_000
KILLS = 20
BATCH = 100
TARGETS = ("erp", "payments", "warehouse", "portal", "analytics")


def order_to_cash(directory: Path) -> Path:
    template = resources.files("charter") / "templates" / "order-to-cash"
    with resources.as_file(template) as source:
        shutil.copytree(source, directory)
    return directory


def deal(n: int) -> dict[str, object]:
    # Every 37th deal's card is declined (amounts ending in .13): it must compensate.
    amount = 100.13 if n % 37 == 0 else 100.0 + n % 50
    return {
        "specversion": "1.0",
        "id": f"chaos-deal-{n}",
        "source": "crm.chaos",
        "type": "deal.closed",
        "data": {
            "id": f"D-{n:06d}",
            "account": {"id": f"A-{n % 89:04d}", "name": f"Account {n % 89}"},
            "amount": amount,
            "currency": "EUR",
            "stage": "closed_won",
        },
    }


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_workers_killed_twenty_times_change_no_outcome(tmp_path: Path, pg_url: str) -> None:
    project = order_to_cash(tmp_path / "o2c")
    rng = random.Random(2_000)
    expected_compensated = sum(1 for n in range(INSTANCES) if n % 37 == 0)
    with ExitStack() as stack:
        sims = {n: stack.enter_context(spawn(n)) for n in TARGETS if n != "warehouse"}
        server = HubProcess(project, command="server", database=pg_url)
        sims["warehouse"] = stack.enter_context(spawn("warehouse", hub_url=server.url))
        sims["warehouse"].fault(dispatch_delay_s=0.05)
        env = {f"CHARTER_{n.upper()}_URL": s.url for n, s in sims.items()}
        env["CHARTER_LEASE_SECONDS"] = "2"
        server.env.update(env)
        stack.enter_context(server)
        workers = [
            HubProcess(project, command="worker", database=pg_url, env=env).start()
            for _ in range(2)
        ]
        stack.callback(lambda: [w.close() for w in workers])
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
            for start in range(0, INSTANCES, BATCH):
                body = orjson.dumps([deal(n) for n in range(start, start + BATCH)])
                response = client.post(
                    "/v1/systems/crm/events",
                    content=body,
                    headers={"content-type": "application/cloudevents-batch+json"},
                )
                assert response.status_code == 202, response.text
            kills, deadline = 0, time.monotonic() + 600
            while time.monotonic() < deadline:
                for worker in workers:
                    if not worker.running:  # stopped by nothing but itself
                        pytest.fail(f"a worker exited on its own:\n{worker.log_tail()}")
                counts = client.get("/v1/processes").json()["instances"]
                ended = counts.get("completed", 0) + counts.get("compensated", 0)
                if ended == INSTANCES and kills >= KILLS:
                    break
                if kills < KILLS:
                    time.sleep(rng.uniform(0.2, 1.0))
                    victim = workers[rng.randrange(2)]
                    victim.kill()
                    kills += 1
                    victim.start()
                else:
                    time.sleep(0.5)
            counts = client.get("/v1/processes").json()["instances"]
        reports = {n: s.report() for n, s in sims.items()}
        applied = {
            n: httpx.get(f"{s.url}/admin/applied", trust_env=False).json() for n, s in sims.items()
        }

    assert kills >= KILLS
    assert counts == {
        "completed": INSTANCES - expected_compensated,
        "compensated": expected_compensated,
    }, counts
    for name, report in reports.items():
        assert report["applied_more_than_once"] == 0, (name, report)
    completed = INSTANCES - expected_compensated
    assert reports["erp"]["orders"] == INSTANCES
    assert reports["erp"]["cancelled"] == expected_compensated
    assert reports["erp"]["invoices"] == completed
    assert reports["payments"]["payments"] == completed
    assert reports["payments"]["declined"] == expected_compensated
    assert reports["warehouse"]["dispatched"] == completed
    assert reports["portal"]["applied"] == completed
    assert reports["analytics"]["applied"] == completed
    # One effect per (instance, step): every applied key is '<instance>:<step>[:compensate]'
    # and none repeats.
    for name, keys in applied.items():
        assert len(keys) == len(set(keys)), name
        assert all(k.count(":") in (1, 2) for k in keys), name
