"""Circuit breakers: opening, the one half-open probe, closing, on a fake clock; and the
breaker as middleware in front of a connector, sharing its state between two workers."""

from __future__ import annotations

import asyncio
import time

import pytest

from charter.catalog import load_project
from charter.catalog.model import Breaker, Quota, Tier
from charter.connectors import TargetRequest, TargetResponse
from charter.delivery.breaker import (
    BreakerPolicy,
    BreakerRecord,
    BreakerState,
    Tally,
    admit,
    observe,
    probe_result,
)
from charter.delivery.guard import SYNC_S, Deferred, Resilience
from charter.delivery.shared import LocalState
from charter.errors import TargetRejected, TargetUnavailable
from charter.store.resilience import BreakerKey

T0 = 1_700_000_000.0
POLICY = BreakerPolicy(failures=3, error_rate=0.5, min_calls=10, window=10, open_for=5)
KEY = "erp"


def opened(at: float = T0) -> BreakerRecord:
    record, _ = observe(BreakerRecord(), POLICY, KEY, Tally(0, 3, 3, "boom"), "w1", at)
    assert record.state is BreakerState.OPEN
    return record


def test_consecutive_failures_open_it_and_the_transition_says_why() -> None:
    record, transitions = observe(BreakerRecord(), POLICY, KEY, Tally(0, 2, 2, "500"), "w1", T0)
    assert (record.state, transitions) == (BreakerState.CLOSED, [])
    record, transitions = observe(record, POLICY, KEY, Tally(0, 1, 1, "500"), "w2", T0 + 1)
    assert record.state is BreakerState.OPEN
    [t] = transitions
    assert (t.from_state, t.to_state, t.worker) == (BreakerState.CLOSED, BreakerState.OPEN, "w2")
    assert "3 consecutive failures" in t.reason and "500" in t.reason


def test_a_success_at_one_worker_breaks_the_run_of_failures() -> None:
    record, _ = observe(BreakerRecord(), POLICY, KEY, Tally(0, 2, 2), "w1", T0)
    record, _ = observe(record, POLICY, KEY, Tally(1, 1, 1), "w2", T0 + 1)
    assert (record.state, record.consecutive) == (BreakerState.CLOSED, 1)


def test_the_error_rate_opens_it_only_over_enough_calls_in_the_window() -> None:
    # 4 of 8 failed, never 3 in a row: not enough calls yet.
    record, _ = observe(BreakerRecord(), POLICY, KEY, Tally(4, 4, 1), "w1", T0)
    assert record.state is BreakerState.CLOSED
    # A new window forgets the old calls.
    record, _ = observe(record, POLICY, KEY, Tally(1, 1, 0), "w1", T0 + 11)
    assert (record.calls, record.state) == (2, BreakerState.CLOSED)
    record, transitions = observe(record, POLICY, KEY, Tally(4, 4, 0), "w1", T0 + 12)
    assert record.state is BreakerState.OPEN
    assert "5 of 10 calls failed" in transitions[0].reason


def test_while_open_calls_wait_until_the_open_interval_has_passed() -> None:
    record = opened()
    _, admission, transitions = admit(record, POLICY, KEY, "w1", T0 + 4.9)
    assert (admission.allowed, admission.retry_at, transitions) == (False, T0 + 5, [])


def test_exactly_one_probe_per_half_open_interval_across_workers() -> None:
    record = opened()
    record, first, transitions = admit(record, POLICY, KEY, "w1", T0 + 5)
    assert (first.allowed, first.probe) == (True, True)
    assert [t.to_state for t in transitions] == [BreakerState.HALF_OPEN]
    for worker in ("w1", "w2"):
        record, other, _ = admit(record, POLICY, KEY, worker, T0 + 5.1)
        assert not other.allowed
    # The probe fails: open again for a whole interval, then one more probe.
    record, transitions = probe_result(record, POLICY, KEY, "w1", False, "503", T0 + 6)
    assert record.state is BreakerState.OPEN and "503" in transitions[0].reason
    _, early, _ = admit(record, POLICY, KEY, "w2", T0 + 10.9)
    assert (early.allowed, early.retry_at) == (False, T0 + 11)
    record, second, _ = admit(record, POLICY, KEY, "w2", T0 + 11)
    assert second.probe
    record, transitions = probe_result(record, POLICY, KEY, "w2", True, None, T0 + 11.1)
    assert record.state is BreakerState.CLOSED
    assert [t.to_state for t in transitions] == [BreakerState.CLOSED]


