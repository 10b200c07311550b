"""Where quota buckets and breakers live: this process, or rows every worker locks.

:class:`LocalState` keeps them in memory — right when one process is the only
caller, as in the embedded SQLite mode (``charter up`` holds the database file
alone) and in tests — and writes snapshots to the database for ``charter
quota`` and the API, and to start from after a restart. :class:`DatabaseState`
changes a row under ``SELECT ... FOR UPDATE`` on the database clock for every
lease and breaker change, so all ``charter worker`` processes on PostgreSQL
share one bucket and one breaker per system. :class:`~charter.delivery.redis_state.RedisState`
keeps them in Redis when ``CHARTER_REDIS_URL`` is set, on SQLite and PostgreSQL alike.
All three run the same pure functions (:mod:`charter.delivery.quota`,
:mod:`charter.delivery.breaker`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from charter.catalog.model import Tier
from charter.delivery import breaker as br
from charter.delivery.breaker import (
    Admission,
    BreakerPolicy,
    BreakerRecord,
    Tally,
    Transition,
)
from charter.delivery.quota import BucketState, Lease, QuotaPolicy, allocate, pause
from charter.store.resilience import BreakerKey, ResilienceStore, UsageRow

log = logging.getLogger("charter.resilience")


def transition_row(t: Transition) -> dict[str, Any]:
    """A transition as the ``breaker_transitions`` row it is recorded as."""
    return {
        "from_state": t.from_state.value,
        "to_state": t.to_state.value,
        "at": t.at,
        "reason": t.reason,
        "worker": t.worker,
    }


class SharedState(Protocol):
    """Budgets and breakers as every caller of a system sees them."""

    async def lease(
        self, system: str, policy: QuotaPolicy, worker: str, demand: Mapping[Tier, int]
    ) -> Lease: ...

    async def pause(self, system: str, policy: QuotaPolicy, until: float) -> None: ...

    async def observe(
        self, key: BreakerKey, policy: BreakerPolicy, tally: Tally, worker: str
    ) -> BreakerRecord: ...

    async def admit(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str
    ) -> tuple[BreakerRecord, Admission]: ...

    async def probe_result(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str, ok: bool, error: str | None
    ) -> BreakerRecord: ...

    async def flush(self, usage: list[UsageRow]) -> None: ...


class LocalState:
    """Budgets and breakers of a process that is the only caller of its systems."""

    def __init__(
        self, store: ResilienceStore | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.clock = clock
        self.buckets: dict[str, BucketState] = {}
        self.records: dict[BreakerKey, BreakerRecord] = {}
        self._changed_buckets: set[str] = set()
        self._changed_records: set[BreakerKey] = set()
        self._transitions: dict[BreakerKey, list[dict[str, Any]]] = {}

    def load(self) -> None:
        """Start from what the last process saved (a pause or an open breaker survive)."""
        if self.store is None:
            return
        for system, state in self.store.load_buckets().items():
            if state:
                self.buckets[system] = BucketState.from_json(state)
        for key, record in self.store.load_breakers().items():
            if record:
                self.records[key] = BreakerRecord.from_json(record)

    def _bucket(self, system: str, policy: QuotaPolicy, now: float) -> BucketState:
        found = self.buckets.get(system)
        return found if found is not None else BucketState.full(policy, now)

    async def lease(
        self, system: str, policy: QuotaPolicy, worker: str, demand: Mapping[Tier, int]
    ) -> Lease:
        now = self.clock()
        self.buckets[system], lease = allocate(
            self._bucket(system, policy, now), policy, demand, worker, now
        )
        self._changed_buckets.add(system)
        return lease

    async def pause(self, system: str, policy: QuotaPolicy, until: float) -> None:
        now = self.clock()
        self.buckets[system] = pause(self._bucket(system, policy, now), policy, until, now)
        self._changed_buckets.add(system)

    def _keep(self, key: BreakerKey, record: BreakerRecord, transitions: list[Transition]) -> None:
        if record != self.records.get(key):
            self.records[key] = record
            self._changed_records.add(key)
        if transitions:
            self._transitions.setdefault(key, []).extend(transition_row(t) for t in transitions)

    async def observe(
        self, key: BreakerKey, policy: BreakerPolicy, tally: Tally, worker: str
    ) -> BreakerRecord:
        record = self.records.get(key, BreakerRecord())
        record, transitions = br.observe(record, policy, str(key), tally, worker, self.clock())
        self._keep(key, record, transitions)
        return record

    async def admit(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str
    ) -> tuple[BreakerRecord, Admission]:
        record = self.records.get(key, BreakerRecord())
        record, admission, transitions = br.admit(record, policy, str(key), worker, self.clock())
        self._keep(key, record, transitions)
        return record, admission

    async def probe_result(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str, ok: bool, error: str | None
    ) -> BreakerRecord:
        record = self.records.get(key, BreakerRecord())
        record, transitions = br.probe_result(
            record, policy, str(key), worker, ok, error, self.clock()
        )
        self._keep(key, record, transitions)
        return record

    async def flush(self, usage: list[UsageRow]) -> None:
        """Save what changed since the last flush (in a thread: the loop keeps serving)."""
        if self.store is None:
            return
        buckets = {s: self.buckets[s].to_json() for s in self._changed_buckets}
        records = {k: self.records[k].to_json() for k in self._changed_records}
        transitions, self._transitions = self._transitions, {}
        self._changed_buckets, self._changed_records = set(), set()
        await asyncio.to_thread(self.store.save_snapshot, buckets, records, transitions, usage)


class DatabaseState:
    """Budgets and breakers in rows every worker process locks (PostgreSQL)."""

    def __init__(self, store: ResilienceStore) -> None:
        self.store = store

    async def lease(
        self, system: str, policy: QuotaPolicy, worker: str, demand: Mapping[Tier, int]
    ) -> Lease:
        demand = dict(demand)

        def change(state: Mapping[str, Any] | None, now: float) -> tuple[dict[str, Any], Lease]:
            bucket = BucketState.from_json(state) if state else BucketState.full(policy, now)
            bucket, lease = allocate(bucket, policy, demand, worker, now)
            return bucket.to_json(), lease

        return await asyncio.to_thread(self.store.change_bucket, system, change)

    async def pause(self, system: str, policy: QuotaPolicy, until: float) -> None:
        def change(state: Mapping[str, Any] | None, now: float) -> tuple[dict[str, Any], None]:
            bucket = BucketState.from_json(state) if state else BucketState.full(policy, now)
            return pause(bucket, policy, until, now).to_json(), None

        await asyncio.to_thread(self.store.change_bucket, system, change)

    async def _change(
        self,
        key: BreakerKey,
        step: Callable[[BreakerRecord, float], tuple[BreakerRecord, Any, list[Transition]]],
    ) -> Any:
        def change(
            data: Mapping[str, Any] | None, now: float
        ) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
            record = BreakerRecord.from_json(data) if data else BreakerRecord(since=now)
            record, result, transitions = step(record, now)
            return record.to_json(), result, [transition_row(t) for t in transitions]

        return await asyncio.to_thread(self.store.change_breaker, key, change)

    async def observe(
        self, key: BreakerKey, policy: BreakerPolicy, tally: Tally, worker: str
    ) -> BreakerRecord:
        def step(
            record: BreakerRecord, now: float
        ) -> tuple[BreakerRecord, BreakerRecord, list[Transition]]:
            record, transitions = br.observe(record, policy, str(key), tally, worker, now)
            return record, record, transitions

        found: BreakerRecord = await self._change(key, step)
        return found

    async def admit(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str
    ) -> tuple[BreakerRecord, Admission]:
        def step(
            record: BreakerRecord, now: float
        ) -> tuple[BreakerRecord, tuple[BreakerRecord, Admission], list[Transition]]:
            record, admission, transitions = br.admit(record, policy, str(key), worker, now)
            return record, (record, admission), transitions

        found: tuple[BreakerRecord, Admission] = await self._change(key, step)
        return found

    async def probe_result(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str, ok: bool, error: str | None
    ) -> BreakerRecord:
        def step(
            record: BreakerRecord, now: float
        ) -> tuple[BreakerRecord, BreakerRecord, list[Transition]]:
            record, transitions = br.probe_result(record, policy, str(key), worker, ok, error, now)
            return record, record, transitions

        found: BreakerRecord = await self._change(key, step)
        return found

    async def flush(self, usage: list[UsageRow]) -> None:
        await asyncio.to_thread(self.store.add_usage, usage)
