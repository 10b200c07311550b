"""The simulated payment gateway: captures once per key, deterministic declines, refunds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from charter.sim import create_payments_app

PAYMENT = {"order_ref": "D-000001", "amount": 120.5, "currency": "EUR"}


def run(test: Callable[[httpx.AsyncClient], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=create_payments_app(**options))
        async with httpx.AsyncClient(transport=transport, base_url="http://pay.test") as client:
            await test(client)

    asyncio.run(main())


async def pay(client: httpx.AsyncClient, key: str, **changes: Any) -> httpx.Response:
    body = {**PAYMENT, **changes}
    return await client.post("/payments", json=body, headers={"Idempotency-Key": key})


async def refund(client: httpx.AsyncClient, number: str, key: str) -> httpx.Response:
    return await client.post(f"/payments/{number}/refund", headers={"Idempotency-Key": key})


async def report(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/admin/report")).json()
    return body


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert (body["status"], body["type"].rsplit("/", 1)[1]) == (status, slug)
    return body


def test_a_payment_is_captured_with_the_next_number() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        first = await pay(client, "k1")
        assert first.status_code == 201
        assert first.json() == {"id": "PAY-000001", "status": "captured", **PAYMENT}
        assert (await pay(client, "k2", amount=3)).json()["id"] == "PAY-000002"
        stored = (await client.get("/payments/PAY-000002")).json()
        assert (stored["status"], stored["amount"], stored["currency"]) == ("captured", 3, "EUR")
        assert_problem(await client.get("/payments/PAY-000003"), 404, "payment-not-found")
        counters = await report(client)
        assert (counters["payments"], counters["applied"], counters["declined"]) == (2, 2, 0)

    run(test)


@pytest.mark.parametrize("amount", [100.13, 0.13, 7.13, 1_000_000.13])
def test_amounts_ending_in_13_cents_are_declined_for_good(amount: float) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        declined = await pay(client, "k1", amount=amount)
        body = assert_problem(declined, 402, "card-declined")
        assert ".13" in body["detail"]
        # The decline is the final answer to that key: replayed, never captured later.
        again = await pay(client, "k1", amount=amount)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == body
        assert (await client.get("/admin/applied")).json() == []
        counters = await report(client)
        assert (counters["declined"], counters["payments"], counters["applied"]) == (1, 0, 0)
        assert (counters["duplicates"], counters["rejected"]) == (1, 0)

    run(test)


@pytest.mark.parametrize("amount", [100.31, 13, 0.14, 100.12, 113])
def test_other_amounts_are_captured(amount: float) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert (await pay(client, "k1", amount=amount)).status_code == 201

    run(test)


def test_a_decline_rate_declines_the_share_the_seeded_rng_draws() -> None:
    draws = random.Random(11)
    expected = [draws.random() < 0.25 for _ in range(40)]

    async def test(client: httpx.AsyncClient) -> None:
        faults = (await client.post("/admin/fault", json={"decline_rate": 0.25})).json()
        assert faults["decline_rate"] == 0.25
        statuses = [(await pay(client, f"k{i}")).status_code for i in range(40)]
        assert [status == 402 for status in statuses] == expected
        assert statuses.count(201) == 40 - sum(expected)
        counters = await report(client)
        assert (counters["declined"], counters["payments"]) == (sum(expected), 40 - sum(expected))
        assert counters["faulted"] == 0
        cleared = (await client.delete("/admin/fault")).json()
        assert cleared["decline_rate"] == 0
        assert (await pay(client, "after")).status_code == 201

    run(test, rng=random.Random(11))


def test_a_bad_decline_rate_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        for bad in (1.5, -0.1, "half", None):
            answer = await client.post("/admin/fault", json={"decline_rate": bad})
            assert_problem(answer, 422, "invalid-fault")

    run(test)


def test_a_refund_leaves_the_payment_refunded_and_counts_each_key_once() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await pay(client, "k1")
        first = await refund(client, "PAY-000001", "r1")
        assert first.status_code == 200
        assert first.json() == {"id": "PAY-000001", "status": "refunded"}
        assert (await refund(client, "PAY-000001", "r1")).headers["idempotent-replayed"] == "true"
        assert (await refund(client, "PAY-000001", "r2")).json()["status"] == "refunded"
        assert (await client.get("/payments/PAY-000001")).json()["status"] == "refunded"
        assert_problem(await refund(client, "PAY-000009", "r3"), 404, "payment-not-found")
        counters = await report(client)
        assert (counters["refunded"], counters["applied"], counters["duplicates"]) == (1, 3, 1)
        assert (counters["rejected"], counters["applied_more_than_once"]) == (1, 0)

    run(test)


@pytest.mark.parametrize(
    "changes",
    [
        {"order_ref": ""},
        {"order_ref": None},
        {"amount": 0},
        {"amount": -5},
        {"amount": "10"},
        {"amount": True},
        {"currency": "eur"},
        {"currency": "EURO"},
        {"currency": None},
    ],
)
def test_a_body_that_is_not_a_payment_is_refused(changes: dict[str, Any]) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert_problem(await pay(client, "k1", **changes), 422, "invalid-payment")
        assert (await pay(client, "k1")).status_code == 201

    run(test)
