"""A simulated customer portal: shows customers the latest status of their orders.

``PUT /orders/{ref}/status`` is applied once per Idempotency-Key; the status last
applied wins, and every applied status is kept in the order's ``history``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._faults import FAULT_OPTIONS, Faults
from charter.sim._http import Option, http_error, non_empty_string
from charter.sim._target import Outcome, Refused, Shape, Target

STATUS_UPDATE = Shape("status update", {"status": Option(non_empty_string, "a non-empty string")})


@dataclass
class _Orders:
    # ref -> what the customer sees: the latest update's fields, "ref" and "history"
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)

    def report(self) -> dict[str, int]:
        return {"orders": len(self.orders)}

    def order(self, ref: str) -> dict[str, Any]:
        order = self.orders.get(ref)
        if order is None:
            raise Refused(404, "order-not-found", "No such order", f"no status for order {ref!r}")
        return order

    def update(self, ref: str, update: dict[str, Any]) -> Outcome:
        history = [*self.orders.get(ref, {}).get("history", []), update["status"]]
        current = {**update, "ref": ref}
        self.orders[ref] = {**current, "history": history}
        return Outcome(200, current)


class _Portal:
    def __init__(self, target: Target[_Orders, Faults]) -> None:
        self.target = target

    async def put_status(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        return await self.target.idempotent(
            request, STATUS_UPDATE.check, lambda orders, key, update: orders.update(ref, update)
        )

    async def get_order(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        return await self.target.read(request, lambda orders: orders.order(ref))


def create_portal_app(
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """Build a simulated customer portal holding order statuses in memory.

    ``PUT /orders/{ref}/status`` ``{"status": str, ...}`` answers 200 with the
    order as the customer now sees it (the body's fields and ``ref``);
    ``GET /orders/{ref}`` adds the ``history`` of applied statuses, or answers
    404 before the first. Writes need an Idempotency-Key. Faults are the ERP's;
    ``rng`` and ``clock`` drive the error rate and rate-limit window.
    """
    target = Target(
        "customer portal",
        _Orders,
        faults=Faults(),
        fault_options=FAULT_OPTIONS,
        rng=rng or random.Random(7),
        clock=clock,
        extra_report=_Orders.report,
    )
    portal = _Portal(target)
    return Starlette(
        routes=[
            Route("/orders/{ref}/status", portal.put_status, methods=["PUT"]),
            Route("/orders/{ref}", portal.get_order, methods=["GET"]),
            *target.admin_routes(),
        ],
        exception_handlers={HTTPException: http_error},
    )