def test_a_probe_whose_worker_never_reports_is_taken_over_after_its_timeout() -> None:
    policy = BreakerPolicy(failures=3, open_for=5, probe_timeout=2)
    record, _ = observe(BreakerRecord(), policy, KEY, Tally(0, 3, 3), "w1", T0)
    record, _, _ = admit(record, policy, KEY, "w1", T0 + 5)
    _, waiting, _ = admit(record, policy, KEY, "w2", T0 + 6.9)
    assert not waiting.allowed
    record, takeover, _ = admit(record, policy, KEY, "w2", T0 + 7.1)
    assert takeover.probe and record.probe_owner == "w2"
    # The first worker's late verdict changes nothing.
    late, transitions = probe_result(record, policy, KEY, "w1", True, None, T0 + 7.2)
    assert (late.state, transitions) == (BreakerState.HALF_OPEN, [])


def test_outcomes_of_calls_made_before_it_opened_do_not_close_it() -> None:
    record, transitions = observe(opened(), POLICY, KEY, Tally(50, 0, 0), "w2", T0 + 1)
    assert (record.state, transitions) == (BreakerState.OPEN, [])


def test_the_record_survives_a_round_trip_through_json() -> None:
    record = opened()
    assert BreakerRecord.from_json(record.to_json()) == record


def test_breaker_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="open_for must be above 0"):
        Breaker.model_validate({"open_for": "0s"})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        Breaker.model_validate({"error_rate": 2})


# As middleware --------------------------------------------------------------------------


