"""A simulated warehouse: takes shipment requests, dispatches them later and tells the hub.

``POST /shipments`` is applied once per Idempotency-Key and answered 202 at once;
the shipment is dispatched ``dispatch_delay_s`` later, and its
``shipment.dispatched`` CloudEvent is pushed to the hub as `charter.sim._push`
describes: retried with the same key and bytes until acknowledged or refused
for good, never dropped. ``hold`` keeps every shipment waiting, so that a
process waiting for the dispatch runs into its timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._deals import rfc3339_now
from charter.sim._faults import FAULT_OPTIONS, Faults
from charter.sim._http import JSONAnswer, Option, http_error, is_number, non_empty_string
from charter.sim._push import EventPusher, PushCounters
from charter.sim._target import Outcome, Refused, Shape, Target

EVENT_CONTENT_TYPE = "application/cloudevents+json"
CARRIERS = ("DHL", "UPS")

SHIPMENT = Shape(
    "shipment",
    {
        "order_ref": Option(non_empty_string, "a non-empty string"),
        "lines": Option(lambda v: v is None or isinstance(v, list), "a list, when given"),
    },
)


@dataclass(frozen=True)
class WarehouseFaults(Faults):
    """The ERP's faults plus how long dispatching takes, and whether it is held."""

    dispatch_delay_s: float = 0.5
    hold: bool = False


WAREHOUSE_FAULT_OPTIONS = {
    **FAULT_OPTIONS,
    "dispatch_delay_s": Option(lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "hold": Option(lambda v: isinstance(v, bool), "true or false"),
}


def carrier_and_tracking(seed: int, number: str) -> tuple[str, str]:
    """The carrier and tracking number of shipment ``number``, the same for the same seed."""
    rng = random.Random(f"{seed}:shipment:{number}")
    carrier = rng.choice(CARRIERS)
    if carrier == "DHL":
        return carrier, "JJD" + "".join(rng.choices("0123456789", k=18))
    return carrier, "1Z" + "".join(rng.choices("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ", k=16))


def shipment_dispatched_event(shipment: dict[str, Any], time: str) -> dict[str, Any]:
    """The ``shipment.dispatched`` CloudEvent (1.0, structured JSON) for a dispatched shipment."""
    return {
        "specversion": "1.0",
        "id": f"wh-{shipment['id']}",
        "source": "warehouse.sim",
        "type": "shipment.dispatched",
        "time": time,
        "datacontenttype": "application/json",
        "subject": shipment["order_ref"],
        "data": {
            "shipment_id": shipment["id"],
            "order_ref": shipment["order_ref"],
            "carrier": shipment["carrier"],
            "tracking": shipment["tracking"],
        },
    }


@dataclass
class _Shipments:
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)
    dispatched: int = 0

    def shipment(self, number: str) -> dict[str, Any]:
        shipment = self.shipments.get(number)
        if shipment is None:
            raise Refused(404, "shipment-not-found", "No such shipment", f"no shipment {number!r}")
        return shipment

    def request(self, key: str, body: dict[str, Any]) -> tuple[str, Outcome]:
        number = f"SHP-{len(self.shipments) + 1:06d}"
        self.shipments[number] = {
            "id": number,
            "order_ref": body["order_ref"],
            "lines": body.get("lines") or [],
            "status": "requested",
            "idempotency_key": key,
        }
        answer = {"id": number, "status": "requested", "order_ref": body["order_ref"]}
        return number, Outcome(202, answer)


