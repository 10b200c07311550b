"""Quota budgets and breakers in Redis, shared by workers: the real Redis on the machine.

Each test keeps its keys under a prefix of its own and deletes them afterwards.
Two :class:`RedisState` instances stand for two worker processes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import redis

from charter.catalog import load_project
from charter.catalog.model import Breaker, Quota, Tier
from charter.connectors import TargetRequest, TargetResponse
from charter.delivery.breaker import BreakerPolicy, BreakerRecord, BreakerState, Tally
from charter.delivery.guard import Deferred, Resilience, resilience_for
from charter.delivery.overview import breaker_report, quota_report
from charter.delivery.quota import QuotaPolicy
from charter.delivery.redis_state import RedisState
from charter.delivery.shared import DatabaseState
from charter.errors import StoreError, TargetUnavailable
from charter.sim import free_port
from charter.sim.proxy import FaultProxy
from charter.store import SqlStore, upgrade
from charter.store.resilience import BreakerKey, ResilienceStore, UsageRow

REDIS_URL = os.environ.get("CHARTER_TEST_REDIS", "redis://127.0.0.1:6379/0")
RC, OP = Tier.REVENUE_CRITICAL, Tier.OPERATIONAL
ERP = BreakerKey("erp")

T = TypeVar("T")


def _redis_up() -> str | None:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1) as r:
            r.ping()
    except redis.RedisError as exc:
        return f"Redis is not reachable at {REDIS_URL} ({exc}); run scripts/services.sh"
    return None


pytestmark = pytest.mark.skipif(_redis_up() is not None, reason=_redis_up() or "")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"charter-test:{uuid.uuid4().hex[:12]}:"
    yield name
    with redis.Redis.from_url(REDIS_URL) as r:
        keys = list(r.scan_iter(match=f"{name}*"))
        if keys:
            r.delete(*keys)


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


async def redis_time(state: RedisState) -> float:
    seconds, micros = await state.client.time()
    return float(seconds) + micros / 1_000_000


def test_two_workers_share_one_bucket_and_never_get_more_than_rate_times_time_plus_burst(
    prefix: str,
) -> None:
    rate, burst, run_s = 40.0, 2.0, 1.5
    policy = QuotaPolicy(rate, burst)
    granted: dict[str, int] = {}
    spans: list[tuple[float, float]] = []

    async def worker(name: str) -> None:
        # A worker process of its own: its own event loop and connections.
        state = RedisState(REDIS_URL, prefix=prefix)
        started = await redis_time(state)
        total = 0
        try:
            while await redis_time(state) < started + run_s:
                # Two callers at once in this worker, as a busy worker's budget would ask.
                leases = await asyncio.gather(
                    *(state.lease("erp", policy, name, {RC: 3, OP: 3}) for _ in range(2))
                )
                total += sum(n for lease in leases for n in lease.grants.values())
                await asyncio.sleep(min(lease.retry_in for lease in leases) or 0.001)
            spans.append((started, await redis_time(state)))
        finally:
            await state.aclose()
        granted[name] = total

    threads = [
        threading.Thread(target=lambda n=n: asyncio.run(worker(n))) for n in ("w1", "w2", "w3")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 3, "a worker failed"
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    total = sum(granted.values())
    assert total <= rate * elapsed + burst, (total, elapsed)
    # Every worker got its part: the bucket is shared, not held by one of them.
    assert all(n > 0 for n in granted.values()), granted
    assert total >= rate * run_s / 3, (total, elapsed)


def test_a_breaker_opened_through_one_worker_is_seen_open_by_the_other(prefix: str) -> None:
    policy = BreakerPolicy(failures=3, open_for=30)

    async def scenario() -> None:
        first = RedisState(REDIS_URL, prefix=prefix)
        second = RedisState(REDIS_URL, prefix=prefix)
        try:
            closed = await second.observe(ERP, policy, Tally(), "w2")
            assert closed.state is BreakerState.CLOSED
            opened = await first.observe(ERP, policy, Tally(0, 3, 3, "erp answered 503"), "w1")
            assert opened.state is BreakerState.OPEN
            seen = await second.observe(ERP, policy, Tally(1, 0, 0), "w2")
            assert seen.state is BreakerState.OPEN
            assert seen.last_error == "erp answered 503"
            record, admission = await second.admit(ERP, policy, "w2")
            assert not admission.allowed
            assert admission.retry_at == pytest.approx(record.since + 30)
        finally:
            await first.aclose()
            await second.aclose()

    run(scenario)


def test_exactly_one_probe_per_half_open_interval_across_workers(prefix: str) -> None:
    policy = BreakerPolicy(failures=2, open_for=0.3, probe_timeout=30)

    async def scenario() -> list[list[str]]:
        workers = [RedisState(REDIS_URL, prefix=prefix) for _ in range(3)]
        probes_per_interval = []
        try:
            await workers[0].observe(ERP, policy, Tally(0, 2, 2, "boom"), "w0")
            for _ in range(3):
                await asyncio.sleep(0.35)
                # Every worker asks at once, several times: one of them gets the probe.
                answers = await asyncio.gather(
                    *(
                        w.admit(ERP, policy, f"w{n}")
                        for _ in range(5)
                        for n, w in enumerate(workers)
                    )
                )
                winners = [f"w{i % len(workers)}" for i, (_, a) in enumerate(answers) if a.allowed]
                assert all(a.probe for _, a in answers if a.allowed)
                probes_per_interval.append(winners)
                [owner] = winners
                record = await workers[int(owner[1:])].probe_result(
                    ERP, policy, owner, False, "still down"
                )
                assert record.state is BreakerState.OPEN
            rows = await workers[0].client.lrange(workers[0]._transitions, 0, -1)
            assert [r.count(b'"to_state":"half_open"') for r in rows].count(1) == 3
        finally:
            for w in workers:
                await w.aclose()
        return probes_per_interval

    probes = run(scenario)
    assert [len(p) for p in probes] == [1, 1, 1], probes


def test_a_retry_after_pause_is_seen_by_both_workers(prefix: str) -> None:
    policy = QuotaPolicy(50.0, 5.0)

    async def scenario() -> None:
        first = RedisState(REDIS_URL, prefix=prefix)
        second = RedisState(REDIS_URL, prefix=prefix)
        try:
            lease = await second.lease("erp", policy, "w2", {RC: 1})
            assert lease.grants == {RC: 1}
            until = await redis_time(first) + 2.0
            await first.pause("erp", policy, until)
            for state, name in ((first, "w1"), (second, "w2")):
                lease = await state.lease("erp", policy, name, {RC: 1})
                assert lease.grants == {}
                assert lease.paused_until == pytest.approx(until)
                assert lease.retry_in > 1.5
        finally:
            await first.aclose()
            await second.aclose()

    run(scenario)


@pytest.fixture
def resilience_store(db_url: str) -> Iterator[ResilienceStore]:
    """The hub's database (SQLite, then PostgreSQL), migrated."""
    store = SqlStore.from_url(db_url)
    upgrade(store.engine)
    yield ResilienceStore(store.engine)
    store.close()