class Flaky:
    """A connector that fails with 503 while ``down`` and counts the calls it gets."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def call(self, request: TargetRequest) -> TargetResponse:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise TargetUnavailable("erp answered 503", status_code=503)
        return TargetResponse(201, b"{}")

    async def aclose(self) -> None:
        pass


def request(tier: Tier = Tier.REVENUE_CRITICAL) -> TargetRequest:
    return TargetRequest("POST", "/orders", b"{}", "k", tier=tier, flow="deal-to-erp-order")


def test_the_breaker_holds_calls_back_without_calling_and_one_probe_closes_it(
    project_dir: object,
) -> None:
    asyncio.run(_scenario(project_dir))


async def _scenario(project_dir: object) -> None:
    project = load_project(project_dir)  # type: ignore[arg-type]
    erp = project.systems["erp"]
    fast = erp.model_copy(update={"breaker": Breaker(failures=3, open_for=0.3), "quota": None})
    project.systems["erp"] = fast
    shared = LocalState()
    target = Flaky()
    # Two workers share one state, as two worker processes share the database rows.
    first = Resilience(project, shared, "w1").guard({"erp": target})["erp"]
    second = Resilience(project, shared, "w2").guard({"erp": target})["erp"]
    for _ in range(3):
        with pytest.raises(TargetUnavailable):
            await first.call(request())
    await asyncio.sleep(0.01)  # the sync the third failure started
    assert shared.records[next(iter(shared.records))].state is BreakerState.OPEN
    with pytest.raises(Deferred) as held:
        await first.call(request(Tier.INFORMATIONAL))
    assert target.calls == 3
    # Lower tiers come back later than higher ones.
    assert held.value.until > shared.records[next(iter(shared.records))].since + 0.3
    await asyncio.sleep(0.35)
    # The other worker learns of the open breaker on its first call after the interval:
    # it takes the probe; everyone else waits for its verdict.
    with pytest.raises(TargetUnavailable):
        await second.call(request())
    assert target.calls == 4
    with pytest.raises(Deferred):
        await first.call(request())
    assert target.calls == 4
    target.down = False
    await asyncio.sleep(0.35)
    assert (await first.call(request())).status_code == 201
    assert (await second.call(request())).status_code == 201
    transitions = [t["to_state"] for rows in shared._transitions.values() for t in rows]
    assert transitions == ["open", "half_open", "open", "half_open", "closed"]


def test_a_rejection_is_not_a_failure_of_the_system(project_dir: object) -> None:
    async def scenario() -> None:
        project = load_project(project_dir)  # type: ignore[arg-type]
        project.systems["erp"] = project.systems["erp"].model_copy(
            update={"breaker": Breaker(failures=2), "quota": None}
        )

        class Rejecting(Flaky):
            async def call(self, request: TargetRequest) -> TargetResponse:
                self.calls += 1
                raise TargetRejected("erp answered 422", status_code=422)

        shared = LocalState()
        target = Rejecting()
        guarded = Resilience(project, shared, "w1").guard({"erp": target})["erp"]
        for _ in range(5):
            with pytest.raises(TargetRejected):
                await guarded.call(request())
        await asyncio.sleep(0.01)
        assert target.calls == 5
        assert all(r.state is BreakerState.CLOSED for r in shared.records.values())

    asyncio.run(scenario())


def test_per_endpoint_breakers_open_for_the_failing_endpoint_only(project_dir: object) -> None:
    async def scenario() -> None:
        project = load_project(project_dir)  # type: ignore[arg-type]
        project.systems["erp"] = project.systems["erp"].model_copy(
            update={"breaker": Breaker(failures=2, open_for=60, per_endpoint=True), "quota": None}
        )

        class OneEndpointDown(Flaky):
            async def call(self, request: TargetRequest) -> TargetResponse:
                self.calls += 1
                if request.path == "/orders":
                    raise TargetUnavailable("erp answered 503", status_code=503)
                return TargetResponse(201, b"{}")

        shared = LocalState()
        target = OneEndpointDown()
        guarded = Resilience(project, shared, "w1").guard({"erp": target})["erp"]
        invoices = TargetRequest("POST", "/invoices", b"{}", "i", tier=Tier.OPERATIONAL, flow="f")
        for _ in range(2):
            with pytest.raises(TargetUnavailable):
                await guarded.call(request())
        await asyncio.sleep(0.01)  # the sync the second failure started
        states = {str(key): record.state for key, record in shared.records.items()}
        assert states == {"erp POST /orders": BreakerState.OPEN}
        with pytest.raises(Deferred):
            await guarded.call(request())
        # The other endpoint of the same system keeps flowing.
        assert (await guarded.call(invoices)).status_code == 201
        assert target.calls == 3

    asyncio.run(scenario())


def test_a_call_admitted_before_it_opened_does_not_go_out_after_waiting_for_quota(
    project_dir: object,
) -> None:
    async def scenario() -> None:
        project = load_project(project_dir)  # type: ignore[arg-type]
        project.systems["erp"] = project.systems["erp"].model_copy(
            update={
                "breaker": Breaker(failures=3, open_for=60),
                "quota": Quota(rate_per_s=2, burst=1),
            }
        )
        shared = LocalState()
        target = Flaky()
        target.down = False
        guarded = Resilience(project, shared, "w1").guard({"erp": target})["erp"]
        assert (await guarded.call(request())).status_code == 201
        # The burst is spent: the next call is admitted by the closed breaker, then waits
        # about half a second for a token. Another worker opens the breaker meanwhile.
        waiting = asyncio.create_task(guarded.call(request()))
        await asyncio.sleep(0.05)
        shared.records[BreakerKey("erp")] = opened(time.time())
        with pytest.raises(Deferred):
            await waiting
        assert target.calls == 1

    asyncio.run(scenario())


def test_calls_made_while_a_sync_is_under_way_wait_for_its_answer(project_dir: object) -> None:
    class SlowState(LocalState):
        """Shared state whose read-back waits until ``answer`` is set (a loaded database)."""

        def __init__(self) -> None:
            super().__init__()
            self.answer = asyncio.Event()

        async def observe(
            self, key: BreakerKey, policy: BreakerPolicy, tally: Tally, worker: str
        ) -> BreakerRecord:
            await self.answer.wait()
            return await super().observe(key, policy, tally, worker)

    async def scenario() -> None:
        project = load_project(project_dir)  # type: ignore[arg-type]
        project.systems["erp"] = project.systems["erp"].model_copy(
            update={"breaker": Breaker(failures=3, open_for=60), "quota": None}
        )
        shared = SlowState()
        shared.answer.set()
        target = Flaky()
        target.down = False
        guarded = Resilience(project, shared, "w1").guard({"erp": target})["erp"]
        assert (await guarded.call(request())).status_code == 201
        # Another worker opens the breaker; this worker's view of it goes stale.
        shared.records[BreakerKey("erp")] = opened(time.time())
        await asyncio.sleep(SYNC_S + 0.05)
        shared.answer.clear()
        first = asyncio.create_task(guarded.call(request()))  # starts a sync that waits
        await asyncio.sleep(0.05)
        second = asyncio.create_task(guarded.call(request()))  # arrives during it
        await asyncio.sleep(0.05)
        assert target.calls == 1
        shared.answer.set()
        for call in (first, second):
            with pytest.raises(Deferred):
                await call
        assert target.calls == 1

    asyncio.run(scenario())
