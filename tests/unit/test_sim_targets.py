"""What every simulated target promises alike: one effect per Idempotency-Key, honest
counters, and the same runtime faults."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from charter.sim import (
    create_analytics_app,
    create_erp_app,
    create_payments_app,
    create_portal_app,
    create_warehouse_app,
)

BASE_REPORT = (
    "received",
    "applied",
    "duplicates",
    "rejected",
    "faulted",
    "keys",
    "applied_more_than_once",
)


@dataclass(frozen=True)
class Write:
    """One business write of a target: how to build it, and two bodies it accepts."""

    name: str
    build: Callable[..., Starlette]
    method: str
    path: str
    body: dict[str, Any]
    other_body: dict[str, Any]
    status: int

    def __str__(self) -> str:
        return self.name


WRITES = [
    Write(
        "erp",
        create_erp_app,
        "POST",
        "/orders",
        {"external_ref": "D-1", "total": 10},
        {"external_ref": "D-1", "total": 11},
        201,
    ),
    Write(
        "payments",
        create_payments_app,
        "POST",
        "/payments",
        {"order_ref": "D-1", "amount": 10, "currency": "EUR"},
        {"order_ref": "D-1", "amount": 11, "currency": "EUR"},
        201,
    ),
    Write(
        "portal",
        create_portal_app,
        "PUT",
        "/orders/D-1/status",
        {"status": "confirmed"},
        {"status": "shipped"},
        200,
    ),
    Write(
        "analytics",
        create_analytics_app,
        "POST",
        "/events",
        {"type": "order.placed"},
        {"type": "order.paid"},
        202,
    ),
    Write(
        "warehouse",
        lambda **options: create_warehouse_app(None, **options),
        "POST",
        "/shipments",
        {"order_ref": "D-1"},
        {"order_ref": "D-2"},
        202,
    ),
]

every_target = pytest.mark.parametrize("write", WRITES, ids=str)


def run(write: Write, test: Callable[[httpx.AsyncClient], Awaitable[None]], **options: Any) -> None:
    app = write.build(**options)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://sim.test") as client,
        ):
            await test(client)

    asyncio.run(main())


async def send(
    client: httpx.AsyncClient, write: Write, key: str | None, body: Any = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    payload = write.body if body is None else body
    return await client.request(write.method, write.path, json=payload, headers=headers)


async def report(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/admin/report")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def counters(client: httpx.AsyncClient) -> tuple[int, ...]:
    full = await report(client)
    return tuple(full[name] for name in BASE_REPORT)


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["type"].rsplit("/", 1)[1]) == (status, slug)
    assert body["title"] and body["detail"]


@every_target
def test_one_key_applies_once_and_replays_its_answer(write: Write) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        first = await send(client, write, "k1")
        again = await send(client, write, "k1")
        assert first.status_code == again.status_code == write.status
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert (await send(client, write, "k2", write.other_body)).status_code == write.status
        assert (await client.get("/admin/applied")).json() == ["k1", "k2"]
        # received, applied, duplicates, rejected, faulted, keys, applied more than once
        assert await counters(client) == (3, 2, 1, 0, 0, 2, 0)

    run(write, test)


@every_target
def test_a_missing_key_or_a_key_reused_with_another_body_is_refused(write: Write) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert_problem(await send(client, write, None), 400, "idempotency-key-missing")
        assert_problem(await send(client, write, ""), 400, "idempotency-key-missing")
        await send(client, write, "k1")
        assert_problem(
            await send(client, write, "k1", write.other_body), 422, "idempotency-key-reused"
        )
        not_json = await client.request(
            write.method, write.path, content=b"{", headers={"Idempotency-Key": "k2"}
        )
        assert_problem(not_json, 400, "bad-request")
        assert await counters(client) == (5, 1, 0, 4, 0, 1, 0)

    run(write, test)


@every_target
def test_concurrent_requests_with_one_key_apply_once(write: Write) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        # Latency between lookup and commit gives concurrent retries every chance to race.
        await client.post("/admin/fault", json={"latency_ms": 20})
        answers = await asyncio.gather(*(send(client, write, "k1") for _ in range(4)))
        assert {answer.status_code for answer in answers} == {write.status}
        assert [a.headers.get("idempotent-replayed") for a in answers].count("true") == 3
        assert await counters(client) == (4, 1, 3, 0, 0, 1, 0)

    run(write, test)


@every_target
def test_an_outage_answers_503_until_cleared(write: Write) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        assert (await client.post("/admin/fault", json={"outage": True})).json()["outage"]
        assert_problem(await send(client, write, "k1"), 503, "outage")
        assert (await client.get("/admin/applied")).json() == []
        await client.delete("/admin/fault")
        assert (await send(client, write, "k1")).status_code == write.status
        assert await counters(client) == (2, 1, 0, 0, 1, 1, 0)

    run(write, test)


@every_target
def test_the_rate_limit_answers_429_with_retry_after(write: Write) -> None:
    now = [50.5]

    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"rate_limit_per_s": 1, "retry_after_s": 2})
        assert (await send(client, write, "k1")).status_code == write.status
        limited = await send(client, write, "k2", write.other_body)
        assert_problem(limited, 429, "rate-limited")
        assert limited.headers["retry-after"] == "2"
        now[0] = 51.0
        assert (await send(client, write, "k2", write.other_body)).status_code == write.status
        assert await counters(client) == (3, 2, 0, 0, 1, 2, 0)

    run(write, test, clock=lambda: now[0])


@every_target
def test_an_error_rate_fails_the_share_the_seeded_rng_draws(write: Write) -> None:
    draws = random.Random(5)
    expected = [draws.random() < 0.4 for _ in range(30)]

    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"error_rate": 0.4})
        statuses = [(await send(client, write, "k1")).status_code for _ in range(30)]
        assert [status == 500 for status in statuses] == expected
        full = await report(client)
        assert (full["faulted"], full["applied"]) == (sum(expected), 1)

    run(write, test, rng=random.Random(5))


@every_target
def test_faults_are_checked_merged_and_cleared(write: Write) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"latency_ms": 5})
        merged = (await client.post("/admin/fault", json={"error_rate": 0.5})).json()
        assert (merged["latency_ms"], merged["error_rate"]) == (5, 0.5)
        for bad in ({"error_rate": 2}, {"outage": "yes"}, {"flood": True}, [1]):
            assert_problem(await client.post("/admin/fault", json=bad), 422, "invalid-fault")
        assert (await client.get("/admin/fault")).json() == merged
        cleared = (await client.delete("/admin/fault")).json()
        assert (cleared["latency_ms"], cleared["error_rate"], cleared["outage"]) == (0, 0, False)

    run(write, test)
