"""The simulated customer portal: the latest applied status per order, once per key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from charter.sim import create_portal_app


def run(test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=create_portal_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://portal.test") as client:
            await test(client)

    asyncio.run(main())


async def put_status(
    client: httpx.AsyncClient, ref: str, key: str, status: Any, **fields: Any
) -> httpx.Response:
    return await client.put(
        f"/orders/{ref}/status",
        json={"status": status, **fields},
        headers={"Idempotency-Key": key},
    )


def test_the_latest_status_wins_and_a_replay_does_not_bring_an_old_one_back() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        confirmed = await put_status(client, "D-1", "k1", "confirmed", note="thanks")
        assert confirmed.status_code == 200
        assert confirmed.json() == {"ref": "D-1", "status": "confirmed", "note": "thanks"}
        await put_status(client, "D-1", "k2", "shipped", tracking="JJD1")
        replayed = await put_status(client, "D-1", "k1", "confirmed", note="thanks")
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json() == confirmed.json()
        assert (await client.get("/orders/D-1")).json() == {
            "ref": "D-1",
            "status": "shipped",
            "tracking": "JJD1",
            "history": ["confirmed", "shipped"],
        }
        report = (await client.get("/admin/report")).json()
        assert (report["orders"], report["applied"], report["duplicates"]) == (1, 2, 1)

    run(test)


def test_orders_are_kept_apart_and_an_unknown_one_is_not_found() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await put_status(client, "D-1", "k1", "confirmed")
        await put_status(client, "D-2", "k2", "cancelled")
        assert (await client.get("/orders/D-1")).json()["status"] == "confirmed"
        assert (await client.get("/orders/D-2")).json()["history"] == ["cancelled"]
        missing = await client.get("/orders/D-3")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"].endswith("/order-not-found")
        # One key names one request: reusing it for another order is a misuse.
        reused = await put_status(client, "D-3", "k1", "confirmed")
        assert reused.status_code == 422
        assert (await client.get("/admin/report")).json()["orders"] == 2

    run(test)


@pytest.mark.parametrize("body", [{}, {"status": ""}, {"status": 3}, ["shipped"], "shipped"])
def test_a_body_without_a_status_is_refused(body: Any) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        answer = await client.put(
            "/orders/D-1/status", json=body, headers={"Idempotency-Key": "k1"}
        )
        assert answer.status_code == 422
        assert answer.json()["type"].endswith("/invalid-status-update")
        assert (await client.get("/orders/D-1")).status_code == 404

    run(test)
