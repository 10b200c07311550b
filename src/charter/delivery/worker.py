"""The delivery worker: claim due deliveries, map, call the target, record what happened.

Claims are leased; results are recorded in batches. A worker that stops
finishes what it has in flight (up to a grace period) and releases the rest,
so nothing waits for a lease to expire after a clean shutdown.

With a :class:`~charter.delivery.guard.Resilience`, every call goes through
its system's circuit breaker and quota budget (by the integration's tier); a
call they hold back (:class:`~charter.delivery.guard.Deferred`) is put back
until the time they name, without counting an attempt. A target whose breaker
has been open long enough hands its deliveries to its fallback, if the catalog
names one (:mod:`charter.delivery.fallback`): another system or a file drop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

import orjson

from charter.catalog import Integration, Project, RetryPolicy
from charter.catalog.model import Target
from charter.connectors import Connector, HttpConnector, TargetRequest
from charter.delivery.fallback import FALLBACK_KEY_SUFFIX, DropFolder, park_until
from charter.delivery.guard import Deferred, Resilience
from charter.delivery.retry import decide
from charter.errors import (
    CharterError,
    ConnectorError,
    DatabaseUnavailable,
    MappingError,
    NotFound,
)
from charter.hub.routing import Router
from charter.store import AttemptResult, ClaimedDelivery, Outcome, Store
from charter.store.sql_base import Reconnect

log = logging.getLogger("charter.delivery")


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 64
    batch_size: int = 200
    lease_seconds: float = 60.0
    idle_poll: float = 0.05
    # How long an idle worker sleeps when wake-ups arrive by notification.
    max_idle: float = 2.0
    flush_interval: float = 0.01
    grace_seconds: float = 10.0
    # Bulkhead: the share of the slots one target system's calls may hold, so that a target
    # that hangs cannot take every slot from the others (with a Resilience only).
    target_share: float = 0.75
    # How long a delivery over its target's share goes back before it is claimed again.
    bulkhead_wait: float = 0.2


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def connectors_for(project: Project) -> dict[str, Connector]:
    """One HTTP connector per system that has connector settings."""
    return {
        name: HttpConnector(name, system.connector)
        for name, system in project.systems.items()
        if system.connector is not None
    }


class DeliveryWorker:
    """Runs deliveries until stopped. One per process is enough; it is concurrent inside."""

    def __init__(
        self,
        router: Router,
        store: Store,
        connectors: Mapping[str, Connector],
        settings: WorkerSettings | None = None,
        *,
        name: str | None = None,
        rng: random.Random | None = None,
        resilience: Resilience | None = None,
    ) -> None:
        self.router = router
        self.store = store
        self.resilience = resilience
        self.connectors = resilience.guard(connectors) if resilience else connectors
        self.settings = settings or WorkerSettings()
        self.name = name or worker_id()
        self.rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._results: list[AttemptResult] = []
        # Deliveries put back without an attempt: (id, due again at).
        self._deferred: list[tuple[int, float]] = []
        self.deferred = 0
        self._recorded = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._target_limit = max(1, int(self.settings.concurrency * self.settings.target_share))
        self.delivered = 0
        # Of those, delivered through a target's fallback while its breaker was open.
        self.fallen_back = 0
        self._drops: dict[str, DropFolder] = {}
        # Set when something (an in-process ingest, a LISTEN) calls wake() on new work.
        self.listening = False

    def wake(self) -> None:
        """Look for due work now (called after an ingest in the same process)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._recorded.set()

    async def run(self) -> None:
        recorder = asyncio.create_task(self._record_loop())
        reporter = (
            asyncio.create_task(self.resilience.run(self._stopping)) if self.resilience else None
        )
        try:
            await self._claim_loop()
        finally:
            await self._drain()
            self.stop()
            await recorder
            if reporter is not None:
                await reporter
            try:
                await self._flush()
                released = await asyncio.to_thread(self.store.release_leases, self.name)
            except DatabaseUnavailable as exc:
                # Their leases run out, and the deliveries are made again, under the same
                # idempotency keys.
                log.warning(
                    "stopped with %d results not recorded and leases held: %s",
                    len(self._results),
                    exc,
                )
            else:
                if released:
                    log.info("released %d leases on shutdown", released)

    async def _claim_loop(self) -> None:
        reconnect = Reconnect(log)
        while not self._stopping.is_set():
            free = self.settings.concurrency - len(self._in_flight)
            if free <= 0:
                # Every slot is busy: wait for one to free up, or for stop().
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait(
                    {*self._in_flight, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                continue
            try:
                claimed = await asyncio.to_thread(
                    self.store.claim_due_deliveries,
                    self.name,
                    min(free, self.settings.batch_size),
                    self.settings.lease_seconds,
                )
                for delivery in claimed:
                    if self._over_share(delivery):
                        continue
                    task = asyncio.create_task(self._deliver(delivery))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                if not claimed:
                    await self._idle()
            except DatabaseUnavailable as exc:
                await reconnect.pause(exc, self._stopping)
                continue
            reconnect.reached()

    def _over_share(self, delivery: ClaimedDelivery) -> bool:
        """Put ``delivery`` back for a moment if its target already holds its share of slots."""
        if self.resilience is None or self.resilience.store is None:
            return False
        # Calls waiting for quota do not count: a flood of low-tier calls waiting for
        # tokens must not keep higher tiers to the same target from being claimed.
        if self.resilience.on_wire.get(delivery.target, 0) < self._target_limit:
            return False
        self.deferred += 1
        self._deferred.append((delivery.id, time.time() + self.settings.bulkhead_wait))
        self._recorded.set()
        return True

    async def _idle(self) -> None:
        """Wait for a wake-up, the next due delivery or the idle ceiling, whichever is first."""
        self._wake.clear()
        if self._stopping.is_set():
            return
        timeout = self.settings.idle_poll
        if not self._in_flight:
            # Nothing of ours can make work due; sleep until the store says something is.
            due = await asyncio.to_thread(self.store.next_due_at)
            ceiling = self.settings.max_idle if self.listening else self.settings.idle_poll
            timeout = ceiling if due is None else min(ceiling, max(0.0, due - time.time()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _done, pending = await asyncio.wait(self._in_flight, timeout=self.settings.grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _record_loop(self) -> None:
        reconnect = Reconnect(log)
        while not self._stopping.is_set():
            await self._recorded.wait()
            # Let a few more results arrive so they share one transaction.
            await asyncio.sleep(self.settings.flush_interval)
            self._recorded.clear()
            try:
                await self._flush()
            except DatabaseUnavailable as exc:
                self._recorded.set()  # what was not recorded is kept for the next flush
                await reconnect.pause(exc, self._stopping)
                continue
            reconnect.reached()

    def _result(self, result: AttemptResult) -> None:
        self._results.append(result)
        self._recorded.set()

    async def _flush(self) -> None:
        """Record the results and deferrals gathered so far; when the database cannot be
        reached they are kept for the next flush (recording again what a lost connection
        did commit changes nothing: only deliveries still leased are recorded)."""
        if self._deferred and self.resilience is not None:
            deferred, self._deferred = self._deferred, []
            try:
                await asyncio.to_thread(self.resilience.defer, self.name, deferred)
            except DatabaseUnavailable:
                self._deferred[:0] = deferred
                raise
        if not self._results:
            return
        results, self._results = self._results, []
        try:
            await asyncio.to_thread(self.store.record_attempts, self.name, results)
        except DatabaseUnavailable:
            self._results[:0] = results
            raise

    async def _defer(self, delivery: ClaimedDelivery, until: float) -> None:
        """Put ``delivery`` back until ``until`` without an attempt."""
        self.deferred += 1
        if self.resilience is not None and self.resilience.store is not None:
            self._deferred.append((delivery.id, until))
            self._recorded.set()
            return
        # No database to put it back in (the in-memory store): wait here, then release it.
        await asyncio.sleep(max(0.0, min(until - time.time(), self.settings.lease_seconds / 2)))
        self._result(AttemptResult(delivery.id, Outcome.RELEASED, time.time(), 0.0))

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        async with self._slots:
            started = time.time()
            clock = time.perf_counter()
            status_code: int | None = None
            error: CharterError | None = None
            fallback: str | None = None
            try:
                integration = self._integration(delivery)
                target = self._target(delivery, integration)
                request = self._request(delivery, integration, target)
                try:
                    response = await self.connectors[delivery.target].call(request)
                    status_code = response.status_code
                except Deferred as held:
                    until = self._park_until(delivery, target, request, held)
                    if until is not None:
                        await self._defer(delivery, until)
                        return
                    # The target's breaker has been open long enough: the fallback takes it.
                    assert target.fallback is not None
                    fallback = target.fallback.describe()
                    started, clock = time.time(), time.perf_counter()
                    fallback, status_code = await self._fall_back(delivery, target, request)
            except asyncio.CancelledError:
                self._result(
                    AttemptResult(delivery.id, Outcome.RELEASED, started, 0.0, error="stopped")
                )
                raise
            except Deferred as exc:
                # The fallback system's own breaker or quota: wait, like for the target.
                await self._defer(delivery, exc.until)
                return
            except ConnectorError as exc:
                error, status_code = exc, exc.status_code
            except (MappingError, NotFound) as exc:
                error = exc
            latency_ms = (time.perf_counter() - clock) * 1000
            known = self.router.project.integrations.get(delivery.integration)
            policy = known.retry if known is not None else RetryPolicy()
            decision = decide(policy, delivery.attempts + 1, error, self.rng)
            if decision.outcome is Outcome.DELIVERED:
                self.delivered += 1
                if fallback is not None:
                    self.fallen_back += 1
            self._result(
                AttemptResult(
                    delivery_id=delivery.id,
                    outcome=decision.outcome,
                    started_at=started,
                    latency_ms=latency_ms,
                    status_code=status_code,
                    error=decision.reason,
                    next_attempt_at=time.time() + decision.delay
                    if decision.outcome is Outcome.RETRY
                    else None,
                    fallback=fallback,
                )
            )

    def _park_until(
        self, delivery: ClaimedDelivery, target: Target, request: TargetRequest, held: Deferred
    ) -> float | None:
        """Until when ``delivery`` waits, or None when its fallback takes it now."""
        breaker = (
            self.resilience.breaker(delivery.target, request)
            if self.resilience is not None and target.fallback is not None
            else None
        )
        if breaker is None:
            return held.until
        # The view the breaker held the call back with: when the target started failing
        # (a record saved before breakers kept that has only when it last changed state).
        view = breaker.view
        return park_until(target.fallback, held, view.opened_at or view.since, time.time())

    async def _fall_back(
        self, delivery: ClaimedDelivery, target: Target, request: TargetRequest
    ) -> tuple[str, int | None]:
        """Deliver through ``target``'s fallback; returns where it went and the HTTP status."""
        fallback = target.fallback
        assert fallback is not None
        if fallback.to is not None:
            to = fallback.to
            connector = self.connectors.get(to.system)
            mapping = self.router.mappings.get(str(to.mapping))
            if connector is None or mapping is None:
                raise NotFound(
                    f"the fallback of target {delivery.target!r} of delivery {delivery.id} is "
                    f"system {to.system!r} with mapping {to.mapping}, which the project no "
                    "longer has",
                    fix="restore that system and mapping, then redrive the delivery",
                )
            action = to.action or target.action
            response = await connector.call(
                replace(
                    request,
                    method=action.method,
                    path=action.path,
                    body=orjson.dumps(mapping.apply(orjson.loads(delivery.payload))),
                    # Its own key: the backup dedupes retries, never confuses it with
                    # the target's.
                    idempotency_key=delivery.idempotency_key + FALLBACK_KEY_SUFFIX,
                    headers={**request.headers, "x-charter-fallback-for": delivery.target},
                )
            )
            return to.system, response.status_code
        assert fallback.file is not None
        written = await self._file_drop(fallback.file.dir).append(
            delivery.target,
            {
                "delivery_id": delivery.id,
                "event_id": delivery.event_id,
                "integration": delivery.integration,
                "system": delivery.target,
                "method": request.method,
                "path": request.path,
                "idempotency_key": request.idempotency_key,
                "payload": orjson.Fragment(request.body),
            },
        )
        return f"file:{written}", None

    def _file_drop(self, folder: str) -> DropFolder:
        drop = self._drops.get(folder)
        if drop is None:
            # Relative to the project, as the catalog checked it.
            path = self.router.project.root / folder
            drop = self._drops[folder] = DropFolder(path, folder.rstrip("/"))
        return drop

    def _integration(self, delivery: ClaimedDelivery) -> Integration:
        integration = self.router.project.integrations.get(delivery.integration)
        if integration is None or delivery.target not in self.connectors:
            raise NotFound(
                f"delivery {delivery.id} belongs to integration {delivery.integration!r} and "
                f"target {delivery.target!r}, which the project no longer routes",
                fix="restore the integration or its target, then redrive the delivery",
            )
        return integration

    def _target(self, delivery: ClaimedDelivery, integration: Integration) -> Target:
        target = next((t for t in integration.targets if t.system == delivery.target), None)
        if target is None or delivery.mapping not in self.router.mappings:
            raise NotFound(
                f"mapping {delivery.mapping} to {delivery.target!r} of delivery {delivery.id} "
                "is no longer in the project",
                fix="restore that mapping version, then redrive the delivery",
            )
        return target

    def _request(
        self, delivery: ClaimedDelivery, integration: Integration, target: Target
    ) -> TargetRequest:
        mapping = self.router.mappings[delivery.mapping]
        body = orjson.dumps(mapping.apply(orjson.loads(delivery.payload)))
        return TargetRequest(
            method=target.action.method,
            path=target.action.path,
            body=body,
            idempotency_key=delivery.idempotency_key,
            headers={
                "x-charter-event-id": delivery.event_id,
                "x-charter-integration": delivery.integration,
            },
            tier=integration.tier,
            flow=integration.name,
        )

    async def aclose(self) -> None:
        for connector in self.connectors.values():
            await connector.aclose()
