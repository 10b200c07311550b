"""Quota and circuit breaker as middleware around connectors, for every caller of a system.

:meth:`Resilience.guard` wraps a project's connectors. A guarded call, in order:

    breaker admits it (closed; or it is the one half-open probe)  -- else Deferred
    -> quota budget grants a token and a concurrency slot by the request's tier
       (waits; Deferred when paused or out of daily quota for long)
    -> breaker admits it again, as the wait may have outlasted its state -- else Deferred
    -> the connector's call
    -> the outcome feeds the breaker; a 429's Retry-After pauses the system for all

:class:`Deferred` means *the call was not made*: the caller puts the work back
until ``until`` without counting an attempt. The delivery worker does that; the
process runner can do the same with steps (it passes ``tier`` and ``flow`` in
each :class:`~charter.connectors.TargetRequest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from charter.catalog.loader import Project
from charter.catalog.model import Tier
from charter.connectors import Connector, TargetRequest, TargetResponse
from charter.delivery.breaker import BreakerPolicy, BreakerRecord, BreakerState, Tally
from charter.delivery.quota import TIERS, QuotaBudget, QuotaPolicy, QuotaWait
from charter.delivery.redis_state import RedisState
from charter.delivery.redis_state import redis_prefix as redis_prefix_for
from charter.delivery.shared import DatabaseState, LocalState, SharedState
from charter.errors import ConnectorError, DatabaseUnavailable, RateLimited
from charter.store.resilience import BreakerKey, ResilienceStore, UsageRow

log = logging.getLogger("charter.resilience")

# While a breaker is open, lower tiers come back later, so higher tiers drain first.
TIER_STAGGER = {Tier.REVENUE_CRITICAL: 0.0, Tier.OPERATIONAL: 0.25, Tier.INFORMATIONAL: 0.5}
# How long a 429 pause or a wait for the breaker is waited out in place; longer: Deferred.
HOLD_S = 5.0
# The most a waiting delivery's return is pushed back for a long outage.
MAX_BACK_OFF_S = 30.0
# How often a worker folds its outcomes into the shared breakers and reports quota use.
SYNC_S = 0.25
FLUSH_S = 1.0


class Deferred(ConnectorError):
    """The call was not made: the breaker is open, or the system's quota is paused or spent.

    Put the work back until ``until`` (epoch seconds) without counting an attempt.
    ``kind`` says what held it back: ``"breaker"`` (an open breaker) or ``"quota"``.
    """

    retryable = True

    def __init__(self, detail: str, *, until: float, kind: str = "quota") -> None:
        super().__init__(detail, error_class="deferred")
        self.until = until
        self.kind = kind


@dataclass(frozen=True)
class Guarded:
    """What a guarded call needs to know about its caller."""

    tier: Tier
    flow: str


class CircuitBreaker:
    """One worker's view of a shared breaker; it counts outcomes locally and syncs in batches.

    A closed breaker costs one round trip per ``SYNC_S`` seconds, not one per
    call: outcomes are folded into the shared record then (or at once when this
    worker alone saw enough consecutive failures to open it), and the record
    read back tells the worker what other workers saw.
    """

    def __init__(
        self,
        key: BreakerKey,
        policy: BreakerPolicy,
        shared: SharedState,
        worker: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.policy = policy
        self.shared = shared
        self.worker = worker
        self.clock = clock
        self.view = BreakerRecord()
        self._successes = 0
        self._failures = 0
        self._trailing = 0
        self._last_error: str | None = None
        self._synced_at = 0.0
        self._syncing: asyncio.Task[None] | None = None

    def _tally(self) -> Tally:
        tally = Tally(self._successes, self._failures, self._trailing, self._last_error)
        self._successes = self._failures = self._trailing = 0
        self._last_error = None
        return tally

    async def sync(self) -> None:
        """Fold this worker's outcomes into the shared record and read it back."""
        self._synced_at = self.clock()
        try:
            self.view = await self.shared.observe(self.key, self.policy, self._tally(), self.worker)
        except Exception as exc:  # keep the last view; the next sync tries again
            log.warning("breaker %s cannot be synced: %s", self.key, exc)

    def _sync_soon(self) -> None:
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.create_task(self.sync(), name=f"breaker-{self.key}")

    async def admit(self, tier: Tier) -> bool:
        """True when the call is the half-open probe; raises `Deferred` while open."""
        now = self.clock()
        if now - self._synced_at > SYNC_S:
            # One round trip per SYNC_S per system and worker: another worker may have
            # opened the breaker, and a stale view must not let calls through.
            self._sync_soon()
        if self._syncing is not None and not self._syncing.done():
            # A sync is under way (this call's, an earlier one's, or one a run of failures
            # started): its answer decides, not the view it replaces. Calls arriving while
            # it waits for the database would otherwise all go out on the stale view.
            await asyncio.shield(self._syncing)
            now = self.clock()
        if self.view.state is BreakerState.CLOSED:
            return False
        if self.view.state is BreakerState.OPEN and now < self.view.reopens_at(self.policy):
            raise self._deferred(self.view, self.view.reopens_at(self.policy), tier)
        # Due for a probe, or one is out: the shared record decides who goes.
        record, admission = await self.shared.admit(self.key, self.policy, self.worker)
        self.view = record
        if admission.allowed:
            return admission.probe
        raise self._deferred(record, admission.retry_at, tier)

    def _deferred(self, record: BreakerRecord, retry_at: float, tier: Tier) -> Deferred:
        # Only the probe needs to be there when the breaker half-opens. The rest come back
        # later the longer the target has been failing (up to MAX_BACK_OFF_S), so that a
        # long outage does not have every waiting delivery claimed once per interval.
        failing_for = max(0.0, self.clock() - record.opened_at) if record.opened_at else 0.0
        later = min(failing_for, MAX_BACK_OFF_S)
        until = retry_at + later + TIER_STAGGER[tier] * self.policy.open_for
        return Deferred(
            f"the circuit breaker of {self.key} is {record.state.value} "
            f"({record.last_error or 'failures'}); waiting without an attempt",
            until=until,
            kind="breaker",
        )

    def success(self) -> None:
        self._successes += 1
        self._trailing = 0

    def failure(self, error: str) -> None:
        self._failures += 1
        self._trailing += 1
        self._last_error = error
        if self._trailing >= self.policy.failures and self.view.state is BreakerState.CLOSED:
            self._sync_soon()

    async def probe_done(self, ok: bool, error: str | None) -> None:
        try:
            self.view = await self.shared.probe_result(
                self.key, self.policy, self.worker, ok, error
            )
        except Exception as exc:  # the probe's lease runs out and another worker probes
            log.warning("breaker %s cannot record its probe: %s", self.key, exc)


