"""A durable timer outlives every Charter process: stop them all mid-sleep, start them again.

The instance sleeps 5 s, then creates an ERP order. Every Charter process of the
deployment (``charter up`` on SQLite; ``charter server`` and ``charter worker``
on PostgreSQL) is stopped right after the instance starts, with SIGTERM or with
SIGKILL as in a crash, and started again half a second later. The order must be
created once, no sooner than 5 s after the start and at most 2 s after the timer
falls due (well under 10 s after the start), or, should a slow machine bring the
processes back only after that, at most 2 s after they are back.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from charter.processes import HubProcess
from charter.sim import SimProcess
from tests.acceptance.conftest import (
    applied_keys,
    await_instance,
    charter_processes,
    erp_order,
    history,
    new_key,
    process_project,
    start_processes,
    status_is,
)

SLEEP_S = 5.0
PROMPT_S = 2.0
DOWN_S = 0.5


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    """None for ``charter up`` on SQLite; a fresh PostgreSQL database for server and worker."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


def halt(processes: list[HubProcess], stop: str) -> None:
    """Stop every process at once: SIGTERM (each must exit 0) or SIGKILL."""
    with ThreadPoolExecutor(len(processes)) as pool:
        if stop == "SIGKILL":
            list(pool.map(HubProcess.kill, processes))
            return
        codes = list(pool.map(HubProcess.stop, processes))
    assert codes == [0] * len(processes), [p.log_tail() for p in processes]


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_5_second_sleep_survives_stopping_and_restarting_every_charter_process(
    tmp_path: Path, erp: SimProcess, database: str | None, stop: str
) -> None:
    project = process_project(tmp_path / "project")
    key = new_key()
    with ExitStack() as stack:
        first = charter_processes(project, erp, database)
        api = start_processes(stack, first, database)
        response = api.client.post(
            "/v1/processes/nap-then-order/instances",
            json={"business_key": key, "input": {"id": key, "total": 7.0}},
        )
        assert response.status_code == 201, response.text
        ident = response.json()["id"]
        halt(first, stop)
        stopped = time.time()
        time.sleep(DOWN_S)

        second = charter_processes(project, erp, database)
        api = start_processes(stack, second, database)
        back = time.time()
        found = await_instance(api.client, ident, status_is("completed"), timeout=15)
        for process in first + second:
            assert "Traceback" not in process.log_tail(200), process.log_tail(200)

    [started] = history(found, "started")
    [completed] = history(found, "completed")
    assert stopped - started["at"] < SLEEP_S, "every process was down before the timer was due"
    due = started["at"] + SLEEP_S
    assert completed["at"] >= due
    # Done when due, or as soon as the processes are back if a slow machine restarts them later.
    assert completed["at"] - max(due, back) < PROMPT_S
    nap = found["steps"]["nap"]
    assert nap["status"] == "completed"
    assert found["context"]["steps"]["nap"] == {"slept_until": started["at"] + SLEEP_S}
    assert nap["ended"] >= started["at"] + SLEEP_S
    assert [k for k in applied_keys(erp) if k.startswith(ident)] == [f"{ident}:create_order"]
    order = found["context"]["steps"]["create_order"]["id"]
    assert erp_order(erp, order)["external_ref"] == key
