"""A simulated CRM: a source system that pushes closed deals to the hub as CloudEvents webhooks.

Batches are delivered as `charter.sim._push` describes: each with its own
Idempotency-Key, retried with the same key and bytes until the hub acknowledges
or refuses it for good, never dropped.

``/admin/fault`` takes two faults of the CRM's own: ``paused`` holds pushing
back, and ``schema_version`` switches the deal object new deals are made in
(see `charter.sim._deals`). The targets' faults (outage, rates, latency,
trickle, resets) strike its business endpoint, ``GET /deals/{id}``. Its fault
answers list ``paused`` and only the faults that differ from the start.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._deals import SCHEMA_VERSIONS, DealFactory, deal_closed_event, rfc3339_now
from charter.sim._faults import FAULT_OPTIONS, FaultInjector, Faults
from charter.sim._http import (
    BodyError,
    JSONAnswer,
    Option,
    http_error,
    is_integer,
    is_number,
    parse_options,
    problem,
    read_json,
)
from charter.sim._push import EventPusher, PushCounters

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
DEFAULT_BATCH_SIZE = 50

GENERATE_OPTIONS = {
    "count": Option(lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "batch_size": Option(lambda v: v is None or (is_integer(v) and v >= 1), "an integer >= 1"),
    "rate_per_s": Option(lambda v: v is None or (is_number(v) and v > 0), "null or a number > 0"),
    "run": Option(lambda v: v is None or (isinstance(v, str) and v != ""), "a non-empty string"),
}


@dataclass(frozen=True)
class CrmFaults(Faults):
    """The targets' faults plus whether pushing is paused and which deal object is sent."""

    paused: bool = False
    schema_version: int = 1


CRM_FAULT_OPTIONS = {
    **FAULT_OPTIONS,
    "paused": Option(lambda v: isinstance(v, bool), "true or false"),
    "schema_version": Option(
        lambda v: is_integer(v) and v in SCHEMA_VERSIONS,
        "1 (current deals) or 2 (adds 'channel' and the stage 'closed_won_partner')",
    ),
}


@dataclass
class _Counters:
    requested: int = 0
    generated: int = 0


