"""Quota budgets: the token bucket, tier priority, minimum shares, pauses, daily and
concurrency limits, on a fake clock; and one worker's budget serving waiters by tier."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from charter.catalog.model import Quota, Tier
from charter.delivery.quota import (
    BucketState,
    QuotaBudget,
    QuotaPolicy,
    QuotaWait,
    allocate,
    next_utc_midnight,
    pause,
)
from charter.delivery.shared import LocalState

RC, OP, INFO = Tier.REVENUE_CRITICAL, Tier.OPERATIONAL, Tier.INFORMATIONAL
T0 = 1_700_000_000.0


def policy(rate: float = 50, burst: float = 1, **more: object) -> QuotaPolicy:
    return QuotaPolicy(rate, burst, **more)  # type: ignore[arg-type]


class Bucket:
    """A bucket driven like workers drive it: leases at given times, grants recorded."""

    def __init__(self, p: QuotaPolicy) -> None:
        self.policy = p
        self.state = BucketState.full(p, T0)
        self.granted: list[tuple[float, Tier]] = []

    def lease(self, now: float, demand: Mapping[Tier, int], worker: str = "w1") -> dict[Tier, int]:
        self.state, lease = allocate(self.state, self.policy, demand, worker, now)
        self.granted += [(now, tier) for tier, n in lease.grants.items() for _ in range(n)]
        return lease.grants


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_no_one_second_window_gets_more_than_rate_plus_burst_whatever_the_demand() -> None:
    bucket = Bucket(policy(rate=50, burst=1))
    now = T0
    while now < T0 + 5:
        bucket.lease(now, {INFO: 100, RC: 3}, worker="a")
        bucket.lease(now + 0.0005, {OP: 100}, worker="b")
        now += 0.003
    times = [t for t, _ in bucket.granted]
    assert max_in_window(times) <= 51
    # ... and the budget is used (leases every 3 ms lose up to 3 ms per 20 ms token).
    assert len(times) >= 0.85 * 5 * 50


def test_the_default_burst_is_two_percent_of_a_second_and_at_least_one_call() -> None:
    assert QuotaPolicy.of(Quota(rate_per_s=50)).burst == 1
    assert QuotaPolicy.of(Quota(rate_per_s=5000)).burst == 100
    assert QuotaPolicy.of(Quota(rate_per_s=5000, burst=7)).burst == 7


def test_the_revenue_critical_tier_is_served_first_within_a_lease() -> None:
    bucket = Bucket(policy(rate=10, burst=3))
    grants = bucket.lease(T0, {INFO: 10, RC: 2})
    # Shares are empty at the start, so informational (min share 5 %) is "below"
    # its share: it gets one, revenue-critical gets what it asked for.
    assert grants == {RC: 2, INFO: 1}
    assert bucket.lease(T0 + 0.1, {INFO: 10, RC: 1}) == {RC: 1}


def test_a_hungry_higher_tier_at_another_worker_holds_lower_tiers_back() -> None:
    bucket = Bucket(policy(rate=10, burst=1, shares={RC: 0.0, OP: 0.0, INFO: 0.0}))
    assert bucket.lease(T0, {RC: 5}, worker="b") == {RC: 1}
    # b still waits for 4: a's informational calls get nothing while b is hungry ...
    assert bucket.lease(T0 + 0.1, {INFO: 50}, worker="a") == {}
    # ... b gets the token,
    assert bucket.lease(T0 + 0.11, {RC: 4}, worker="b") == {RC: 1}
    # and once b is satisfied (or its hunger is old), a is served again.
    assert bucket.lease(T0 + 0.22, {RC: 1}, worker="b") == {RC: 1}
    assert bucket.lease(T0 + 0.33, {INFO: 50}, worker="a") == {INFO: 1}


def test_a_tier_below_its_minimum_share_is_served_even_against_priority() -> None:
    bucket = Bucket(policy(rate=100, burst=1, shares={RC: 0.0, OP: 0.0, INFO: 0.1}))
    now = T0
    while now < T0 + 10:
        bucket.lease(now, {RC: 100}, worker="b")
        bucket.lease(now + 0.001, {INFO: 100}, worker="a")
        now += 0.01
    late = [tier for t, tier in bucket.granted if t > T0 + 2]
    share = late.count(INFO) / len(late)
    assert 0.08 <= share <= 0.15, share
    assert late.count(RC) / len(late) >= 0.85


def test_without_other_demand_a_lower_tier_gets_the_whole_budget() -> None:
    bucket = Bucket(policy(rate=20, burst=1))
    now = T0
    while now < T0 + 3:
        bucket.lease(now, {INFO: 100})
        now += 0.005
    assert len(bucket.granted) >= 3 * 20 - 1


def test_a_pause_stops_every_grant_until_it_ends_and_nothing_saved_up_bursts_after() -> None:
    p = policy(rate=50, burst=20)
    bucket = Bucket(p)
    bucket.state = pause(bucket.state, p, T0 + 2.0, T0)
    _, lease = allocate(bucket.state, p, {RC: 1}, "w", T0 + 1.0)
    assert lease.grants == {}
    assert lease.paused_until == T0 + 2.0
    assert lease.retry_in == pytest.approx(1.0)
    # After the pause the bucket refills from at most one token, not from the full burst.
    grants = bucket.lease(T0 + 2.0, {RC: 100})
    assert sum(grants.values()) <= 1 + 50 * 2.0  # refilled over the pause only up to burst...
    assert sum(grants.values()) <= 20


def test_the_daily_quota_stops_grants_until_utc_midnight() -> None:
    p = policy(rate=1000, burst=1000, daily=30)
    bucket = Bucket(p)
    assert sum(bucket.lease(T0, {RC: 50}).values()) == 30
    state, lease = allocate(bucket.state, p, {RC: 1}, "w", T0 + 5)
    assert lease.grants == {}
    assert lease.exhausted_until == next_utc_midnight(T0)
    _, lease = allocate(state, p, {RC: 1}, "w", next_utc_midnight(T0) + 1)
    assert lease.grants == {RC: 1}


def test_the_concurrency_cap_is_split_between_the_workers_that_lease() -> None:
    p = policy(rate=1000, burst=1000, concurrency=10)
    state = BucketState.full(p, T0)
    state, lease = allocate(state, p, {RC: 1}, "a", T0)
    assert lease.concurrency == 10
    state, lease = allocate(state, p, {RC: 1}, "b", T0 + 1)
    assert lease.concurrency == 5
    # a worker not seen for a while no longer counts
    _, lease = allocate(state, p, {RC: 1}, "b", T0 + 30)
    assert lease.concurrency == 10


def test_the_state_survives_a_round_trip_through_json() -> None:
    bucket = Bucket(policy())
    bucket.lease(T0, {RC: 3, INFO: 2})
    assert BucketState.from_json(bucket.state.to_json()) == bucket.state


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ({"informational": 1.5}, "from 0 to 1"),
        ({"operational": 0.6, "informational": 0.6}, "add up"),
    ],
)
def test_bad_minimum_shares_are_refused_with_the_value(
    shares: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Quota.model_validate({"rate_per_s": 10, "shares": shares})


# One worker's budget ----------------------------------------------------------------


def test_a_worker_s_waiters_are_served_by_tier_then_in_arrival_order() -> None:
    asyncio.run(_a_worker_s_waiters_are_served_by_tier_then_in_arrival_order())


async def _a_worker_s_waiters_are_served_by_tier_then_in_arrival_order() -> None:
    budget = QuotaBudget("erp", policy(rate=40, burst=1), LocalState(), "w")
    order: list[str] = []

    async def call(name: str, tier: Tier) -> None:
        async with budget.take(tier, name):
            order.append(name)

    tasks = [asyncio.create_task(call(f"info-{n}", INFO)) for n in range(4)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call(f"rc-{n}", RC)) for n in range(2)]
    await asyncio.gather(*tasks)
    # The first token went out at once; the rest came one by one, revenue-critical first
    # (informational gets its minimum share of one in twenty, not more).
    assert order[0] == "info-0"
    assert order[1:3] == ["rc-0", "rc-1"]
    assert order[3:] == ["info-1", "info-2", "info-3"]
    used = budget.flush_usage()
    assert used["rc-0"].granted == 1 and used["rc-0"].tier is RC


def test_a_long_pause_gives_the_waiters_back_instead_of_holding_them() -> None:
    asyncio.run(_a_long_pause_gives_the_waiters_back_instead_of_holding_them())


async def _a_long_pause_gives_the_waiters_back_instead_of_holding_them() -> None:
    shared = LocalState()
    budget = QuotaBudget("erp", policy(rate=40, burst=1), shared, "w", hold_s=1.0)
    await budget.pause(budget.clock() + 30)
    with pytest.raises(QuotaWait) as caught:
        async with budget.take(RC, "orders"):
            pass
    assert caught.value.until == pytest.approx(budget.clock() + 30, abs=1)
    assert budget.flush_usage()["orders"].deferred == 1


def test_a_short_pause_is_waited_out_in_place() -> None:
    asyncio.run(_a_short_pause_is_waited_out_in_place())


async def _a_short_pause_is_waited_out_in_place() -> None:
    budget = QuotaBudget("erp", policy(rate=100, burst=1), LocalState(), "w", hold_s=5.0)
    paused_until = budget.clock() + 0.3
    await budget.pause(paused_until)
    async with budget.take(RC, "orders"):
        granted_at = budget.clock()
    assert granted_at >= paused_until


def test_the_concurrency_cap_holds_calls_until_a_slot_is_given_back() -> None:
    asyncio.run(_the_concurrency_cap_holds_calls_until_a_slot_is_given_back())


async def _the_concurrency_cap_holds_calls_until_a_slot_is_given_back() -> None:
    budget = QuotaBudget("erp", policy(rate=1000, burst=100, concurrency=2), LocalState(), "w")
    in_flight = peak = 0

    async def call() -> None:
        nonlocal in_flight, peak
        async with budget.take(OP, "f"):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1

    await asyncio.gather(*(call() for _ in range(8)))
    assert peak == 2


def test_a_lease_that_meets_its_demand_hands_a_reserve_to_the_tier_it_served() -> None:
    big = policy(rate=10_000, burst=2_000)
    assert big.reserve == 500  # 50 ms of the rate, within half the burst
    assert policy(rate=10_000, burst=100).reserve == 50  # half the burst
    assert policy(rate=100, burst=10).reserve == 0  # too small to be worth it
    assert policy(rate=10_000, burst=2_000, daily=10**6).reserve == 0  # every token counts
    state, lease = allocate(BucketState.full(big, T0), big, {OP: 3, INFO: 2}, "w1", T0)
    assert lease.grants == {OP: 3 + 500, INFO: 2}
    assert (lease.reserve, lease.reserve_tier) == (500, OP)
    assert state.tokens == pytest.approx(2_000 - 505)
    # A tier hungry at another worker: no reserve, so the tokens stay for it.
    state, _ = allocate(state, big, {RC: 2_000}, "w2", T0)
    _, held = allocate(state, big, {OP: 1}, "w1", T0 + 0.001)
    assert held.reserve == 0


def test_the_reserve_serves_the_next_callers_of_its_tier_without_a_lease() -> None:
    asyncio.run(_the_reserve_serves_the_next_callers_of_its_tier_without_a_lease())


class CountingState(LocalState):
    def __init__(self) -> None:
        super().__init__()
        self.leases = 0

    async def lease(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self.leases += 1
        return await super().lease(*args, **kwargs)  # type: ignore[arg-type]


async def _the_reserve_serves_the_next_callers_of_its_tier_without_a_lease() -> None:
    shared = CountingState()
    budget = QuotaBudget("erp", policy(rate=10_000, burst=2_000), shared, "w")
    for _ in range(100):  # one at a time, as deliveries arrive
        async with budget.take(OP, "orders"):
            pass
    assert shared.leases == 1
    assert budget.flush_usage()["orders"].granted == 100
    # Another tier does not take this tier's reserve; a 429 drops the reserve.
    async with budget.take(INFO, "feed"):
        pass
    assert shared.leases == 2
    await budget.pause(budget.clock() + 0.01)
    await asyncio.sleep(0.02)
    async with budget.take(INFO, "feed"):
        pass
    assert shared.leases == 3
    # A reserve is held 50 ms at most.
    await asyncio.sleep(0.06)
    async with budget.take(INFO, "feed"):
        pass
    assert shared.leases == 4


def test_callers_held_by_the_concurrency_cap_are_served_from_the_reserve_in_turn() -> None:
    asyncio.run(_callers_held_by_the_concurrency_cap_are_served_from_the_reserve_in_turn())


async def _callers_held_by_the_concurrency_cap_are_served_from_the_reserve_in_turn() -> None:
    shared = CountingState()
    budget = QuotaBudget("erp", policy(rate=10_000, burst=2_000, concurrency=1), shared, "w")
    order: list[int] = []

    async def call(n: int) -> None:
        async with budget.take(OP, "orders"):
            order.append(n)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(call(n) for n in range(5)))
    # One lease for the first; the others waited for the slot and took reserved tokens.
    assert order == [0, 1, 2, 3, 4]
    assert shared.leases == 1
