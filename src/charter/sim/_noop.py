"""A target that accepts everything: the upper bound for delivery throughput."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._http import JSONAnswer


class _Counter:
    def __init__(self) -> None:
        self.received = 0

    async def accept(self, request: Request) -> Response:
        # The body is not read: uvicorn discards it, and reading it would only cost time.
        self.received += 1
        return Response(b"{}", media_type="application/json")

    async def report(self, request: Request) -> Response:
        return JSONAnswer({"received": self.received})

    async def reset(self, request: Request) -> Response:
        self.received = 0
        return JSONAnswer({"received": self.received})


def create_noop_app() -> Starlette:
    """Build a target answering every POST or PUT, on any path, with 200 ``{}``.

    It counts requests and nothing else: no validation, no idempotency, no faults.
    ``GET /admin/report`` answers ``{"received": n}``; ``POST /admin/reset`` zeroes it.
    """
    counter = _Counter()
    return Starlette(
        routes=[
            Route("/admin/report", counter.report, methods=["GET"]),
            Route("/admin/reset", counter.reset, methods=["POST"]),
            Route("/{path:path}", counter.accept, methods=["POST", "PUT"]),
        ]
    )
