"""A simulated ERP: a target system that stores sales orders and invoices exactly once per
Idempotency-Key, and cancels orders.

Business endpoints (``/orders``, ``/invoices``) can be told to misbehave through
``/admin/fault``: an outage (503), a share of internal errors (500), latency, and
a per-second rate limit (429 with Retry-After). Admin endpoints never misbehave,
and ``/admin/report`` counts what happened so tests and demos can prove that
nothing was applied twice.
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
from charter.sim._http import Option, http_error, is_number, non_empty_string
from charter.sim._target import Outcome, Refused, Shape, Target, any_body

ORDER = Shape(
    "order",
    {
        "external_ref": Option(non_empty_string, "a non-empty string"),
        "total": Option(is_number, "a number"),
    },
)
INVOICE = Shape(
    "invoice",
    {
        "order_id": Option(non_empty_string, "a non-empty string"),
        "amount": Option(is_number, "a number"),
    },
)


@dataclass
class _Books:
    """The ERP's orders and invoices."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_external_ref: dict[str, list[str]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: int = 0

    def report(self) -> dict[str, int]:
        return {
            "orders": len(self.orders),
            "cancelled": self.cancelled,
            "invoices": len(self.invoices),
        }

    def order(self, number: str) -> dict[str, Any]:
        order = self.orders.get(number)
        if order is None:
            raise Refused(404, "order-not-found", "No such order", f"no order {number!r}")
        return order

    def invoice(self, number: str) -> dict[str, Any]:
        invoice = self.invoices.get(number)
        if invoice is None:
            raise Refused(404, "invoice-not-found", "No such invoice", f"no invoice {number!r}")
        return invoice

    def place(self, key: str, order: dict[str, Any]) -> Outcome:
        number = f"SO-{len(self.orders) + 1:06d}"
        self.orders[number] = {**order, "id": number, "status": "open", "idempotency_key": key}
        self.by_external_ref.setdefault(order["external_ref"], []).append(number)
        answer = {"id": number, "external_ref": order["external_ref"], "status": "open"}
        return Outcome(201, answer)

    def cancel(self, number: str) -> Outcome:
        order = self.order(number)
        if order["status"] != "cancelled":
            order["status"] = "cancelled"
            self.cancelled += 1
        return Outcome(200, {"id": number, "status": "cancelled"})

    def issue_invoice(self, key: str, invoice: dict[str, Any]) -> Outcome:
        order = self.orders.get(invoice["order_id"])
        if order is None or order["status"] == "cancelled":
            why = "no such order" if order is None else "the order is cancelled"
            raise Refused(
                422,
                "invoice-order-invalid",
                "Order cannot be invoiced",
                f"cannot invoice order {invoice['order_id']!r}: {why}",
            )
        number = f"INV-{len(self.invoices) + 1:06d}"
        self.invoices[number] = {
            **invoice,
            "id": number,
            "status": "issued",
            "idempotency_key": key,
        }
        answer = {
            "id": number,
            "order_id": invoice["order_id"],
            "amount": invoice["amount"],
            "status": "issued",
        }
        return Outcome(201, answer)


class _Erp:
    def __init__(self, target: Target[_Books, Faults]) -> None:
        self.target = target

    async def create_order(self, request: Request) -> Response:
        return await self.target.idempotent(
            request, ORDER.check, lambda books, key, order: books.place(key, order)
        )

    async def cancel_order(self, request: Request) -> Response:
        number = request.path_params["id"]
        return await self.target.idempotent(
            request, any_body, lambda books, key, _: books.cancel(number)
        )

    async def get_order(self, request: Request) -> Response:
        number = request.path_params["id"]
        return await self.target.read(request, lambda books: books.order(number))

    async def list_orders(self, request: Request) -> Response:
        ref = request.query_params.get("external_ref")

        def listed(books: _Books) -> list[dict[str, Any]]:
            numbers = books.by_external_ref.get(ref, []) if ref is not None else books.orders
            return [books.orders[n] for n in numbers]

        return await self.target.read(request, listed)

    async def create_invoice(self, request: Request) -> Response:
        return await self.target.idempotent(
            request, INVOICE.check, lambda books, key, invoice: books.issue_invoice(key, invoice)
        )

    async def get_invoice(self, request: Request) -> Response:
        number = request.path_params["id"]
        return await self.target.read(request, lambda books: books.invoice(number))


def create_erp_app(
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """Build a simulated ERP holding its orders and invoices in memory.

    ``POST /orders`` ``{"external_ref", "total", ...}`` answers 201 ``SO-000001``;
    ``POST /orders/{id}/cancel`` answers 200 and leaves the order cancelled
    however often it is called (each new key counts as an applied effect);
    ``POST /invoices`` ``{"order_id", "amount"}`` answers 201 ``INV-000001``, or
    422 while the order is unknown or cancelled. Every write needs an
    Idempotency-Key. ``rng`` decides which requests fail under an ``error_rate``
    fault (seed it for repeatable runs); ``clock`` drives the per-second
    rate-limit window. ``POST /admin/reset`` clears orders, invoices and
    counters but leaves injected faults in place.
    """
    target = Target(
        "ERP",
        _Books,
        faults=Faults(),
        fault_options=FAULT_OPTIONS,
        rng=rng or random.Random(7),
        clock=clock,
        extra_report=_Books.report,
    )
    erp = _Erp(target)
    return Starlette(
        routes=[
            Route("/orders", erp.create_order, methods=["POST"]),
            Route("/orders", erp.list_orders, methods=["GET"]),
            Route("/orders/{id}", erp.get_order, methods=["GET"]),
            Route("/orders/{id}/cancel", erp.cancel_order, methods=["POST"]),
            Route("/invoices", erp.create_invoice, methods=["POST"]),
            Route("/invoices/{id}", erp.get_invoice, methods=["GET"]),
            *target.admin_routes(),
        ],
        exception_handlers={HTTPException: http_error},
    )