def test_the_database_gets_buckets_breakers_use_and_each_transition_once_in_order(
    prefix: str, resilience_store: ResilienceStore, project_dir: Path
) -> None:
    project = load_project(project_dir)
    policy = BreakerPolicy(failures=2, open_for=0.05)
    quota = QuotaPolicy(50.0, 5.0)

    async def scenario() -> None:
        first = RedisState(REDIS_URL, resilience_store, prefix=prefix)
        second = RedisState(REDIS_URL, resilience_store, prefix=prefix)
        try:
            await first.lease("erp", quota, "w1", {RC: 3})
            await second.lease("erp", quota, "w2", {OP: 1})
            await first.observe(ERP, policy, Tally(0, 2, 2, "erp answered 503"), "w1")
            await asyncio.sleep(0.06)
            await second.admit(ERP, policy, "w2")
            await second.probe_result(ERP, policy, "w2", False, "still 503")
            usage = [UsageRow("erp", "deal-to-erp-order", RC.value, 3, 0.5, 0, 0)]
            # Both workers flush: one copies, the other finds the turn taken.
            await asyncio.gather(first.flush(usage), second.flush([]))
            assert [t["to_state"] for t in resilience_store.transitions("erp")] == [
                "open",
                "half_open",
                "open",
            ]
            # A copy cut short after writing, before trimming the list (a crash, say).
            await asyncio.sleep(0.06)
            await first.admit(ERP, policy, "w1")
            await first.probe_result(ERP, policy, "w1", True, None)

            async def crash(trim: int, keep_ms: int) -> None:
                return None

            first._end_turn = crash  # type: ignore[method-assign]
            await first.client.delete(first._turn)
            assert await first.copy()
            assert await first.client.llen(first._transitions) == 2
            # The turn ran out; the other worker copies again and skips what is there.
            await first.client.delete(first._turn)
            assert await second.copy()
            assert await second.client.llen(second._transitions) == 0
        finally:
            await first.aclose()
            await second.aclose()

    run(scenario)
    transitions = resilience_store.transitions("erp")
    assert [(t["from_state"], t["to_state"]) for t in reversed(transitions)] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert [t["worker"] for t in reversed(transitions)] == ["w1", "w2", "w2", "w1", "w1"]
    ids = [t["id"] for t in reversed(transitions)]
    assert ids == sorted(ids)
    [breaker] = [b for b in breaker_report(project, resilience_store) if b["system"] == "erp"]
    assert breaker["state"] == "closed"
    [budget] = quota_report(project, resilience_store, "erp")
    assert budget["used_today"] == 4
    assert budget["workers"] == 2
    assert [(f["flow"], f["granted"]) for f in budget["flows"]] == [("deal-to-erp-order", 3)]