class _Crm:
    def __init__(
        self,
        hub_url: str | None,
        *,
        seed: int,
        max_in_flight: int,
        transport: httpx.AsyncBaseTransport | None,
        timeout_s: float,
        retry_base_s: float,
        retry_max_s: float,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout_s)
        self._factory = DealFactory(seed)
        self._deals: dict[str, dict[str, Any]] = {}
        self._deal_count = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._runs: set[asyncio.Task[None]] = set()
        self._pusher = (
            EventPusher(
                f"{hub_url.rstrip('/')}/v1/systems/crm/events",
                self._client,
                retry_base_s=retry_base_s,
                retry_max_s=retry_max_s,
                gate=self._resumed,
            )
            if hub_url
            else None
        )
        self.counters = _Counters()
        # Answers list `paused` and only the faults that are set, so that a paused CRM
        # still answers {"paused": true} as it did before it took the targets' faults.
        self.faults = FaultInjector(
            "CRM", CrmFaults(), CRM_FAULT_OPTIONS, rng=rng, clock=clock, shown=("paused",)
        )

    async def close(self) -> None:
        """Stop pushing and release the HTTP client; unacknowledged batches stay pending."""
        for task in self._runs:
            task.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        await self._client.aclose()

    # -- pushing ------------------------------------------------------------------

    def _start_run(self, run: str, count: int, batch_size: int, rate_per_s: float | None) -> None:
        self.counters.requested += count
        task = asyncio.create_task(self._push_run(run, count, batch_size, rate_per_s))
        self._runs.add(task)
        task.add_done_callback(self._run_finished)

    def _run_finished(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            assert self._pusher is not None  # runs start only with a hub to push to
            self._pusher.counters.last_error = f"a run stopped: {exc!r}"

    async def _push_run(
        self, run: str, count: int, batch_size: int, rate_per_s: float | None
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.TaskGroup() as batches:
            for first in range(0, count, batch_size):
                if rate_per_s is not None:
                    await asyncio.sleep(max(0.0, started + first / rate_per_s - loop.time()))
                await self._resumed.wait()
                events = self._new_batch(run, first, min(count, first + batch_size))
                await self._slots.acquire()
                batches.create_task(self._deliver(events))

    def _new_batch(self, run: str, first: int, end: int) -> list[dict[str, Any]]:
        now = rfc3339_now()
        version = self.faults.current.schema_version
        events = []
        for n in range(first + 1, end + 1):
            self._deal_count += 1
            deal = self._factory.deal(self._deal_count, now, version)
            self._deals[deal["id"]] = deal
            events.append(deal_closed_event(run, n, deal, now))
        self.counters.generated += len(events)
        return events

    async def _deliver(self, events: list[dict[str, Any]]) -> None:
        """Send one batch until the hub acknowledges or refuses it; holds one in-flight slot."""
        assert self._pusher is not None
        try:
            await self._pusher.deliver(orjson.dumps(events), BATCH_CONTENT_TYPE, len(events))
        finally:
            self._slots.release()

    # -- endpoints ------------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        if self._pusher is None:
            return problem(
                409, "no-hub", "No hub configured", "start the CRM with a hub URL to push events"
            )
        try:
            options = parse_options(read_json(await request.body()), GENERATE_OPTIONS)
            if "count" not in options:
                raise BodyError("'count' is required")
        except BodyError as exc:
            return problem(422, "invalid-generate", "Invalid generate request", str(exc))
        run = options.get("run") or uuid.uuid4().hex[:8]
        batch_size = options.get("batch_size") or DEFAULT_BATCH_SIZE
        self._start_run(run, options["count"], batch_size, options.get("rate_per_s"))
        return JSONAnswer({"run": run, "count": options["count"]}, status_code=202)

    async def report(self, request: Request) -> Response:
        counters = self.counters
        pushed = self._pusher.counters if self._pusher else PushCounters()
        return JSONAnswer(
            {
                **asdict(counters),
                **asdict(pushed),
                "pending": counters.generated - pushed.acknowledged - pushed.rejected,
                "running": bool(self._runs),
            }
        )

    async def get_deal(self, request: Request) -> Response:
        number = request.path_params["id"]

        def found() -> Response:
            deal = self._deals.get(number)
            if deal is None:
                return problem(404, "deal-not-found", "No such deal", f"no deal {number!r}")
            return JSONAnswer(deal)

        return await self.faults.answer(found)

    def faults_changed(self, faults: CrmFaults) -> None:
        if faults.paused:
            self._resumed.clear()
        else:
            self._resumed.set()


def create_crm_app(
    hub_url: str | None,
    *,
    seed: int = 7,
    max_in_flight: int = 4,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 10.0,
    retry_base_s: float = 0.1,
    retry_max_s: float = 2.0,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """Build a simulated CRM that pushes ``deal.closed`` CloudEvents to ``{hub_url}``.

    ``POST /admin/generate`` starts a background run; batches go to
    ``{hub_url}/v1/systems/crm/events``, at most ``max_in_flight`` at a time
    across all runs, retried after ``retry_base_s`` doubling up to
    ``retry_max_s`` (or the hub's Retry-After). ``transport`` replaces the
    network, for tests. Deals are the same for the same ``seed``; ``rng`` and
    ``clock`` drive the error and reset rates and the rate-limit window of
    ``GET /deals/{id}``. Runs are cancelled at shutdown; what was not
    acknowledged by then is not resent.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    crm = _Crm(
        hub_url,
        seed=seed,
        max_in_flight=max_in_flight,
        transport=transport,
        timeout_s=timeout_s,
        retry_base_s=retry_base_s,
        retry_max_s=retry_max_s,
        rng=rng or random.Random(seed),
        clock=clock,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await crm.close()

    return Starlette(
        routes=[
            Route("/admin/generate", crm.generate, methods=["POST"]),
            Route("/admin/report", crm.report, methods=["GET"]),
            *crm.faults.routes(crm.faults_changed),
            Route("/deals/{id}", crm.get_deal, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