class _Warehouse:
    def __init__(
        self,
        hub_url: str | None,
        *,
        seed: int,
        dispatch_delay_s: float,
        rng: random.Random,
        clock: Callable[[], float],
        max_in_flight: int,
        transport: httpx.AsyncBaseTransport | None,
        timeout_s: float,
        retry_base_s: float,
        retry_max_s: float,
    ) -> None:
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout_s)
        self._pusher = (
            EventPusher(
                f"{hub_url.rstrip('/')}/v1/systems/warehouse/events",
                self._client,
                retry_base_s=retry_base_s,
                retry_max_s=retry_max_s,
            )
            if hub_url
            else None
        )
        self._seed = seed
        self._slots = asyncio.Semaphore(max_in_flight)
        self._released = asyncio.Event()
        self._released.set()
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._pushes: set[asyncio.Task[None]] = set()
        self.target = Target(
            "warehouse",
            _Shipments,
            faults=WarehouseFaults(dispatch_delay_s=dispatch_delay_s),
            fault_options=WAREHOUSE_FAULT_OPTIONS,
            rng=rng,
            clock=clock,
            extra_report=self._report,
            on_fault_change=self._faults_changed,
        )

    @property
    def _shipments(self) -> _Shipments:
        return self.target.ledger.state

    async def close(self) -> None:
        """Stop timers and pushes and release the HTTP client; nothing is resent later."""
        tasks = [*self._timers.values(), *self._pushes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def _faults_changed(self, faults: WarehouseFaults) -> None:
        if faults.hold:
            self._released.clear()
        else:
            self._released.set()

    # -- dispatching ---------------------------------------------------------------------

    def _schedule(self, number: str) -> None:
        task = asyncio.create_task(self._dispatch_when_due(number))
        self._timers[number] = task
        task.add_done_callback(lambda _: self._timers.pop(number, None))

    async def _dispatch_when_due(self, number: str) -> None:
        # The delay is read when the wait starts: a change applies to shipments
        # requested after it, and to held ones once released.
        while True:
            await self._released.wait()
            await asyncio.sleep(self.target.faults.current.dispatch_delay_s)
            if self._released.is_set():
                break
        self._dispatch(number)

    def _dispatch(self, number: str) -> None:
        shipments = self._shipments
        shipment = shipments.shipments[number]
        if shipment["status"] != "requested":
            return
        shipment["carrier"], shipment["tracking"] = carrier_and_tracking(self._seed, number)
        shipment["status"] = "dispatched"
        shipment["push"] = "pending" if self._pusher else "unsent"
        shipments.dispatched += 1
        if self._pusher is not None:
            event = shipment_dispatched_event(shipment, rfc3339_now())
            task = asyncio.create_task(self._push(self._pusher, shipment, event))
            self._pushes.add(task)
            task.add_done_callback(self._push_finished)

    def _push_finished(self, task: asyncio.Task[None]) -> None:
        self._pushes.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            assert self._pusher is not None  # pushes start only with a hub to push to
            self._pusher.counters.last_error = f"a push stopped: {exc!r}"

    async def _push(
        self, pusher: EventPusher, shipment: dict[str, Any], event: dict[str, Any]
    ) -> None:
        async with self._slots:
            acknowledged = await pusher.deliver(orjson.dumps(event), EVENT_CONTENT_TYPE, 1)
        shipment["push"] = "acknowledged" if acknowledged else "refused"

    # -- endpoints -------------------------------------------------------------------------

    async def create_shipment(self, request: Request) -> Response:
        def request_shipment(shipments: _Shipments, key: str, body: dict[str, Any]) -> Outcome:
            number, outcome = shipments.request(key, body)
            self._schedule(number)
            return outcome

        return await self.target.idempotent(request, SHIPMENT.check, request_shipment)

    async def get_shipment(self, request: Request) -> Response:
        number = request.path_params["id"]
        return await self.target.read(request, lambda shipments: shipments.shipment(number))

    async def dispatch_now(self, request: Request) -> Response:
        waiting = [
            number
            for number, shipment in self._shipments.shipments.items()
            if shipment["status"] == "requested"
        ]
        for number in waiting:
            if (timer := self._timers.get(number)) is not None:
                timer.cancel()
            self._dispatch(number)
        return JSONAnswer({"dispatched": len(waiting)})

    def _report(self, shipments: _Shipments) -> dict[str, Any]:
        pushed = self._pusher.counters if self._pusher else PushCounters()
        return {
            "shipments": len(shipments.shipments),
            "dispatched": shipments.dispatched,
            "pushed_acknowledged": pushed.acknowledged,
            "push_rejected": pushed.rejected,
            "push_pending": shipments.dispatched - pushed.acknowledged - pushed.rejected,
            "push_retries": pushed.retries,
            "last_push_error": pushed.last_error,
        }


def create_warehouse_app(
    hub_url: str | None,
    *,
    seed: int = 7,
    dispatch_delay_s: float = 0.5,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_in_flight: int = 4,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 10.0,
    retry_base_s: float = 0.1,
    retry_max_s: float = 2.0,
) -> Starlette:
    """Build a simulated warehouse that reports dispatched shipments to ``{hub_url}``.

    ``POST /shipments`` ``{"order_ref": str, "lines": [...]}`` answers 202
    ``{"id": "SHP-000001", "status": "requested", ...}`` and dispatches it
    ``dispatch_delay_s`` later (a runtime fault, with ``hold``); ``POST
    /admin/dispatch`` dispatches every waiting shipment now, held or not;
    ``GET /shipments/{id}`` shows one, with its carrier, tracking number and
    ``push`` state. Each dispatch is pushed as a ``shipment.dispatched``
    CloudEvent to ``{hub_url}/v1/systems/warehouse/events``, at most
    ``max_in_flight`` at a time, retried after ``retry_base_s`` doubling up to
    ``retry_max_s`` (or the hub's Retry-After); without a hub, dispatches are
    not sent anywhere and stay counted in ``push_pending``. Carriers and tracking
    numbers are the same for the same ``seed``; ``rng`` and ``clock`` drive the
    error rate and rate-limit window; ``transport`` replaces the network, for
    tests. There is no ``/admin/reset``: shipments are tied to timers and
    pushes. At shutdown, waiting dispatches and unacknowledged pushes are
    dropped with the process.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if dispatch_delay_s < 0:
        raise ValueError(f"dispatch_delay_s must be >= 0, got {dispatch_delay_s}")
    warehouse = _Warehouse(
        hub_url,
        seed=seed,
        dispatch_delay_s=dispatch_delay_s,
        rng=rng or random.Random(seed),
        clock=clock,
        max_in_flight=max_in_flight,
        transport=transport,
        timeout_s=timeout_s,
        retry_base_s=retry_base_s,
        retry_max_s=retry_max_s,
    )
    target = warehouse.target

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await warehouse.close()

    return Starlette(
        routes=[
            Route("/shipments", warehouse.create_shipment, methods=["POST"]),
            Route("/shipments/{id}", warehouse.get_shipment, methods=["GET"]),
            Route("/admin/dispatch", warehouse.dispatch_now, methods=["POST"]),
            *target.admin_routes(reset=False),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
