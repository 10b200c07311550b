"""Quota budgets: a token bucket per system, shared by every flow and worker, by tier priority.

The bucket itself is pure (:func:`allocate` over a :class:`BucketState`, on a
clock it is given); where its state lives — this process, or a row of the
database that every worker locks — is the :class:`~charter.delivery.shared.SharedState`'s
business. :class:`QuotaBudget` is one worker's side of one system's budget:
callers wait in it by tier, and it leases tokens for all of them at once, so a
busy worker makes one lease per batch of calls, not one per call.

Tier priority works on two levels. Inside a worker, the waiters of the highest
tier are served first. Across workers, a lease that leaves demand of a tier
unmet marks that tier *hungry* in the shared state for a moment; while it is,
lower tiers get nothing from the bucket — except a tier whose recent share of
the calls is below its minimum share, which is served first, so nothing starves.
A ``429`` pauses the whole system until its ``Retry-After``, for everyone.

A lease that meets all its demand, while no tier waits elsewhere, also hands
the worker a small *reserve* for the tier it served (``QuotaPolicy.reserve``:
50 ms of the rate, at most half the burst; none under a daily quota or below
10 tokens), which that tier's next callers take without a lease until it runs
out or 50 ms pass. A steady stream of calls arriving one by one would otherwise
cost a lease each (on PostgreSQL a locked row's round trips, several times a
delivery's own CPU).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from charter.catalog.model import DEFAULT_SHARES, Quota, Tier

log = logging.getLogger("charter.quota")

TIERS: tuple[Tier, ...] = (Tier.REVENUE_CRITICAL, Tier.OPERATIONAL, Tier.INFORMATIONAL)
# How long the calls served count towards a tier's recent share (time constant, s).
SHARE_MEMORY_S = 5.0
# A worker that stops asking is no longer counted for the concurrency split after this.
WORKER_SEEN_S = 10.0
# The most tokens one lease hands out (a worker asks for its waiters only anyway).
MAX_GRANT = 1000
# How long a worker may hold the reserve a lease hands it, and so how much of the rate.
RESERVE_S = 0.05
# A smaller reserve is not worth its imprecision (below 200 calls/s, none).
MIN_RESERVE = 10


@dataclass(frozen=True)
class QuotaPolicy:
    """A system's budget as the bucket uses it (see :class:`~charter.catalog.model.Quota`)."""

    rate_per_s: float
    burst: float
    daily: int | None = None
    concurrency: int | None = None
    shares: Mapping[Tier, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))

    @classmethod
    def of(cls, quota: Quota) -> QuotaPolicy:
        burst = quota.burst if quota.burst is not None else max(1.0, quota.rate_per_s / 50)
        return cls(quota.rate_per_s, float(burst), quota.daily, quota.concurrency, quota.shares)

    @property
    def reserve(self) -> int:
        """Tokens a lease may hand a worker beyond its waiters (see the module docstring)."""
        reserve = min(int(self.rate_per_s * RESERVE_S), int(self.burst // 2))
        return reserve if self.daily is None and reserve >= MIN_RESERVE else 0

    @property
    def hunger_s(self) -> float:
        """How long an unmet tier keeps lower tiers away: a few token intervals."""
        return min(1.0, 3.0 / self.rate_per_s + 0.1)


@dataclass(frozen=True)
class BucketState:
    """The shared state of one system's budget (stored as JSON)."""

    tokens: float
    updated_at: float
    paused_until: float = 0.0
    day: str = ""
    day_count: int = 0
    # Calls served recently per tier (decayed with SHARE_MEMORY_S).
    served: dict[str, float] = field(default_factory=dict)
    # Until when each tier has unmet demand somewhere.
    hungry_until: dict[str, float] = field(default_factory=dict)
    # Worker -> when it last leased, for the concurrency split.
    workers: dict[str, float] = field(default_factory=dict)

    @classmethod
    def full(cls, policy: QuotaPolicy, now: float) -> BucketState:
        return cls(tokens=policy.burst, updated_at=now)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "updated_at": self.updated_at,
            "paused_until": self.paused_until,
            "day": self.day,
            "day_count": self.day_count,
            "served": self.served,
            "hungry_until": self.hungry_until,
            "workers": self.workers,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BucketState:
        return cls(
            tokens=float(data["tokens"]),
            updated_at=float(data["updated_at"]),
            paused_until=float(data.get("paused_until", 0.0)),
            day=str(data.get("day", "")),
            day_count=int(data.get("day_count", 0)),
            served={k: float(v) for k, v in data.get("served", {}).items()},
            hungry_until={k: float(v) for k, v in data.get("hungry_until", {}).items()},
            workers={k: float(v) for k, v in data.get("workers", {}).items()},
        )


@dataclass(frozen=True)
class Lease:
    """What one lease got: tokens per tier, and when to ask again for what is left."""

    grants: dict[Tier, int]
    # Seconds until asking again can succeed (0: everything asked for was granted).
    retry_in: float
    paused_until: float = 0.0
    # The daily quota is used up until this time (0: it is not).
    exhausted_until: float = 0.0
    # How many calls this worker may have in flight at once (None: no limit).
    concurrency: int | None = None
    tokens_left: float = 0.0
    # Tokens beyond the demand, for ``reserve_tier``'s next callers (see the module docstring).
    reserve: int = 0
    reserve_tier: Tier | None = None


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def next_utc_midnight(now: float) -> float:
    return (math.floor(now / 86400) + 1) * 86400.0


def refill(state: BucketState, policy: QuotaPolicy, now: float) -> BucketState:
    """The state at ``now``: tokens added for the time passed (up to the burst), shares decayed."""
    elapsed = max(0.0, now - state.updated_at)
    decay = math.exp(-elapsed / SHARE_MEMORY_S)
    day = utc_day(now)
    return replace(
        state,
        tokens=min(policy.burst, state.tokens + elapsed * policy.rate_per_s),
        updated_at=max(now, state.updated_at),
        served={k: v * decay for k, v in state.served.items() if v * decay > 1e-3},
        day=day,
        day_count=state.day_count if state.day == day else 0,
    )


def _below(served: Mapping[str, float], total: float, policy: QuotaPolicy, tier: Tier) -> bool:
    """Is ``tier``'s share of ``served`` (which adds up to ``total``) below its minimum?"""
    minimum = policy.shares.get(tier, 0.0)
    if minimum <= 0:
        return False
    return total <= 0 or served.get(tier.value, 0.0) / total < minimum


def allocate(
    state: BucketState,
    policy: QuotaPolicy,
    demand: Mapping[Tier, int],
    worker: str,
    now: float,
) -> tuple[BucketState, Lease]:
    """Hand out tokens for ``demand`` (calls waiting, per tier) at ``now``. Pure.

    Order: first any tier with demand whose recent share is below its minimum,
    then tiers in priority order — but a tier gets nothing while a higher tier
    is hungry elsewhere (had demand left unmet within ``policy.hunger_s``).
    """
    state = refill(state, policy, now)
    workers = {w: t for w, t in state.workers.items() if now - t < WORKER_SEEN_S}
    workers[worker] = now
    concurrency = None
    if policy.concurrency is not None:
        concurrency = max(1, policy.concurrency // len(workers))
    left = {t: max(0, demand.get(t, 0)) for t in TIERS}
    grants = {t: 0 for t in TIERS}
    served = dict(state.served)
    hungry = dict(state.hungry_until)
    tokens = state.tokens
    exhausted_until = 0.0
    # Epoch seconds carry about 2e-7 s of float error: a token due now must not read 0.9999.
    available = min(int(tokens + 1e-3), MAX_GRANT)
    if state.paused_until > now:
        available = 0
    if policy.daily is not None:
        remaining = policy.daily - state.day_count
        if remaining <= 0:
            exhausted_until = next_utc_midnight(now)
        available = min(available, max(0, remaining))
    granted = 0
    total = sum(served.values())
    # Tiers waiting at another worker (hungry, not asked for here), in priority order.
    elsewhere = [h for h in TIERS if hungry.get(h.value, 0.0) > now and not demand.get(h, 0)]
    while granted < available:
        wanting = [t for t in TIERS if left[t] > 0]
        if not wanting:
            break
        chosen = next((t for t in wanting if _below(served, total, policy, t)), None)
        if chosen is None:
            top = wanting[0]
            # Waiting elsewhere: a higher tier, or any tier below its minimum share.
            # Leave the token to them.
            blocked = any(
                TIERS.index(h) < TIERS.index(top) or _below(served, total, policy, h)
                for h in elsewhere
            )
            if blocked:
                break
            chosen = top
        left[chosen] -= 1
        grants[chosen] += 1
        served[chosen.value] = served.get(chosen.value, 0.0) + 1
        total += 1
        granted += 1
    reserve, reserve_tier = 0, None
    if granted and not any(left.values()) and not elsewhere and policy.reserve:
        reserve_tier = next(t for t in TIERS if demand.get(t, 0) > 0)
        reserve = min(policy.reserve, available - granted)
        served[reserve_tier.value] = served.get(reserve_tier.value, 0.0) + reserve
        grants[reserve_tier] += reserve
        granted += reserve
    tokens -= granted
    for tier in TIERS:
        if left[tier] > 0:
            hungry[tier.value] = now + policy.hunger_s
        elif demand.get(tier, 0) > 0:
            hungry.pop(tier.value, None)
    new = replace(
        state,
        tokens=tokens,
        served=served,
        hungry_until={k: v for k, v in hungry.items() if v > now},
        workers=workers,
        day_count=state.day_count + granted,
    )
    retry_in = 0.0
    if any(left.values()):
        if state.paused_until > now:
            retry_in = state.paused_until - now
        elif exhausted_until:
            retry_in = exhausted_until - now
        else:
            # The next whole token; at least a little, so that waiters do not spin.
            retry_in = max((1.0 - (tokens - math.floor(tokens))) / policy.rate_per_s, 0.002)
            if tokens >= 1:
                # Tokens are there but priority held them back: look again soon.
                retry_in = min(retry_in, policy.hunger_s / 2)
    lease = Lease(
        grants={t: n for t, n in grants.items() if n},
        retry_in=retry_in,
        paused_until=state.paused_until if state.paused_until > now else 0.0,
        exhausted_until=exhausted_until,
        concurrency=concurrency,
        tokens_left=tokens,
        reserve=reserve,
        reserve_tier=reserve_tier if reserve else None,
    )
    return new, lease


def pause(state: BucketState, policy: QuotaPolicy, until: float, now: float) -> BucketState:
    """Stop every call to the system until ``until`` (a ``429``'s ``Retry-After``). Pure."""
    state = refill(state, policy, now)
    # Nothing saved up during the pause may go out at once when it ends.
    return replace(
        state, paused_until=max(state.paused_until, until), tokens=min(state.tokens, 1.0)
    )


class QuotaLedger(Protocol):
    """Where budgets are kept; see :class:`~charter.delivery.shared.SharedState`."""

    async def lease(
        self, system: str, policy: QuotaPolicy, worker: str, demand: Mapping[Tier, int]
    ) -> Lease: ...

    async def pause(self, system: str, policy: QuotaPolicy, until: float) -> None: ...


class QuotaWait(Exception):
    """The budget cannot serve a call soon: paused or used up for the day until ``until``."""

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


@dataclass
class FlowUsage:
    """What one flow (integration or process) took of one system's budget, since the last flush."""

    tier: Tier
    granted: int = 0
    waited_s: float = 0.0
    deferred: int = 0
    rate_limited: int = 0


class _Waiter:
    __slots__ = ("flow", "future", "since", "tier")

    def __init__(self, tier: Tier, flow: str, future: asyncio.Future[None], since: float) -> None:
        self.tier = tier
        self.flow = flow
        self.future = future
        self.since = since


class QuotaBudget:
    """One worker's side of one system's budget: callers wait here by tier.

    ``async with budget.take(tier, flow):`` waits for a token and a concurrency
    slot, then holds the slot until the block ends. It raises
    :class:`QuotaWait` when the system is paused or out of its daily quota for
    longer than ``hold_s``: the caller should put the work back until then
    rather than hold it. It does not call the system and does not retry.
    """

    def __init__(
        self,
        system: str,
        policy: QuotaPolicy,
        ledger: QuotaLedger,
        worker: str,
        *,
        hold_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.system = system
        self.policy = policy
        self.ledger = ledger
        self.worker = worker
        self.hold_s = hold_s
        self.clock = clock
        self._queues: dict[Tier, deque[_Waiter]] = {t: deque() for t in TIERS}
        self._in_flight = 0
        self._concurrency: int | None = policy.concurrency
        self._leasing: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self.usage: dict[str, FlowUsage] = {}
        # Tokens the last lease handed over beyond its waiters, for one tier, until a time.
        self._reserve = 0
        self._reserve_tier: Tier | None = None
        self._reserve_until = 0.0

    def _usage(self, flow: str, tier: Tier) -> FlowUsage:
        found = self.usage.get(flow)
        if found is None:
            found = self.usage[flow] = FlowUsage(tier)
        return found

    def take(self, tier: Tier, flow: str) -> _Permit:
        return _Permit(self, tier, flow)

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _take_reserved(self, tier: Tier, *, head: bool) -> bool:
        """Take a reserved token and a slot for a ``tier`` call when the reserve is for
        ``tier``, has not lapsed, a slot is free, and no caller before it waits (``head``:
        the call is the first waiter of its tier, not a new one)."""
        if self._reserve <= 0 or tier is not self._reserve_tier:
            return False
        if self.clock() >= self._reserve_until:
            self._reserve = 0
            return False
        if self._concurrency is not None and self._in_flight >= self._concurrency:
            return False
        higher = TIERS[: TIERS.index(tier)]
        if (self._queues[tier] and not head) or any(self._queues[t] for t in higher):
            return False
        self._reserve -= 1
        self._in_flight += 1
        return True

    def _serve_reserve(self) -> None:
        """Hand reserved tokens to callers waiting at the reserve's tier, first come first."""
        tier = self._reserve_tier
        if tier is None:
            return
        queue = self._queues[tier]
        while queue and self._take_reserved(tier, head=True):
            queue.popleft().future.set_result(None)

    async def _acquire(self, tier: Tier, flow: str) -> None:
        if self._take_reserved(tier, head=False):
            usage = self._usage(flow, tier)
            usage.granted += 1
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tier, flow, loop.create_future(), self.clock())
        self._queues[tier].append(waiter)
        self._start()
        try:
            await waiter.future
        except QuotaWait:
            self._usage(flow, tier).deferred += 1
            raise
        except asyncio.CancelledError:
            if waiter in self._queues[tier]:
                self._queues[tier].remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                # Granted just as it was cancelled: give the slot back.
                self._release()
            raise
        usage = self._usage(flow, tier)
        usage.granted += 1
        usage.waited_s += max(0.0, self.clock() - waiter.since)

    def _release(self) -> None:
        self._in_flight -= 1
        self._kick.set()

    def rate_limited(self, flow: str, tier: Tier) -> None:
        self._usage(flow, tier).rate_limited += 1

    async def pause(self, until: float) -> None:
        """A 429 said ``Retry-After``: stop this system for every flow and worker until then."""
        self._reserve = 0
        await self.ledger.pause(self.system, self.policy, until)
        self._kick.set()

    def _start(self) -> None:
        self._kick.set()
        if self._leasing is None or self._leasing.done():
            self._leasing = asyncio.create_task(self._lease_loop(), name=f"quota-{self.system}")

    def _demand(self) -> dict[Tier, int]:
        room = None if self._concurrency is None else max(0, self._concurrency - self._in_flight)
        demand: dict[Tier, int] = {}
        for tier in TIERS:
            n = len(self._queues[tier])
            if room is not None:
                n = min(n, room)
                room -= n
            if n:
                demand[tier] = n
        return demand

    async def _lease_loop(self) -> None:
        while self.waiting():
            self._kick.clear()
            self._serve_reserve()
            if not self.waiting():
                break
            demand = self._demand()
            if not demand:
                # Every slot is taken: wait for one to be given back.
                await self._kick.wait()
                continue
            try:
                lease = await self.ledger.lease(self.system, self.policy, self.worker, demand)
            except Exception as exc:  # the shared state is out of reach: put the work back
                log.warning("quota of %s cannot be leased: %s", self.system, exc)
                until = self.clock() + 1.0
                self._fail_all(QuotaWait(until, f"quota state of {self.system} unavailable"))
                continue
            self._concurrency = lease.concurrency
            for tier, count in lease.grants.items():
                queue = self._queues[tier]
                for _ in range(count - (lease.reserve if tier is lease.reserve_tier else 0)):
                    waiter = queue.popleft()
                    self._in_flight += 1
                    waiter.future.set_result(None)
            if lease.reserve:
                self._reserve, self._reserve_tier = lease.reserve, lease.reserve_tier
                self._reserve_until = self.clock() + RESERVE_S
            if not lease.retry_in:
                continue
            until = max(lease.paused_until, lease.exhausted_until)
            if until and until - self.clock() > self.hold_s:
                reason = (
                    f"{self.system} used its daily quota of {self.policy.daily}"
                    if lease.exhausted_until
                    else f"{self.system} asked to wait (Retry-After) until {until:.3f}"
                )
                self._fail_all(QuotaWait(until, reason))
                continue
            # New waiters do not wake this: the bucket refills on its own clock, and
            # leasing more often would only cost the database round trips.
            await asyncio.sleep(min(lease.retry_in, 1.0))

    def _fail_all(self, error: QuotaWait) -> None:
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(error)

    def flush_usage(self) -> dict[str, FlowUsage]:
        """The usage counted since the last call, by flow; the counters start again."""
        usage, self.usage = self.usage, {}
        return usage


class _Permit:
    def __init__(self, budget: QuotaBudget, tier: Tier, flow: str) -> None:
        self.budget = budget
        self.tier = tier
        self.flow = flow

    async def __aenter__(self) -> None:
        await self.budget._acquire(self.tier, self.flow)

    async def __aexit__(self, *exc: object) -> None:
        self.budget._release()
