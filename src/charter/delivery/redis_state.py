"""Quota buckets and breakers in Redis, shared by every worker process on every host.

Used when ``CHARTER_REDIS_URL`` is set, on SQLite and PostgreSQL alike: each bucket
and breaker is a JSON value changed in an optimistic transaction (WATCH, MULTI/EXEC)
on Redis's clock, by the same pure functions as :mod:`charter.delivery.shared`'s
states, and copied to the database for the API about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson

from charter.catalog.model import Tier
from charter.delivery import breaker as br
from charter.delivery.breaker import (
    Admission,
    BreakerPolicy,
    BreakerRecord,
    BreakerState,
    Tally,
    Transition,
)
from charter.delivery.quota import BucketState, Lease, QuotaPolicy, allocate, pause
from charter.delivery.shared import transition_row
from charter.errors import StoreError
from charter.store.resilience import BreakerKey, ResilienceStore, UsageRow

if TYPE_CHECKING:
    import redis
    import redis.asyncio

log = logging.getLogger("charter.resilience")

T = TypeVar("T")


REDIS_URL_ENV = "CHARTER_REDIS_URL"
REDIS_PREFIX_ENV = "CHARTER_REDIS_PREFIX"
# A Redis command that takes longer than this counts as Redis out of reach.
REDIS_TIMEOUT_S = 2.0
# Optimistic transactions tried for one change; each failed one means another worker's
# change went through, so running out means a pathological amount of contention.
MAX_WATCH_TRIES = 100
# The turn to copy Redis's state to the database: held at most this long while copying ...
COPY_HOLD_MS = 10_000
# ... and kept this long after a copy, so that one worker copies about once a second.
COPY_EVERY_MS = 800
# Transitions copied per turn (more wait for the next turn).
COPY_BATCH = 500
# While Redis is out of reach, an open breaker's callers look again this much later.
UNREACHABLE_RETRY_S = 1.0


def redis_prefix(project: str) -> str:
    """The default key prefix: one hub's keys apart from another's on the same Redis."""
    return f"charter:{project}:"


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:***@{host}{port}"
    except ValueError:
        return url
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RedisState:
    """Budgets and breakers in Redis, shared by every worker process on every host.

    Each change is an optimistic transaction: ``WATCH`` the key, read its JSON
    value and Redis's clock (``TIME``, one clock for all workers), run the same
    pure function as the other states, and write the result in ``MULTI/EXEC``.
    When another worker changed the key in between, ``EXEC`` fails and the change
    runs again on the new value. A breaker's transitions are appended to a list in
    the same transaction, so they are kept in the order they happened.

    The database stays the record the API and the CLI read: :meth:`flush` adds
    this worker's quota use there, and — one worker at a time, about once a
    second — copies the bucket states, the breaker records and the new
    transitions. Transitions are copied in order and once: rows already in the
    database are skipped, so a copy cut short before its list was trimmed does
    not repeat them.

    When Redis is out of reach, nothing raises past the middleware and no work
    is lost: :meth:`lease` raises :class:`~charter.errors.StoreError` (the
    budget puts its callers back, without an attempt), :meth:`pause` logs and
    forgets the pause, :meth:`observe` and :meth:`probe_result` raise (the
    breaker keeps its last view and logs), and :meth:`admit` answers from the
    last record seen (callers of an open breaker come back a second later).
    Build it with :meth:`connect`, which refuses to start without Redis.
    """

    def __init__(
        self,
        url: str,
        store: ResilienceStore | None = None,
        *,
        prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = safe_url(url)
        self.store = store
        self.prefix = prefix
        self.clock = clock
        # Imported here: a hub without Redis does not pay for loading the client.
        import redis.asyncio
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError, WatchError
        from redis.retry import Retry

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._conflict: type[Exception] = WatchError
        self.client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        # The last record seen of each breaker: what the worker goes by without Redis.
        self.records: dict[BreakerKey, BreakerRecord] = {}
        self._buckets = f"{prefix}buckets"
        self._breakers = f"{prefix}breakers"
        self._transitions = f"{prefix}transitions"
        self._turn = f"{prefix}copy-turn"
        self._token = uuid.uuid4().hex.encode()
        # Quota use not yet in the database (it was out of reach), by (system, flow).
        self._unsaved: dict[tuple[str, str], UsageRow] = {}
        self._down = False

    @classmethod
    def connect(cls, url: str, store: ResilienceStore | None = None, *, prefix: str) -> RedisState:
        """A state on the Redis at ``url``, checked with a ``PING``; raises a one-line
        :class:`~charter.errors.StoreError` naming the URL and the fix when it cannot be used.

        Budgets and breakers that Redis does not have yet start from the database's
        copy, so a pause or an open breaker survives a Redis without persistence.
        """
        shown = safe_url(url)
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise StoreError(
                f"{REDIS_URL_ENV} {shown!r} is not a Redis URL",
                fix="use redis://HOST:PORT/DB, rediss:// for TLS or unix:///path.sock; "
                f"or unset {REDIS_URL_ENV} to keep quotas and breakers in the database",
            )
        import redis
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError
        from redis.retry import Retry

        try:
            client = redis.Redis.from_url(
                url,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise StoreError(
                f"{REDIS_URL_ENV} {shown!r} cannot be read: {_first_line(exc)}",
                fix="use redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0",
            ) from exc
        try:
            with client:
                client.ping()
                state = cls(url, store, prefix=prefix)
                state._seed(client)
        except (RedisError, OSError) as exc:
            raise StoreError(
                f"Redis at {shown} ({REDIS_URL_ENV}) cannot be used for quotas and "
                f"breakers: {_first_line(exc)}",
                fix=f"start Redis there, correct {REDIS_URL_ENV}, or unset it to keep "
                "quotas and breakers in the database",
            ) from exc
        return state

    def _seed(self, client: redis.Redis) -> None:
        if self.store is None:
            return
        pipe = client.pipeline(transaction=False)
        for system, state in self.store.load_buckets().items():
            if state:
                pipe.set(self._bucket_key(system), orjson.dumps(state), nx=True)
                pipe.sadd(self._buckets, system)
        for key, record in self.store.load_breakers().items():
            if record:
                pipe.set(self._breaker_key(key), orjson.dumps(record), nx=True)
                pipe.sadd(self._breakers, orjson.dumps([key.system, key.endpoint]))
        pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()

    def _bucket_key(self, system: str) -> str:
        return f"{self.prefix}bucket:{system}"

    def _breaker_key(self, key: BreakerKey) -> str:
        return f"{self.prefix}breaker:{key}"

    def _unreachable(self, exc: BaseException) -> StoreError:
        if not self._down:
            self._down = True
            log.warning("Redis at %s is out of reach: %s", self.url, _first_line(exc))
        return StoreError(
            f"Redis at {self.url} is out of reach: {_first_line(exc)}",
            fix=f"start Redis or correct {REDIS_URL_ENV}; callers wait meanwhile",
        )

    def _reachable(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis at %s answers again", self.url)

    async def _change(
        self,
        name: str,
        index: tuple[str, str | bytes],
        step: Callable[[Any, float], tuple[Mapping[str, Any], T, list[dict[str, Any]]]],
    ) -> T:
        """Run ``step(value or None, now)`` on the key ``name`` in an optimistic transaction:
        store the value it returns (adding the key to its ``index`` set when new) and append
        the transitions it returns."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for _ in range(MAX_WATCH_TRIES):
                    try:
                        await pipe.watch(name)
                        raw = await pipe.get(name)
                        seconds, micros = await pipe.time()
                        value, result, transitions = step(
                            orjson.loads(raw) if raw is not None else None,
                            seconds + micros / 1_000_000,
                        )
                        stored = orjson.dumps(value)
                        if stored == raw and not transitions:
                            self._reachable()
                            return result
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(name, stored)
                        if raw is None:
                            pipe.sadd(*index)
                        if transitions:
                            pipe.rpush(self._transitions, *map(orjson.dumps, transitions))
                        await pipe.execute()
                        self._reachable()
                        return result
                    except self._conflict:
                        continue
        except self._errors as exc:
            raise self._unreachable(exc) from exc
        raise StoreError(
            f"{name} in Redis at {self.url} was changed by other workers "
            f"{MAX_WATCH_TRIES} times in a row",
            fix="callers wait and try again; if it lasts, run fewer workers per Redis",
        )

    async def lease(
        self, system: str, policy: QuotaPolicy, worker: str, demand: Mapping[Tier, int]
    ) -> Lease:
        demand = dict(demand)

        def step(data: Any, now: float) -> tuple[dict[str, Any], Lease, list[dict[str, Any]]]:
            bucket = BucketState.from_json(data) if data else BucketState.full(policy, now)
            bucket, lease = allocate(bucket, policy, demand, worker, now)
            return bucket.to_json(), lease, []

        return await self._change(self._bucket_key(system), (self._buckets, system), step)

    async def pause(self, system: str, policy: QuotaPolicy, until: float) -> None:
        def step(data: Any, now: float) -> tuple[dict[str, Any], None, list[dict[str, Any]]]:
            bucket = BucketState.from_json(data) if data else BucketState.full(policy, now)
            return pause(bucket, policy, until, now).to_json(), None, []

        try:
            await self._change(self._bucket_key(system), (self._buckets, system), step)
        except StoreError as exc:
            # The 429 still holds this delivery back; other workers find out by their own.
            log.warning("the pause of %s until %.3f is not shared: %s", system, until, exc)

    async def _breaker(
        self,
        key: BreakerKey,
        step: Callable[[BreakerRecord, float], tuple[BreakerRecord, T, list[Transition]]],
    ) -> T:
        seen: list[BreakerRecord] = []

        def change(data: Any, now: float) -> tuple[dict[str, Any], T, list[dict[str, Any]]]:
            record = BreakerRecord.from_json(data) if data else BreakerRecord(since=now)
            record, result, transitions = step(record, now)
            seen.append(record)
            rows = [
                {"system": key.system, "endpoint": key.endpoint, **transition_row(t)}
                for t in transitions
            ]
            return record.to_json(), result, rows

        member = orjson.dumps([key.system, key.endpoint])
        result = await self._change(self._breaker_key(key), (self._breakers, member), change)
        self.records[key] = seen[-1]
        return result

    async def observe(
        self, key: BreakerKey, policy: BreakerPolicy, tally: Tally, worker: str
    ) -> BreakerRecord:
        def step(
            record: BreakerRecord, now: float
        ) -> tuple[BreakerRecord, BreakerRecord, list[Transition]]:
            record, transitions = br.observe(record, policy, str(key), tally, worker, now)
            return record, record, transitions

        return await self._breaker(key, step)

    async def admit(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str
    ) -> tuple[BreakerRecord, Admission]:
        def step(
            record: BreakerRecord, now: float
        ) -> tuple[BreakerRecord, tuple[BreakerRecord, Admission], list[Transition]]:
            record, admission, transitions = br.admit(record, policy, str(key), worker, now)
            return record, (record, admission), transitions

        try:
            return await self._breaker(key, step)
        except StoreError:
            # Go by the last record seen: closed lets calls through, anything else
            # keeps them waiting (no probe can be claimed without Redis).
            record = self.records.get(key, BreakerRecord())
            if record.state is BreakerState.CLOSED:
                return record, Admission(True)
            return record, Admission(False, retry_at=self.clock() + UNREACHABLE_RETRY_S)

    async def probe_result(
        self, key: BreakerKey, policy: BreakerPolicy, worker: str, ok: bool, error: str | None
    ) -> BreakerRecord:
        def step(
            record: BreakerRecord, now: float
        ) -> tuple[BreakerRecord, BreakerRecord, list[Transition]]:
            record, transitions = br.probe_result(record, policy, str(key), worker, ok, error, now)
            return record, record, transitions

        return await self._breaker(key, step)

    async def flush(self, usage: list[UsageRow]) -> None:
        """Add this worker's quota use to the database; when it is this worker's turn,
        copy the budgets, breakers and new transitions there too. Never raises: what
        cannot be written now is written by a later flush."""
        if self.store is None:
            return
        for row in usage:
            earlier = self._unsaved.get((row.system, row.flow))
            if earlier is not None:
                row = replace(
                    row,
                    granted=earlier.granted + row.granted,
                    waited_s=earlier.waited_s + row.waited_s,
                    deferred=earlier.deferred + row.deferred,
                    rate_limited=earlier.rate_limited + row.rate_limited,
                )
            self._unsaved[(row.system, row.flow)] = row
        if self._unsaved:
            try:
                await asyncio.to_thread(self.store.add_usage, list(self._unsaved.values()))
                self._unsaved = {}
            except Exception as exc:  # the database is out of reach: keep it for later
                log.warning("quota use cannot be saved yet: %s", _first_line(exc))
        try:
            await self.copy()
        except Exception as exc:  # the next turn copies it
            log.warning("quotas and breakers cannot be copied from Redis: %s", _first_line(exc))

    async def copy(self) -> bool:
        """Copy Redis's budgets, breakers and new transitions to the database, if it is this
        worker's turn (one worker at a time); True when it copied."""
        if self.store is None:
            return False
        try:
            if not await self.client.set(self._turn, self._token, nx=True, px=COPY_HOLD_MS):
                return False
            pending = await self.client.lrange(self._transitions, 0, COPY_BATCH - 1)
            systems = sorted(_text(s) for s in await self.client.smembers(self._buckets))
            keys = sorted(
                (BreakerKey(*orjson.loads(m)) for m in await self.client.smembers(self._breakers)),
                key=str,
            )
            names = [self._bucket_key(s) for s in systems] + [self._breaker_key(k) for k in keys]
            values = await self.client.mget(names) if names else []
        except self._errors as exc:
            raise self._unreachable(exc) from exc
        self._reachable()
        buckets = {s: orjson.loads(v) for s, v in zip(systems, values, strict=False) if v}
        records = {
            k: orjson.loads(v) for k, v in zip(keys, values[len(systems) :], strict=True) if v
        }
        rows = [orjson.loads(p) for p in pending]
        try:
            await asyncio.to_thread(self._record, buckets, records, rows)
        except BaseException:
            # Give the turn back at once: the next flush, here or elsewhere, tries again.
            with contextlib.suppress(*self._errors):
                await self._end_turn(0, 1)
            raise
        with contextlib.suppress(*self._errors):
            await self._end_turn(len(pending), COPY_EVERY_MS)
        return True

    def _record(
        self,
        buckets: dict[str, dict[str, Any]],
        records: dict[BreakerKey, dict[str, Any]],
        rows: list[dict[str, Any]],
    ) -> None:
        assert self.store is not None
        transitions: dict[BreakerKey, list[dict[str, Any]]] = {}
        if rows:
            written = self._written(rows)
            for row in rows:
                key = BreakerKey(row["system"], row["endpoint"])
                if (str(key), *(row[c] for c in _IDENTITY)) in written:
                    continue
                t = {c: row[c] for c in ("from_state", "to_state", "at", "reason", "worker")}
                transitions.setdefault(key, []).append(t)
        self.store.save_snapshot(buckets, records, transitions, [])

    def _written(self, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        """Those of ``rows`` the database has already (a copy cut short before its trim)."""
        assert self.store is not None
        found: set[tuple[Any, ...]] = set()
        for system in {r["system"] for r in rows}:
            mine = [r for r in rows if r["system"] == system]
            earliest = min(r["at"] for r in mine)
            for row in self.store.transitions(system, limit=2 * len(mine) + 100):
                if row["at"] >= earliest:
                    found.add((row["key"], *(row[c] for c in _IDENTITY)))
        return found

    async def _end_turn(self, trim: int, keep_ms: int) -> None:
        """Drop the first ``trim`` transitions (copied) and keep the turn ``keep_ms`` more,
        if the turn is still this worker's (if it ran out, the next copy skips them)."""
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._turn)
                if await pipe.get(self._turn) != self._token:
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                if trim:
                    pipe.ltrim(self._transitions, trim, -1)
                pipe.pexpire(self._turn, keep_ms)
                await pipe.execute()
            except self._conflict:
                return


# What makes a transition row the same one: its key, then these columns.
_IDENTITY = ("from_state", "to_state", "at", "reason", "worker")