def test_a_pause_and_an_open_breaker_in_the_database_are_taken_up_by_an_empty_redis(
    prefix: str, tmp_path: Path, project_dir: Path
) -> None:
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'charter.db'}")
    upgrade(store.engine)
    record = ResilienceStore(store.engine)
    until = time.time() + 60
    record.save_snapshot(
        {"erp": {"tokens": 1.0, "updated_at": time.time(), "paused_until": until}},
        {ERP: BreakerRecord(BreakerState.OPEN, since=time.time()).to_json()},
        {},
        [],
    )
    state = RedisState.connect(REDIS_URL, record, prefix=prefix)

    async def scenario() -> None:
        try:
            lease = await state.lease("erp", QuotaPolicy(50.0, 1.0), "w1", {RC: 1})
            assert (lease.grants, lease.paused_until) == ({}, pytest.approx(until))
            found, admission = await state.admit(ERP, BreakerPolicy(open_for=30), "w1")
            assert (found.state, admission.allowed) == (BreakerState.OPEN, False)
        finally:
            await state.aclose()

    run(scenario)
    store.close()


def test_a_bad_or_unreachable_redis_stops_the_start_with_one_line_naming_url_and_fix(
    project_dir: Path, tmp_path: Path
) -> None:
    project = load_project(project_dir)
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'charter.db'}")
    resilience = ResilienceStore(store.engine)
    closed = free_port()
    cases = {
        f"redis://:s3cret@127.0.0.1:{closed}/0": f"redis://:***@127.0.0.1:{closed}/0",
        "http://127.0.0.1:6379": "'http://127.0.0.1:6379' is not a Redis URL",
        "redis://127.0.0.1:notaport/0": "'redis://127.0.0.1:notaport/0' cannot be read",
    }
    for url, shown in cases.items():
        with pytest.raises(StoreError) as failed:
            resilience_for(project, resilience, "w1", shared_rows=False, redis_url=url)
        message = str(failed.value)
        assert shown in message, message
        assert "CHARTER_REDIS_URL" in message and "\n" not in message
        assert "s3cret" not in message
    with pytest.raises(StoreError) as down:
        resilience_for(
            project, resilience, "w1", shared_rows=False, redis_url=f"redis://127.0.0.1:{closed}/0"
        )
    assert "start Redis there" in str(down.value)
    store.close()


