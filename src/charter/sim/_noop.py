"""A target that accepts everything: the upper bound for delivery throughput."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._faults import FAULT_OPTIONS, FaultInjector, Faults
from charter.sim._http import JSONAnswer


def _accepted() -> Response:
    return Response(b"{}", media_type="application/json")


class _Counter:
    def __init__(self, faults: FaultInjector[Faults]) -> None:
        self.faults = faults
        self.received = 0

    async def accept(self, request: Request) -> Response:
        # The body is not read: uvicorn discards it, and reading it would only cost time.
        self.received += 1
        return await self.faults.answer(_accepted)

    async def report(self, request: Request) -> Response:
        return JSONAnswer({"received": self.received})

    async def reset(self, request: Request) -> Response:
        self.received = 0
        return JSONAnswer({"received": self.received})


def create_noop_app(
    *, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
) -> Starlette:
    """Build a target answering every POST or PUT, on any path, with 200 ``{}``.

    It counts requests and nothing else: no validation, no idempotency.
    ``GET /admin/report`` answers ``{"received": n}`` (faulted requests
    included); ``POST /admin/reset`` zeroes it. It takes the ERP's faults
    through ``/admin/fault``; ``rng`` and ``clock`` drive the error and reset
    rates and the rate-limit window.
    """
    faults = FaultInjector(
        "no-op target", Faults(), FAULT_OPTIONS, rng=rng or random.Random(7), clock=clock
    )
    counter = _Counter(faults)
    return Starlette(
        routes=[
            Route("/admin/report", counter.report, methods=["GET"]),
            Route("/admin/reset", counter.reset, methods=["POST"]),
            *faults.routes(),
            Route("/{path:path}", counter.accept, methods=["POST", "PUT"]),
        ]
    )
