"""The simulated analytics system: any event object, recorded once per key, counted by type."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from charter.sim import create_analytics_app


def run(test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=create_analytics_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://bi.test") as client:
            await test(client)

    asyncio.run(main())


async def post(client: httpx.AsyncClient, key: str, event: Any) -> httpx.Response:
    return await client.post("/events", json=event, headers={"Idempotency-Key": key})


def test_events_are_counted_by_type_once_per_key() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        first = await post(client, "k1", {"type": "order.placed", "order": "D-1"})
        assert first.status_code == 202
        assert first.json() == {"id": "EV-000001", "status": "accepted"}
        assert (await post(client, "k1", {"type": "order.placed", "order": "D-1"})).json() == (
            first.json()
        )
        await post(client, "k2", {"type": "order.placed", "order": "D-2"})
        await post(client, "k3", {"type": "order.paid"})
        await post(client, "k4", {"kind": "no type"})
        await post(client, "k5", {"type": 7})
        report = (await client.get("/admin/report")).json()
        assert report["by_type"] == {"order.placed": 2, "order.paid": 1, "(untyped)": 2}
        assert (report["events"], report["applied"], report["duplicates"]) == (5, 5, 1)
        placed = (await client.get("/events", params={"type": "order.placed"})).json()
        assert [event["order"] for event in placed] == ["D-1", "D-2"]
        assert len((await client.get("/events")).json()) == 5

    run(test)


@pytest.mark.parametrize("event", [[{"type": "a"}], "order.placed", 3, None])
def test_an_event_that_is_not_an_object_is_refused(event: Any) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        answer = await post(client, "k1", event)
        assert answer.status_code == 422
        assert answer.json()["type"].endswith("/invalid-event")
        report = (await client.get("/admin/report")).json()
        assert (report["events"], report["rejected"], report["by_type"]) == (0, 1, {})

    run(test)


def test_reset_forgets_events_and_keys() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await post(client, "k1", {"type": "order.placed"})
        await client.post("/admin/reset")
        assert (await client.get("/admin/report")).json()["by_type"] == {}
        assert "idempotent-replayed" not in (await post(client, "k1", {"type": "x"})).headers

    run(test)
