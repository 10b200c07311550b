"""A simulated ERP: a target system that stores sales orders exactly once per Idempotency-Key.

Business endpoints (``/orders``) can be told to misbehave through ``/admin/fault``:
an outage (503), a share of internal errors (500), latency, and a per-second rate
limit (429 with Retry-After). Admin endpoints never misbehave, and ``/admin/report``
counts what happened so tests and demos can prove that nothing was applied twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


@dataclass(frozen=True)
class ErpFaults:
    """The misbehaviour currently injected into the ERP's business endpoints."""

    outage: bool = False
    error_rate: float = 0.0
    latency_ms: int = 0
    rate_limit_per_s: int | None = None
    retry_after_s: float = 1.0


FAULT_OPTIONS = {
    "outage": Option(lambda v: isinstance(v, bool), "true or false"),
    "error_rate": Option(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "latency_ms": Option(lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "rate_limit_per_s": Option(lambda v: v is None or (is_integer(v) and v >= 0), "null or >= 0"),
    "retry_after_s": Option(lambda v: is_number(v) and v >= 0, "a number >= 0"),
}


class OrderInvalid(ValueError):
    """An order body is not an object with a string `external_ref` and a number `total`."""


def parse_order(raw: bytes) -> dict[str, Any]:
    """Read an order from a request body, raising `BodyError` or `OrderInvalid`."""
    order = read_json(raw)
    if not isinstance(order, dict):
        raise OrderInvalid(f"an order must be a JSON object, got {type(order).__name__}")
    if not isinstance(order.get("external_ref"), str) or not order["external_ref"]:
        raise OrderInvalid(
            f"'external_ref' must be a non-empty string, got {order.get('external_ref')!r}"
        )
    if not is_number(order.get("total")):
        raise OrderInvalid(f"'total' must be a number, got {order.get('total')!r}")
    return order


@dataclass
class _Ledger:
    """Orders, idempotency records and counters; replaced as a whole by a reset."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_external_ref: dict[str, list[str]] = field(default_factory=dict)
    # key -> (fingerprint of the body, stored answer)
    answers: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    # Counted apart from `answers` so that a broken dedupe shows up in the report
    # instead of being hidden by the very table it would have bypassed.
    applies_per_key: dict[str, int] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    faulted: int = 0

    def report(self) -> dict[str, int]:
        return {
            "received": self.received,
            "applied": len(self.orders),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "faulted": self.faulted,
            "keys": len(self.applies_per_key),
            "applied_more_than_once": sum(1 for n in self.applies_per_key.values() if n > 1),
        }


class _KeyLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _KeyLocks:
    """One asyncio lock per idempotency key, dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, _KeyLock] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]