class GuardedConnector:
    """A connector behind its system's breaker and quota budget (see the module docstring)."""

    def __init__(self, system: str, inner: Connector, resilience: Resilience) -> None:
        self.system = system
        self.inner = inner
        self.resilience = resilience

    async def call(self, request: TargetRequest) -> TargetResponse:
        resilience = self.resilience
        breaker = resilience.breaker(self.system, request)
        budget = resilience.budgets.get(self.system)
        probe = await breaker.admit(request.tier) if breaker is not None else False
        try:
            if budget is None:
                response = await self._send(request)
            else:
                try:
                    async with budget.take(request.tier, request.flow):
                        if breaker is not None and not probe:
                            # The wait for quota may have been long: the breaker may
                            # have opened meanwhile, and a call admitted before must
                            # not go out now (it may become the probe instead).
                            probe = await breaker.admit(request.tier)
                        response = await self._send(request)
                except QuotaWait as wait:
                    until = wait.until + TIER_STAGGER[request.tier]
                    raise Deferred(
                        f"{wait.reason}; waiting without an attempt", until=until
                    ) from wait
        except Deferred:
            if probe and breaker is not None:
                # The probe never went out: let the next caller probe.
                await breaker.probe_done(False, "probe deferred by the quota")
            raise
        except RateLimited as exc:
            if budget is not None:
                budget.rate_limited(request.flow, request.tier)
                if exc.retry_after:
                    await budget.pause(resilience.clock() + exc.retry_after)
            # The system answered: it is up, only busy.
            if breaker is not None:
                await self._settle(breaker, probe, None)
            raise
        except ConnectorError as exc:
            if breaker is not None:
                await self._settle(breaker, probe, exc.detail if exc.retryable else None)
            raise
        except asyncio.CancelledError:
            if probe and breaker is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(breaker.probe_done(False, "probe cancelled"))
            raise
        if breaker is not None:
            await self._settle(breaker, probe, None)
        return response

    async def _send(self, request: TargetRequest) -> TargetResponse:
        on_wire = self.resilience.on_wire
        on_wire[self.system] = on_wire.get(self.system, 0) + 1
        try:
            return await self.inner.call(request)
        finally:
            on_wire[self.system] -= 1

    @staticmethod
    async def _settle(breaker: CircuitBreaker, probe: bool, error: str | None) -> None:
        """Feed the breaker: ``error`` None is a success (a 4xx rejection counts as one)."""
        if probe:
            await breaker.probe_done(error is None, error)
        elif error is None:
            breaker.success()
        else:
            breaker.failure(error)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Resilience:
    """Quota budgets and circuit breakers of one process's callers, over shared state.

    ``guard(connectors)`` wraps connectors; ``run(stop)`` keeps the breakers
    synced and reports quota use until ``stop`` is set. One per process
    (build it with :func:`resilience_for`); the delivery worker and the process
    runner may share it.
    """

    def __init__(
        self,
        project: Project,
        shared: SharedState,
        worker: str,
        *,
        store: ResilienceStore | None = None,
        clock: Callable[[], float] = time.time,
        hold_s: float = HOLD_S,
    ) -> None:
        self.project = project
        self.shared = shared
        self.worker = worker
        self.store = store
        self.clock = clock
        self.budgets: dict[str, QuotaBudget] = {}
        # Calls out to each system right now (not those waiting for quota or a breaker).
        self.on_wire: dict[str, int] = {}
        self._breakers: dict[BreakerKey, CircuitBreaker] = {}
        self._policies: dict[str, BreakerPolicy] = {}
        self._per_endpoint: set[str] = set()
        for name, system in project.systems.items():
            if system.quota is not None:
                self.budgets[name] = QuotaBudget(
                    name,
                    QuotaPolicy.of(system.quota),
                    shared,
                    worker,
                    hold_s=hold_s,
                    clock=clock,
                )
            if system.breaker.enabled:
                deadline = system.connector.deadline if system.connector else 30.0
                self._policies[name] = BreakerPolicy.of(system.breaker, deadline + 5.0)
                if system.breaker.per_endpoint:
                    self._per_endpoint.add(name)

    def guard(self, connectors: Mapping[str, Connector]) -> dict[str, Connector]:
        """The same connectors behind their systems' breakers and quota budgets."""
        return {name: GuardedConnector(name, c, self) for name, c in connectors.items()}

    def breaker(self, system: str, request: TargetRequest) -> CircuitBreaker | None:
        policy = self._policies.get(system)
        if policy is None:
            return None
        endpoint = f"{request.method} {request.path}" if system in self._per_endpoint else None
        key = BreakerKey(system, endpoint)
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = CircuitBreaker(
                key, policy, self.shared, self.worker, self.clock
            )
        return found

    def usage(self) -> list[UsageRow]:
        rows: list[UsageRow] = []
        for system, budget in self.budgets.items():
            for flow, used in budget.flush_usage().items():
                rows.append(
                    UsageRow(
                        system,
                        flow or "-",
                        used.tier.value,
                        used.granted,
                        used.waited_s,
                        used.deferred,
                        used.rate_limited,
                    )
                )
        return rows

    async def flush(self) -> None:
        for breaker in list(self._breakers.values()):
            if breaker._successes or breaker._failures:
                await breaker.sync()
        try:
            await self.shared.flush(self.usage())
        except Exception as exc:  # visibility only: the next flush carries on
            log.warning("quota use cannot be saved: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Report quota use and breaker outcomes every second until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_S)
            try:
                await self.flush()
            except DatabaseUnavailable as exc:  # what was not reported goes with the next
                log.warning("breaker outcomes cannot be saved: %s", exc)

    def defer(self, worker: str, items: list[tuple[int, float]]) -> int:
        """Put leased deliveries back until their times, without an attempt (None: no store)."""
        if self.store is None:
            return 0
        return self.store.defer(worker, items)


def resilience_for(
    project: Project,
    store: ResilienceStore,
    worker: str,
    *,
    shared_rows: bool,
    redis_url: str | None = None,
    redis_prefix: str | None = None,
) -> Resilience:
    """Quota and breakers for a process: in Redis when ``redis_url`` is given (on any
    database; keys under ``redis_prefix``, by default ``charter:<project>:``), else in
    rows every worker locks when ``shared_rows`` (PostgreSQL, several processes), else in
    this process; the API reads them from ``store`` in every case.

    Raises :class:`~charter.errors.StoreError` when Redis cannot be reached."""
    if redis_url:
        prefix = redis_prefix if redis_prefix is not None else redis_prefix_for(project.name)
        state = RedisState.connect(redis_url, store, prefix=prefix)
        return Resilience(project, state, worker, store=store)
    if shared_rows:
        return Resilience(project, DatabaseState(store), worker, store=store)
    local = LocalState(store)
    local.load()
    return Resilience(project, local, worker, store=store)


__all__ = ["TIERS", "Deferred", "GuardedConnector", "Resilience", "resilience_for"]
