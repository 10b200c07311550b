"""A simulated payment gateway: captures and refunds payments once per Idempotency-Key.

Card declines are deterministic: an amount whose cents are ``.13`` (100.13,
0.13) is always declined, with 402 and a ``card-declined`` problem. A
``decline_rate`` fault declines that share of the other payments too, drawn from
the seeded rng. A decline is the gateway's final answer to that request: it is
remembered under its key and replayed, and it applies nothing.
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

DECLINED_CENTS = 13

PAYMENT = Shape(
    "payment",
    {
        "order_ref": Option(non_empty_string, "a non-empty string"),
        "amount": Option(lambda v: is_number(v) and v > 0, "a number > 0"),
        "currency": Option(
            lambda v: isinstance(v, str) and len(v) == 3 and v.isalpha() and v.isupper(),
            "a three-letter ISO 4217 code such as 'EUR'",
        ),
    },
)


@dataclass(frozen=True)
class PaymentFaults(Faults):
    """The ERP's faults plus the share of payments to decline."""

    decline_rate: float = 0.0


PAYMENT_FAULT_OPTIONS = {
    **FAULT_OPTIONS,
    "decline_rate": Option(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
}


def declined_by_amount(amount: float) -> bool:
    """Whether the card is always declined for ``amount``: its cents part is ``.13``."""
    return round(amount * 100) % 100 == DECLINED_CENTS


@dataclass
class _Payments:
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    declined: int = 0
    refunded: int = 0

    def report(self) -> dict[str, int]:
        return {
            "payments": len(self.payments),
            "declined": self.declined,
            "refunded": self.refunded,
        }

    def payment(self, number: str) -> dict[str, Any]:
        payment = self.payments.get(number)
        if payment is None:
            raise Refused(404, "payment-not-found", "No such payment", f"no payment {number!r}")
        return payment

    def capture(self, key: str, payment: dict[str, Any], decline_reason: str | None) -> Outcome:
        if decline_reason is not None:
            self.declined += 1
            return Outcome.refusal(
                402,
                "card-declined",
                "Card declined",
                f"the card was declined for {payment['amount']} {payment['currency']} "
                f"({decline_reason}); ask the customer for another means of payment",
            )
        number = f"PAY-{len(self.payments) + 1:06d}"
        answer = {
            "id": number,
            "status": "captured",
            "order_ref": payment["order_ref"],
            "amount": payment["amount"],
            "currency": payment["currency"],
        }
        self.payments[number] = {**payment, **answer, "idempotency_key": key}
        return Outcome(201, answer)

    def refund(self, number: str) -> Outcome:
        payment = self.payment(number)
        if payment["status"] != "refunded":
            payment["status"] = "refunded"
            self.refunded += 1
        return Outcome(200, {"id": number, "status": "refunded"})


class _Gateway:
    def __init__(self, target: Target[_Payments, PaymentFaults]) -> None:
        self.target = target

    def _decline_reason(self, payment: dict[str, Any]) -> str | None:
        if declined_by_amount(payment["amount"]):
            return f"amounts ending in .{DECLINED_CENTS} are always declined"
        faults = self.target.faults
        # Drawn only while a rate is set: without one, error_rate draws stay as in the ERP.
        if faults.current.decline_rate and faults.rng.random() < faults.current.decline_rate:
            return "injected decline_rate"
        return None

    async def create_payment(self, request: Request) -> Response:
        def capture(payments: _Payments, key: str, payment: dict[str, Any]) -> Outcome:
            return payments.capture(key, payment, self._decline_reason(payment))

        return await self.target.idempotent(request, PAYMENT.check, capture)

    async def refund_payment(self, request: Request) -> Response:
        number = request.path_params["id"]
        return await self.target.idempotent(
            request, any_body, lambda payments, key, _: payments.refund(number)
        )

    async def get_payment(self, request: Request) -> Response:
        number = request.path_params["id"]
        return await self.target.read(request, lambda payments: payments.payment(number))


def create_payments_app(
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """Build a simulated payment gateway holding its payments in memory.

    ``POST /payments`` ``{"order_ref", "amount", "currency"}`` answers 201
    ``{"id": "PAY-000001", "status": "captured", ...}`` or 402 ``card-declined``
    (amounts ending in .13, and the ``decline_rate`` fault's share, drawn from
    ``rng``); ``POST /payments/{id}/refund`` answers 200 ``{"status": "refunded"}``
    however often it is called; ``GET /payments/{id}`` shows one. Every write
    needs an Idempotency-Key. Faults are the ERP's plus ``decline_rate``;
    ``clock`` drives the rate-limit window.
    """
    target = Target(
        "payment gateway",
        _Payments,
        faults=PaymentFaults(),
        fault_options=PAYMENT_FAULT_OPTIONS,
        rng=rng or random.Random(7),
        clock=clock,
        extra_report=_Payments.report,
    )
    gateway = _Gateway(target)
    return Starlette(
        routes=[
            Route("/payments", gateway.create_payment, methods=["POST"]),
            Route("/payments/{id}", gateway.get_payment, methods=["GET"]),
            Route("/payments/{id}/refund", gateway.refund_payment, methods=["POST"]),
            *target.admin_routes(),
        ],
        exception_handlers={HTTPException: http_error},
    )
