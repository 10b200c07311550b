"""What saves the runner and its waiting requests a trip to the database: requests waiting
for an instance to end hear of it (from the runner of their own process, and on PostgreSQL
from the transaction of another process); the periodic claim first looks whether there is
anything to claim; and pooled PostgreSQL connections are checked before use only once they
have been idle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from charter.engine.persist import instance_id
from charter.engine.runner import ProcessRunner, RunnerSettings
from charter.runtime import Hub
from charter.store import sql_base
from charter.store.notify import listen_payloads
from charter.store.processes import ENDED_CHANNEL
from charter.store.sql_base import create_store_engine

NAP = """\
kind: Process
name: nap
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: nap
    sleep: {for: 300ms}
"""

QUICK = """\
kind: Process
name: quick
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: one
    transform: {one: {const: 1}}
"""

# Longer than any test here runs: a waiter that was never told would time out.
NEVER_RECHECK = 60.0


@pytest.fixture
def project(project_dir: Path) -> Path:
    processes = project_dir / "processes"
    processes.mkdir(exist_ok=True)
    (processes / "nap.yaml").write_text(NAP)
    (processes / "quick.yaml").write_text(QUICK)
    return project_dir


@pytest.fixture
def sqlite_hub(project: Path, tmp_path: Path) -> Iterator[Hub]:
    hub = Hub.open(project, database=f"sqlite:///{tmp_path / 'charter.db'}")
    yield hub
    hub.close()


def test_a_waiting_request_hears_of_the_end_from_the_runner_in_its_process(
    sqlite_hub: Hub,
) -> None:
    service = sqlite_hub.processes
    runner = ProcessRunner(
        service.store,
        service.definitions,
        {},
        {},
        "worker-1",
        RunnerSettings(idle_poll=0.02),
        on_ended=service.endings.ended,
    )
    service.hand_starts_to(runner.name, runner.adopt)

    async def scenario() -> dict[str, object]:
        running = asyncio.create_task(runner.run())
        try:
            ident, created = await service.start_async("nap", "N-1", {})
            assert created
            waiting = asyncio.create_task(service.get_when_ended(ident, 30, recheck=NEVER_RECHECK))
            await asyncio.sleep(0.1)
            assert not waiting.done(), "answered while the instance still sleeps"
            # Told by the runner, long before the wait or a recheck would end it.
            return await asyncio.wait_for(waiting, 10)
        finally:
            runner.stop()
            await running

    shown = asyncio.run(scenario())
    assert shown["status"] == "completed"
    assert service.endings.waiting == 0


def test_a_wait_that_runs_out_answers_the_instance_as_it_is(sqlite_hub: Hub) -> None:
    service = sqlite_hub.processes
    ident, _ = service.start("nap", "N-2", {})  # no runner: it sleeps for ever

    shown = asyncio.run(service.get_when_ended(ident, 0.2, recheck=NEVER_RECHECK))
    assert shown["status"] == "waiting"
    assert service.endings.waiting == 0


@pytest.mark.postgres
def test_an_end_committed_by_another_process_reaches_a_waiting_request(
    project: Path, pg_url: str
) -> None:
    waiting_side = Hub.open(project, database=pg_url)
    writing_side = Hub.open(project, database=pg_url)
    endings = waiting_side.processes.endings
    heard: list[str | None] = []

    def hear(payload: str | None) -> None:
        heard.append(payload)
        endings.heard(payload)

    async def scenario() -> None:
        stop = asyncio.Event()
        listener = asyncio.create_task(listen_payloads(pg_url, ENDED_CHANNEL, hear, stop))
        try:
            while not heard:  # None once listening
                await asyncio.sleep(0.01)
            ident = instance_id("quick", "Q-1")
            with endings.watch(ident) as news:
                # The other hub's start completes the instance in its own transaction.
                await asyncio.to_thread(writing_side.processes.start, "quick", "Q-1", {})
                await asyncio.wait_for(news.wait(), 10)
            assert heard[0] is None and heard[-1] == ident
        finally:
            stop.set()
            await listener

    try:
        asyncio.run(scenario())
    finally:
        waiting_side.close()
        writing_side.close()


def test_the_store_tells_whether_a_claim_would_find_anything(project: Path, db_url: str) -> None:
    hub = Hub.open(project, database=db_url)
    store = hub.processes.store
    try:
        assert not store.anything_to_claim()
        ident, _ = hub.processes.start("nap", "N-3", {})  # due in 300 ms, leased by nobody
        assert not store.anything_to_claim()
        time.sleep(0.4)
        assert store.anything_to_claim()
        [claimed] = store.claim("worker-1", 10, 30.0).instances
        assert claimed.id == ident
        assert not store.anything_to_claim()  # leased
        store.enqueue(ident, "cancel", {"by": "ops", "reason": "test"})
        assert store.anything_to_claim()  # an operation waits in its inbox
        claim = store.claim("worker-1", 10, 30.0)
        assert [item.kind for item in claim.inbox[ident]] == ["cancel"]  # read for its holder
        assert not store.claim("worker-2", 10, 30.0).inbox  # and for nobody else
        assert store.anything_to_claim()  # still there until a transition consumes it
    finally:
        hub.close()


@pytest.mark.postgres
def test_workers_claiming_at_once_never_share_an_instance(project: Path, pg_url: str) -> None:
    hub = Hub.open(project, database=pg_url)
    store = hub.processes.store
    try:
        started = {
            i for i, _ in hub.processes.start_many("nap", [(f"N-{n}", {}) for n in range(300)])
        }
        time.sleep(0.4)  # all due
        barrier = threading.Barrier(3)
        claimed: dict[str, list[str]] = {"w1": [], "w2": [], "w3": []}

        def work(worker: str) -> None:
            barrier.wait(timeout=10)
            while batch := store.claim(worker, 7, 30.0).instances:
                claimed[worker].extend(i.id for i in batch)

        threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        everyone = [i for ids in claimed.values() for i in ids]
        assert sorted(everyone) == sorted(started)  # each once, none twice
        assert sum(1 for ids in claimed.values() if ids) >= 2, claimed
    finally:
        hub.close()


@pytest.mark.postgres
@pytest.mark.parametrize("idle_ping_s", [0.0, 3600.0])
def test_a_pooled_connection_killed_while_idle_is_replaced_once_it_was_idle_long_enough(
    pg_url: str, idle_ping_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_base, "IDLE_PING_S", idle_ping_s)
    engine = create_store_engine(pg_url)
    try:
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        if idle_ping_s == 0.0:
            # Idle long enough to be pinged: the dead connection is replaced unseen.
            with engine.connect() as conn:
                assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != backend
        else:
            # In steady use it is not pinged, so the first statement meets the dead one.
            with pytest.raises(OperationalError), engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
