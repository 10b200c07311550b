"""The simulated ERP: exactly-once orders, cancellations and invoices per Idempotency-Key,
honest counters, injected faults."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from charter.sim import create_erp_app

ORDER = {"external_ref": "D-000001", "total": 120.5}


def erp_client(**options: Any) -> httpx.AsyncClient:
    app = create_erp_app(**options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://erp.test")


def run(test: Callable[[httpx.AsyncClient], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with erp_client(**options) as client:
            await test(client)

    asyncio.run(main())


async def place(
    client: httpx.AsyncClient, key: str | None, body: Any = ORDER, **kwargs: Any
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/orders", json=body, headers=headers, **kwargs)


async def report(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/admin/report")
    assert response.status_code == 200
    body: dict[str, int] = response.json()
    return body


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].endswith("/" + slug)
    assert body["title"] and body["detail"]
    return body


def test_a_new_key_creates_an_order_with_the_next_number() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        first = await place(client, "k1")
        second = await place(client, "k2", {"external_ref": "D-000002", "total": 3})
        assert first.status_code == 201
        assert first.json() == {"id": "SO-000001", "external_ref": "D-000001", "status": "open"}
        assert "idempotent-replayed" not in first.headers
        assert second.json()["id"] == "SO-000002"
        stored = (await client.get("/orders/SO-000002")).json()
        assert stored["external_ref"] == "D-000002"
        assert stored["total"] == 3
        assert stored["status"] == "open"
        listed = (await client.get("/orders", params={"external_ref": "D-000001"})).json()
        assert [order["id"] for order in listed] == ["SO-000001"]
        assert (await client.get("/orders", params={"external_ref": "nope"})).json() == []

    run(test)


def test_the_same_key_and_body_replays_the_answer_without_applying_again() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        first = await place(client, "k1")
        again = await place(client, "k1")
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert len((await client.get("/orders")).json()) == 1
        assert (await client.get("/admin/applied")).json() == ["k1"]
        assert await report(client) == {
            "received": 3,
            "applied": 1,
            "duplicates": 1,
            "rejected": 0,
            "faulted": 0,
            "keys": 1,
            "applied_more_than_once": 0,
            "orders": 1,
            "cancelled": 0,
            "invoices": 0,
        }

    run(test)


def test_the_same_key_with_another_body_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        other = await place(client, "k1", {**ORDER, "total": 999})
        assert_problem(other, 422, "idempotency-key-reused")
        counters = await report(client)
        assert (counters["applied"], counters["rejected"], counters["duplicates"]) == (1, 1, 0)

    run(test)


def test_a_missing_idempotency_key_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert_problem(await place(client, None), 400, "idempotency-key-missing")
        assert_problem(await place(client, ""), 400, "idempotency-key-missing")
        counters = await report(client)
        assert (counters["applied"], counters["rejected"]) == (0, 2)

    run(test)


@pytest.mark.parametrize(
    "body",
    [
        [ORDER],
        {"total": 1},
        {"external_ref": 7, "total": 1},
        {"external_ref": "", "total": 1},
        {"external_ref": "D-1"},
        {"external_ref": "D-1", "total": "12"},
        {"external_ref": "D-1", "total": True},
    ],
)
def test_a_body_that_is_not_an_order_is_refused(body: Any) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert_problem(await place(client, "k1", body), 422, "invalid-order")
        # The key was not used up: the corrected order goes through.
        assert (await place(client, "k1")).status_code == 201

    run(test)


def test_a_body_that_is_not_json_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        response = await client.post("/orders", content=b"{", headers={"Idempotency-Key": "k"})
        assert_problem(response, 400, "bad-request")

    run(test)


def test_concurrent_requests_with_one_key_apply_once() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        # Latency between lookup and commit gives concurrent retries every chance to race.
        await client.post("/admin/fault", json={"latency_ms": 30})
        answers = await asyncio.gather(*(place(client, "k1") for _ in range(5)))
        assert {answer.status_code for answer in answers} == {201}
        replayed = [answer.headers.get("idempotent-replayed") for answer in answers]
        assert replayed.count("true") == 4
        counters = await report(client)
        assert (counters["applied"], counters["duplicates"]) == (1, 4)
        assert counters["applied_more_than_once"] == 0

    run(test)


def test_unknown_orders_and_paths_answer_problems() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert_problem(await client.get("/orders/SO-999999"), 404, "order-not-found")
        assert_problem(await client.get("/nowhere"), 404, "http-error")
        assert (await report(client))["rejected"] == 1

    run(test)


def test_an_outage_answers_503_to_business_requests_only() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        faults = (await client.post("/admin/fault", json={"outage": True})).json()
        assert faults["outage"] is True
        assert_problem(await place(client, "k1"), 503, "outage")
        assert_problem(await client.get("/orders"), 503, "outage")
        assert await report(client) == {
            "received": 2,
            "applied": 0,
            "duplicates": 0,
            "rejected": 0,
            "faulted": 2,
            "keys": 0,
            "applied_more_than_once": 0,
            "orders": 0,
            "cancelled": 0,
            "invoices": 0,
        }
        await client.delete("/admin/fault")
        assert (await place(client, "k1")).status_code == 201

    run(test)


def test_over_the_rate_limit_answers_429_with_retry_after() -> None:
    now = [100.2]

    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"rate_limit_per_s": 2, "retry_after_s": 0.5})
        statuses = [(await place(client, f"k{i}")).status_code for i in range(2)]
        limited = await place(client, "k2")
        assert statuses == [201, 201]
        assert_problem(limited, 429, "rate-limited")
        assert limited.headers["retry-after"] == "0.5"
        now[0] = 101.0  # the next one-second window
        assert (await place(client, "k2")).status_code == 201
        counters = await report(client)
        assert (counters["applied"], counters["faulted"]) == (3, 1)

        await client.delete("/admin/fault")
        await client.post("/admin/fault", json={"rate_limit_per_s": 0})
        assert (await place(client, "k3")).headers["retry-after"] == "1"

    run(test, clock=lambda: now[0])


def test_an_error_rate_fails_that_share_of_requests_drawn_from_the_seeded_rng() -> None:
    expected_rng = random.Random(3)
    expected_failures = sum(expected_rng.random() < 0.3 for _ in range(100))

    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"error_rate": 0.3})
        statuses = [(await place(client, f"k{i}")).status_code for i in range(100)]
        assert statuses.count(500) == expected_failures
        assert statuses.count(201) == 100 - expected_failures
        counters = await report(client)
        assert counters["faulted"] == expected_failures
        assert counters["applied"] == counters["keys"] == 100 - expected_failures
        assert counters["received"] == 100

    run(test, rng=random.Random(3))


def test_latency_delays_the_answer() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"latency_ms": 80})
        started = time.perf_counter()
        await place(client, "k1")
        assert time.perf_counter() - started >= 0.08
        started = time.perf_counter()
        await report(client)
        assert time.perf_counter() - started < 0.08

    run(test)


def test_faults_merge_and_bad_faults_are_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"latency_ms": 5})
        merged = (await client.post("/admin/fault", json={"error_rate": 0.1})).json()
        assert (merged["latency_ms"], merged["error_rate"]) == (5, 0.1)
        bad_faults: list[Any] = [
            {"error_rate": 1.5},
            {"latency_ms": -1},
            {"outage": 1},
            {"flood": True},
            [],
        ]
        for bad in bad_faults:
            assert_problem(await client.post("/admin/fault", json=bad), 422, "invalid-fault")
        assert (await client.get("/admin/fault")).json() == merged
        cleared = (await client.delete("/admin/fault")).json()
        assert cleared["latency_ms"] == 0
        assert cleared["error_rate"] == 0

    run(test)


def test_reset_clears_orders_and_counters() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        await place(client, "k1")
        await client.post("/admin/reset")
        assert (await report(client))["received"] == 0
        assert (await client.get("/admin/applied")).json() == []
        # The key is forgotten with its order: it applies again, under the first number.
        assert (await place(client, "k1")).json()["id"] == "SO-000001"

    run(test)


async def cancel(client: httpx.AsyncClient, number: str, key: str) -> httpx.Response:
    return await client.post(f"/orders/{number}/cancel", headers={"Idempotency-Key": key})


async def invoice(
    client: httpx.AsyncClient, key: str, order_id: Any = "SO-000001", amount: Any = 120.5
) -> httpx.Response:
    body = {"order_id": order_id, "amount": amount}
    return await client.post("/invoices", json=body, headers={"Idempotency-Key": key})


def test_cancelling_leaves_the_order_cancelled_and_counts_each_key_once() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        first = await cancel(client, "SO-000001", "c1")
        assert first.status_code == 200
        assert first.json() == {"id": "SO-000001", "status": "cancelled"}
        replayed = await cancel(client, "SO-000001", "c1")
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json() == first.json()
        second = await cancel(client, "SO-000001", "c2")
        assert second.status_code == 200
        assert "idempotent-replayed" not in second.headers
        assert (await client.get("/orders/SO-000001")).json()["status"] == "cancelled"
        assert (await client.get("/admin/applied")).json() == ["k1", "c1", "c2"]
        counters = await report(client)
        assert (counters["applied"], counters["duplicates"], counters["keys"]) == (3, 1, 3)
        assert (counters["orders"], counters["cancelled"]) == (1, 1)
        assert counters["applied_more_than_once"] == 0

    run(test)


def test_cancelling_an_unknown_order_is_refused_without_using_up_the_key() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert_problem(await cancel(client, "SO-000001", "c1"), 404, "order-not-found")
        await place(client, "k1")
        assert (await cancel(client, "SO-000001", "c1")).status_code == 200
        assert_problem(
            await client.post("/orders/SO-000001/cancel"), 400, "idempotency-key-missing"
        )
        counters = await report(client)
        assert (counters["rejected"], counters["applied"], counters["cancelled"]) == (2, 2, 1)

    run(test)


def test_an_invoice_is_issued_for_an_open_order() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        issued = await invoice(client, "i1")
        assert issued.status_code == 201
        assert issued.json() == {
            "id": "INV-000001",
            "order_id": "SO-000001",
            "amount": 120.5,
            "status": "issued",
        }
        assert (await invoice(client, "i1")).headers["idempotent-replayed"] == "true"
        assert (await invoice(client, "i2", amount=5)).json()["id"] == "INV-000002"
        stored = (await client.get("/invoices/INV-000002")).json()
        assert (stored["order_id"], stored["amount"], stored["status"]) == (
            "SO-000001",
            5,
            "issued",
        )
        assert_problem(await client.get("/invoices/INV-000009"), 404, "invoice-not-found")
        counters = await report(client)
        assert (counters["invoices"], counters["applied"], counters["duplicates"]) == (2, 3, 1)

    run(test)


def test_an_invoice_for_an_unknown_or_cancelled_order_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        unknown = await invoice(client, "i1")
        assert "no such order" in assert_problem(unknown, 422, "invoice-order-invalid")["detail"]
        # The refusal did not use up the key: once the order exists, the retry goes through.
        await place(client, "k1")
        assert (await invoice(client, "i1")).status_code == 201
        await place(client, "k2", {"external_ref": "D-000002", "total": 3})
        await cancel(client, "SO-000002", "c1")
        cancelled = await invoice(client, "i2", order_id="SO-000002")
        assert "cancelled" in assert_problem(cancelled, 422, "invoice-order-invalid")["detail"]
        counters = await report(client)
        assert (counters["invoices"], counters["rejected"]) == (1, 2)

    run(test)


@pytest.mark.parametrize(
    "order_id, amount", [(None, 1), ("", 1), (7, 1), ("SO-000001", None), ("SO-000001", "1")]
)
def test_a_body_that_is_not_an_invoice_is_refused(order_id: Any, amount: Any) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        assert_problem(await invoice(client, "i1", order_id, amount), 422, "invalid-invoice")

    run(test)


def test_a_key_reused_on_another_endpoint_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        assert_problem(await cancel(client, "SO-000001", "k1"), 422, "idempotency-key-reused")
        assert (await client.get("/orders/SO-000001")).json()["status"] == "open"

    run(test)


def test_reset_also_clears_invoices_and_cancellations() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await place(client, "k1")
        await cancel(client, "SO-000001", "c1")
        await client.post("/admin/reset")
        counters = await report(client)
        assert (counters["orders"], counters["cancelled"], counters["applied"]) == (0, 0, 0)
        assert_problem(await invoice(client, "i1"), 422, "invoice-order-invalid")

    run(test)