class _Erp:
    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self._rng = rng
        self._clock = clock
        self._locks = _KeyLocks()
        self._window_second = 0
        self._window_count = 0
        self.faults = ErpFaults()
        self.ledger = _Ledger()

    # -- faults --------------------------------------------------------------

    def _admit(self) -> Response | None:
        """Count a business request and return the injected fault to answer with, if any."""
        self.ledger.received += 1
        fault = self._injected_fault()
        if fault is not None:
            self.ledger.faulted += 1
        return fault

    def _injected_fault(self) -> Response | None:
        faults = self.faults
        if faults.outage:
            return problem(503, "outage", "Service unavailable", "the ERP is down (injected)")
        if faults.rate_limit_per_s is not None and not self._take_rate_slot(
            faults.rate_limit_per_s
        ):
            return problem(
                429,
                "rate-limited",
                "Too many requests",
                f"over {faults.rate_limit_per_s} requests per second (injected)",
                headers={"Retry-After": f"{faults.retry_after_s:g}"},
            )
        if faults.error_rate and self._rng.random() < faults.error_rate:
            return problem(500, "internal-error", "Internal error", "injected internal error")
        return None

    def _take_rate_slot(self, limit: int) -> bool:
        second = int(self._clock())
        if second != self._window_second:
            self._window_second, self._window_count = second, 0
        self._window_count += 1
        return self._window_count <= limit

    async def _delay(self) -> None:
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)

    async def _delayed(self, response: Response) -> Response:
        await self._delay()
        return response

    def _reject(self, status: int, slug: str, title: str, detail: str) -> Response:
        self.ledger.rejected += 1
        return problem(status, slug, title, detail)

    # -- business endpoints -----------------------------------------------------

    async def create_order(self, request: Request) -> Response:
        fault = self._admit()
        if fault is not None:
            return await self._delayed(fault)
        key = request.headers.get("idempotency-key")
        if not key:
            return await self._delayed(
                self._reject(
                    400,
                    "idempotency-key-missing",
                    "Idempotency-Key required",
                    "POST /orders needs an Idempotency-Key header",
                )
            )
        try:
            order = parse_order(await request.body())
        except BodyError as exc:
            return await self._delayed(self._reject(400, "bad-request", "Bad request", str(exc)))
        except OrderInvalid as exc:
            return await self._delayed(
                self._reject(422, "invalid-order", "Invalid order", str(exc))
            )
        fingerprint = orjson.dumps(order, option=orjson.OPT_SORT_KEYS)
        async with self._locks.hold(key):
            ledger = self.ledger
            stored = ledger.answers.get(key)
            # Injected latency is processing time between the key lookup and the commit,
            # as in a real ERP: only the per-key lock keeps a concurrent retry from
            # applying the order again, and a client that gives up early leaves an
            # applied order behind.
            await self._delay()
            if stored is None:
                return JSONAnswer(self._apply(ledger, key, order, fingerprint), status_code=201)
            if stored[0] != fingerprint:
                return self._reject(
                    422,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    f"Idempotency-Key {key!r} was first used with another body",
                )
            ledger.duplicates += 1
            return JSONAnswer(stored[1], status_code=201, headers={"Idempotent-Replayed": "true"})

    @staticmethod
    def _apply(
        ledger: _Ledger, key: str, order: dict[str, Any], fingerprint: bytes
    ) -> dict[str, Any]:
        number = f"SO-{len(ledger.orders) + 1:06d}"
        ledger.orders[number] = {**order, "id": number, "status": "open", "idempotency_key": key}
        ledger.by_external_ref.setdefault(order["external_ref"], []).append(number)
        ledger.applies_per_key[key] = ledger.applies_per_key.get(key, 0) + 1
        answer = {"id": number, "external_ref": order["external_ref"], "status": "open"}
        ledger.answers[key] = (fingerprint, answer)
        return answer

    async def get_order(self, request: Request) -> Response:
        fault = self._admit()
        if fault is not None:
            return await self._delayed(fault)
        number = request.path_params["id"]
        order = self.ledger.orders.get(number)
        if order is None:
            return await self._delayed(
                self._reject(404, "order-not-found", "No such order", f"no order {number!r}")
            )
        return await self._delayed(JSONAnswer(order))

    async def list_orders(self, request: Request) -> Response:
        fault = self._admit()
        if fault is not None:
            return await self._delayed(fault)
        ledger = self.ledger
        ref = request.query_params.get("external_ref")
        numbers = ledger.by_external_ref.get(ref, []) if ref is not None else ledger.orders
        return await self._delayed(JSONAnswer([ledger.orders[n] for n in numbers]))

    # -- admin endpoints (never faulted) ------------------------------------------

    async def report(self, request: Request) -> Response:
        return JSONAnswer(self.ledger.report())

    async def applied(self, request: Request) -> Response:
        return JSONAnswer(list(self.ledger.applies_per_key))

    async def get_fault(self, request: Request) -> Response:
        return JSONAnswer(asdict(self.faults))

    async def set_fault(self, request: Request) -> Response:
        try:
            changes = parse_options(read_json(await request.body()), FAULT_OPTIONS)
        except BodyError as exc:
            return problem(422, "invalid-fault", "Invalid fault", str(exc))
        self.faults = replace(self.faults, **changes)
        return JSONAnswer(asdict(self.faults))

    async def clear_fault(self, request: Request) -> Response:
        self.faults = ErpFaults()
        return JSONAnswer(asdict(self.faults))

    async def reset(self, request: Request) -> Response:
        self.ledger = _Ledger()
        return JSONAnswer(self.ledger.report())


def create_erp_app(
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """Build a simulated ERP holding its orders in memory.

    ``rng`` decides which requests fail under an ``error_rate`` fault (seed it
    for repeatable runs); ``clock`` drives the per-second rate-limit window.
    Orders live only as long as the app; ``POST /admin/reset`` clears orders and
    counters but leaves injected faults in place.
    """
    erp = _Erp(rng or random.Random(7), clock)
    return Starlette(
        routes=[
            Route("/orders", erp.create_order, methods=["POST"]),
            Route("/orders", erp.list_orders, methods=["GET"]),
            Route("/orders/{id}", erp.get_order, methods=["GET"]),
            Route("/admin/report", erp.report, methods=["GET"]),
            Route("/admin/applied", erp.applied, methods=["GET"]),
            Route("/admin/fault", erp.get_fault, methods=["GET"]),
            Route("/admin/fault", erp.set_fault, methods=["POST"]),
            Route("/admin/fault", erp.clear_fault, methods=["DELETE"]),
            Route("/admin/reset", erp.reset, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