class Target:
    """A target that answers 201 or, while ``down``, fails like an unreachable system."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def call(self, request: TargetRequest) -> TargetResponse:
        self.calls += 1
        if self.down:
            raise TargetUnavailable("erp answered 503", status_code=503)
        return TargetResponse(201, b"{}")

    async def aclose(self) -> None:
        pass


def request() -> TargetRequest:
    return TargetRequest("POST", "/orders", b"{}", "k", tier=RC, flow="deal-to-erp-order")


def test_when_redis_goes_away_callers_wait_without_an_attempt_and_carry_on_after(
    prefix: str, project_dir: Path
) -> None:
    project = load_project(project_dir)
    project.systems["erp"] = project.systems["erp"].model_copy(
        update={"breaker": Breaker(failures=2, open_for=30), "quota": Quota(rate_per_s=100)}
    )
    upstream = urlsplit(REDIS_URL)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with FaultProxy(
            "127.0.0.1", 0, upstream.hostname or "", upstream.port or 6379
        ) as proxy:
            state = RedisState(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
            target = Target()
            erp = Resilience(project, state, "w1").guard({"erp": target})["erp"]
            try:
                assert (await erp.call(request())).status_code == 201
                proxy.change(reset=True)
                await asyncio.sleep(0.3)  # past the breaker's sync interval
                with pytest.raises(Deferred) as held:
                    await erp.call(request())
                seen["kind"] = held.value.kind
                # A 429's pause that cannot be shared is dropped, not raised.
                await state.pause("erp", QuotaPolicy(100.0, 2.0), time.time() + 5)
                # An open breaker seen last keeps callers waiting without Redis.
                now = time.time()
                state.records[ERP] = BreakerRecord(BreakerState.OPEN, since=now, opened_at=now)
                seen["admit"] = await state.admit(ERP, BreakerPolicy(open_for=30), "w1")
                seen["calls_while_away"] = target.calls
                await state.flush([])  # does not raise
                proxy.clear()
                state.records.pop(ERP)
                await asyncio.sleep(0.3)
                assert (await erp.call(request())).status_code == 201
                seen["calls"] = target.calls
            finally:
                await state.aclose()
        return seen

    seen = run(scenario)
    assert seen["kind"] == "quota"
    record, admission = seen["admit"]
    assert (record.state, admission.allowed) == (BreakerState.OPEN, False)
    assert seen["calls_while_away"] == 1
    assert seen["calls"] == 2


def test_a_redis_url_puts_the_state_in_redis_under_the_project_s_prefix(
    project_dir: Path, tmp_path: Path
) -> None:
    project = load_project(project_dir)
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'charter.db'}")
    upgrade(store.engine)
    resilience = ResilienceStore(store.engine)
    chosen = resilience_for(project, resilience, "w1", shared_rows=True, redis_url=REDIS_URL)
    assert isinstance(chosen.shared, RedisState)
    assert chosen.shared.prefix == f"charter:{project.name}:"
    asyncio.run(chosen.shared.aclose())
    mine = resilience_for(
        project, resilience, "w1", shared_rows=False, redis_url=REDIS_URL, redis_prefix="hub-b:"
    )
    assert isinstance(mine.shared, RedisState) and mine.shared.prefix == "hub-b:"
    asyncio.run(mine.shared.aclose())
    # Without a URL, nothing changes.
    assert isinstance(
        resilience_for(project, resilience, "w1", shared_rows=True).shared, DatabaseState
    )
    store.close()
