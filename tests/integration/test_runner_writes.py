"""A runner with group writes in flight never writes an instance twice at once: a result
that arrives while its instance is being written waits for that write, and is applied to
the state the write committed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from charter.engine.registry import TaskHandler
from charter.engine.runner import ProcessRunner, RunnerSettings, TaskContext
from charter.errors import DatabaseUnavailable, StoreError, WriteRolledBack
from charter.runtime import Hub
from charter.store.processes import InstanceWrite, SqlProcessStore, WriteResult

TWO_BRANCHES = """\
kind: Process
name: two-branches
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: both
    parallel:
      branches:
        - - id: fast
            task: {handler: fast}
        - - id: slow
            task: {handler: slow}
"""


ONE_TASK = """\
kind: Process
name: one-task
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: only
    task: {handler: count}
"""


TWO_TASKS = """\
kind: Process
name: two-tasks
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
steps:
  - id: one
    task: {handler: one}
  - id: two
    task: {handler: two}
"""


class GatedStore:
    """The store, with the runner's first group write held until ``release`` and every
    write's instances and time span recorded."""

    def __init__(self, store: SqlProcessStore) -> None:
        self._store = store
        self.gate = threading.Event()
        self.held_first = threading.Event()
        self.spans: list[tuple[set[str], float, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def write(
        self, worker: str | None, writes: list[InstanceWrite], lease_seconds: float = 30.0
    ) -> list[WriteResult]:
        began = time.monotonic()
        if not self.held_first.is_set():
            self.held_first.set()
            assert self.gate.wait(10), "the test never released the first write"
        result = self._store.write(worker, writes, lease_seconds)
        self.spans.append(({w.instance.id for w in writes}, began, time.monotonic()))
        return result


@pytest.fixture
def hub(project_dir: Path, tmp_path: Path) -> Any:
    processes = project_dir / "processes"
    processes.mkdir(exist_ok=True)
    (processes / "two-branches.yaml").write_text(TWO_BRANCHES)
    (processes / "one-task.yaml").write_text(ONE_TASK)
    (processes / "two-tasks.yaml").write_text(TWO_TASKS)
    hub = Hub.open(project_dir, database=f"sqlite:///{tmp_path / 'charter.db'}")
    yield hub
    hub.close()


@asynccontextmanager
async def running(
    hub: Hub,
    store: Any,
    tasks: dict[str, TaskHandler],
    settings: RunnerSettings,
    gate: threading.Event | None = None,
) -> AsyncIterator[None]:
    """A runner of ``tasks`` writing through ``store``, handed the starts of ``hub``; on
    leaving, a held write is let through (``gate``) and the runner stopped."""
    service = hub.processes
    runner = ProcessRunner(
        store, service.definitions, {}, tasks, "worker-1", settings, service.endings.ended
    )
    service.hand_starts_to(runner.name, runner.adopt, settings.lease_seconds)
    task = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        if gate is not None:
            gate.set()
        runner.stop()
        await task


def test_a_result_for_an_instance_being_written_waits_for_that_write(hub: Hub) -> None:
    service = hub.processes
    store = GatedStore(service.store)

    async def scenario() -> dict[str, Any]:
        slow_go = asyncio.Event()

        async def fast(data: Any, context: TaskContext) -> dict[str, Any]:
            return {"fast": True}

        async def slow(data: Any, context: TaskContext) -> dict[str, Any]:
            await slow_go.wait()
            return {"slow": True}

        # Two writes in flight even on SQLite, so that a second could start.
        settings = RunnerSettings(idle_poll=0.02, writes_in_flight=2)
        async with running(hub, store, {"fast": fast, "slow": slow}, settings, store.gate):
            ident, _ = await service.start_async("two-branches", "B-1", {})
            # The fast branch's result is being written (held); now the slow one finishes.
            assert await asyncio.to_thread(store.held_first.wait, 10)
            slow_go.set()
            await asyncio.sleep(0.3)  # time enough for a second write, were one made
            assert store.spans == [], "a write went ahead of the held one"
            store.gate.set()
            return await asyncio.wait_for(service.get_when_ended(ident, 10, recheck=0.1), 15)

    shown = asyncio.run(scenario())
    assert shown["status"] == "completed"
    assert shown["steps"]["fast"]["status"] == "completed"
    assert shown["steps"]["slow"]["status"] == "completed"
    assert shown["context"]["steps"]["fast"] == {"fast": True}
    assert shown["context"]["steps"]["slow"] == {"slow": True}
    # The slow result went into a write of its own, after the held one committed.
    first, second = store.spans[0], store.spans[1]
    assert first[0] == second[0]
    assert second[1] >= first[2]


class RollingBackStore:
    """The store, with the runner's first group write refused with ``error``: rolled back,
    as PostgreSQL rolls back one side of a deadlock (after the store's own attempts), or
    lost with the connection after it committed (``committed``)."""

    def __init__(
        self,
        store: SqlProcessStore,
        error: StoreError | None = None,
        committed: bool = False,
    ) -> None:
        self._store = store
        self.error = error or WriteRolledBack("deadlock detected", fix="run it again")
        self.committed = committed
        self.rolled_back: list[str] = []
        # Reclaims refused while the database is away, before the one that goes through.
        self.reclaims_refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def reclaim(self, worker: str, lease_seconds: float, held: Any) -> Any:
        if not self.reclaims_refused and isinstance(self.error, DatabaseUnavailable):
            self.reclaims_refused += 1
            raise DatabaseUnavailable("the database is still starting up", fix="wait")
        return self._store.reclaim(worker, lease_seconds, held)

    def write(
        self, worker: str | None, writes: list[InstanceWrite], lease_seconds: float = 30.0
    ) -> list[WriteResult]:
        if not self.rolled_back:
            self.rolled_back = [w.instance.id for w in writes]
            if self.committed:
                self._store.write(worker, writes, lease_seconds)
            raise self.error
        return self._store.write(worker, writes, lease_seconds)


def test_a_write_rolled_back_lets_go_of_its_instances_and_the_runner_goes_on(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    service = hub.processes
    store = RollingBackStore(service.store)
    calls: list[str] = []

    async def scenario() -> dict[str, Any]:
        async def count(data: Any, context: TaskContext) -> dict[str, Any]:
            calls.append(context.idempotency_key)
            return {"n": len(calls)}

        settings = RunnerSettings(idle_poll=0.02, lease_seconds=0.3)
        async with running(hub, store, {"count": count}, settings):
            ident, _ = await service.start_async("one-task", "R-1", {})
            return await asyncio.wait_for(service.get_when_ended(ident, 10, recheck=0.1), 15)

    shown = asyncio.run(scenario())
    assert store.rolled_back, "no write was rolled back"
    assert shown["status"] == "completed"
    # The task ran again once the instance's lease ran out, under the same key.
    assert len(calls) == 2 and calls[0] == calls[1]
    assert shown["context"]["steps"]["only"] == {"n": 2}
    assert "could not be committed" in caplog.text


def two_tasks_under_a_full_lease(
    hub: Hub, store: Any, start: str
) -> tuple[dict[str, Any], float, list[str]]:
    """Run an instance of ``two-tasks`` through ``store`` with the default lease (30 s),
    started handed over to the runner (``start="handed"``) or left for it to claim
    (``"claimed"``): the instance as it ended, how long it took, and the keys its tasks
    ran under, in order."""
    service = hub.processes
    calls: list[str] = []

    async def scenario() -> tuple[dict[str, Any], float]:
        async def task(data: Any, context: TaskContext) -> dict[str, Any]:
            calls.append(context.idempotency_key)
            return {}

        settings = RunnerSettings(idle_poll=0.02)
        assert settings.lease_seconds >= 30
        async with running(hub, store, {"one": task, "two": task}, settings):
            began = time.monotonic()
            if start == "handed":
                ident, _ = await service.start_async("two-tasks", "G-1", {})
            else:
                ident, _ = await asyncio.to_thread(service.start, "two-tasks", "G-1", {})
            shown = await asyncio.wait_for(service.get_when_ended(ident, 10, recheck=0.1), 15)
            return shown, time.monotonic() - began

    shown, took = asyncio.run(scenario())
    return shown, took, calls


@pytest.mark.parametrize(
    ("error", "committed"),
    [
        (WriteRolledBack("deadlock detected", fix="run it again"), False),
        (DatabaseUnavailable("server closed the connection unexpectedly", fix="wait"), True),
        (DatabaseUnavailable("server closed the connection unexpectedly", fix="wait"), False),
    ],
    ids=["rolled-back", "lost-after-commit", "lost-before-commit"],
)
def test_an_instance_let_go_of_is_taken_up_again_without_waiting_out_its_lease(
    hub: Hub, error: StoreError, committed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner lets go of the instances of a write that did not, or may not have,
    committed; they are still leased to it in the store. It takes them up again from what is
    stored, so the instance goes on at once rather than when its 30-second lease runs out."""
    store = RollingBackStore(hub.processes.store, error, committed)
    caplog.set_level("INFO", logger="charter.engine")
    shown, took, calls = two_tasks_under_a_full_lease(hub, store, "handed")
    # The refused write was step one's result, with step two started.
    assert store.rolled_back == [shown["id"]]
    assert shown["status"] == "completed"
    assert took < 5, f"the instance waited {took:.1f} s for its lease"
    assert "took up 1 instances leased to this worker" in caplog.text
    if isinstance(error, DatabaseUnavailable):
        # The first reclaim found the database still away; it was tried again.
        assert store.reclaims_refused == 1
    one, two = (f"{shown['id']}:{step}" for step in ("one", "two"))
    # Stored, step one's result stands and the instance goes on with step two; not stored,
    # step one runs again under the same key.
    assert calls == ([one, two] if committed else [one, one, two])


class LostClaimStore:
    """The store, with the runner's first claim that leases anything committed but its
    answer lost with the connection."""

    def __init__(self, store: SqlProcessStore) -> None:
        self._store = store
        self.lost: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claim(self, worker: str, limit: int, lease_seconds: float, busy: Any = ()) -> Any:
        claimed = self._store.claim(worker, limit, lease_seconds, busy)
        if claimed.instances and not self.lost:
            self.lost = [r.id for r in claimed.instances]
            raise DatabaseUnavailable("server closed the connection unexpectedly", fix="wait")
        return claimed


def test_what_a_lost_claim_leased_is_taken_up_without_waiting_out_its_lease(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    store = LostClaimStore(hub.processes.store)
    caplog.set_level("INFO", logger="charter.engine")
    # Started without being handed to the runner: it has to claim it.
    shown, took, calls = two_tasks_under_a_full_lease(hub, store, "claimed")
    assert store.lost == [shown["id"]]
    assert shown["status"] == "completed"
    assert took < 5, f"the instance waited {took:.1f} s for its lease"
    assert "took up 1 instances leased to this worker" in caplog.text
    assert calls == [f"{shown['id']}:one", f"{shown['id']}:two"]


class LapsingStore(GatedStore):
    """A gated store whose leases are never renewed: they run out while a write is held."""

    def extend_leases(self, worker: str, ids: list[str], lease_seconds: float) -> None:
        return None


def test_a_lease_that_runs_out_during_its_own_write_is_not_taken_back_from_before_it(
    hub: Hub,
) -> None:
    """The write of step one's result is held past the instance's lease. Claims meanwhile
    must not take the instance back as it was before that write: the worker would run step
    one again and, once the write commits, go on from the older state."""
    service = hub.processes
    store = LapsingStore(service.store)
    ran: list[str] = []

    async def scenario() -> dict[str, Any]:
        async def one(data: Any, context: TaskContext) -> dict[str, Any]:
            ran.append("one")
            return {}

        async def two(data: Any, context: TaskContext) -> dict[str, Any]:
            ran.append("two")
            return {}

        # Two writes in flight even on SQLite: the runner goes on claiming during one.
        settings = RunnerSettings(idle_poll=0.02, lease_seconds=0.1, writes_in_flight=2)
        async with running(hub, store, {"one": one, "two": two}, settings, store.gate):
            ident, _ = await service.start_async("two-tasks", "L-1", {})
            assert await asyncio.to_thread(store.held_first.wait, 10)
            await asyncio.sleep(0.5)  # the lease runs out; the runner claims, again and again
            store.gate.set()
            return await asyncio.wait_for(service.get_when_ended(ident, 10, recheck=0.1), 15)

    shown = asyncio.run(scenario())
    assert shown["status"] == "completed"
    assert ran == ["one", "two"]
    timeline = service.store.history(shown["id"])
    steps = [e["step"] for e in timeline if e["what"] == "completed" and "step" in e]
    assert steps == ["one", "two"]
