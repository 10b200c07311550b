"""The simulated warehouse: shipments requested once per key, dispatched later, and their
``shipment.dispatched`` CloudEvents pushed to the hub until acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from charter.sim import create_warehouse_app

HUB = "http://hub.test"
EVENTS_URL = HUB + "/v1/systems/warehouse/events"


class FakeHub:
    """Accepts single CloudEvents, deduplicating by Idempotency-Key as the real hub must.

    ``plan`` maps an event id to the failures its first attempts meet: an HTTP
    status, "connect", or "lost" (stored, then the answer is lost on the way back).
    """

    def __init__(self, plan: dict[str, list[int | str]] | None = None) -> None:
        self.plan = plan or {}
        self.events: list[dict[str, Any]] = []
        self.accepted_keys: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.bodies: dict[str, set[bytes]] = {}
        self.keys: dict[str, set[str]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == EVENTS_URL
        assert request.headers["content-type"] == "application/cloudevents+json"
        key = request.headers["idempotency-key"]
        event = orjson.loads(request.content)
        self.bodies.setdefault(event["id"], set()).add(request.content)
        self.keys.setdefault(event["id"], set()).add(key)
        attempt = self.attempts[event["id"]]
        self.attempts[event["id"]] += 1
        failures = self.plan.get(event["id"], [])
        failure = failures[attempt] if attempt < len(failures) else None
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if isinstance(failure, int):
            headers = {"Retry-After": "0"} if failure == 429 else {}
            body = {"detail": f"event {event['id']} refused", "status": failure}
            return httpx.Response(failure, json=body, headers=headers)
        if key not in self.accepted_keys:
            self.accepted_keys.add(key)
            self.events.append(event)
        if failure == "lost":
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(202, json={"accepted": 1})


def warehouse(hub: FakeHub | None, **options: Any) -> Starlette:
    transport = httpx.MockTransport(hub.handle) if hub else None
    options.setdefault("dispatch_delay_s", 0.01)
    return create_warehouse_app(
        HUB if hub else None, transport=transport, retry_base_s=0.005, **options
    )


def run(app: Starlette, test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://wh.test") as client,
        ):
            await test(client)

    asyncio.run(main())


async def ship(client: httpx.AsyncClient, key: str, order_ref: str = "D-1") -> httpx.Response:
    body = {"order_ref": order_ref, "lines": [{"sku": "SKU-001", "qty": 2}]}
    return await client.post("/shipments", json=body, headers={"Idempotency-Key": key})


async def report(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/admin/report")).json()
    return body


async def settled(
    client: httpx.AsyncClient, dispatched: int, timeout_s: float = 3.0
) -> dict[str, Any]:
    """The report once ``dispatched`` shipments are dispatched and none awaits the hub."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counters = await report(client)
        if counters["dispatched"] == dispatched and counters["push_pending"] == 0:
            return counters
        await asyncio.sleep(0.005)
    raise AssertionError(f"not settled after {timeout_s} s: {counters}")


def test_a_shipment_is_dispatched_later_and_pushed_as_a_cloudevent() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        requested = await ship(client, "k1", "D-000042")
        assert requested.status_code == 202
        assert requested.json() == {
            "id": "SHP-000001",
            "status": "requested",
            "order_ref": "D-000042",
        }
        assert (await client.get("/shipments/SHP-000001")).json()["status"] == "requested"
        counters = await settled(client, dispatched=1)
        assert (counters["shipments"], counters["pushed_acknowledged"]) == (1, 1)
        assert (counters["push_retries"], counters["push_rejected"]) == (0, 0)
        [event] = hub.events
        shipment = (await client.get("/shipments/SHP-000001")).json()
        assert (shipment["status"], shipment["push"]) == ("dispatched", "acknowledged")
        assert shipment["lines"] == [{"sku": "SKU-001", "qty": 2}]
        assert {k: v for k, v in event.items() if k != "time"} == {
            "specversion": "1.0",
            "id": "wh-SHP-000001",
            "source": "warehouse.sim",
            "type": "shipment.dispatched",
            "datacontenttype": "application/json",
            "subject": "D-000042",
            "data": {
                "shipment_id": "SHP-000001",
                "order_ref": "D-000042",
                "carrier": shipment["carrier"],
                "tracking": shipment["tracking"],
            },
        }
        assert shipment["carrier"] in {"DHL", "UPS"}
        assert event["time"].endswith("Z")

    run(warehouse(hub), test)


def test_one_key_requests_one_shipment() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        first = await ship(client, "k1")
        again = await ship(client, "k1")
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        counters = await settled(client, dispatched=1)
        assert (counters["shipments"], counters["applied"], counters["duplicates"]) == (1, 1, 1)
        assert [event["id"] for event in hub.events] == ["wh-SHP-000001"]

    run(warehouse(hub), test)


def test_every_dispatch_reaches_the_hub_once_through_failures() -> None:
    plan: dict[str, list[int | str]] = {
        "wh-SHP-000001": [503, "connect"],
        "wh-SHP-000002": [429],
        "wh-SHP-000003": ["lost", 500],
        "wh-SHP-000004": [409, 502, "connect"],
    }
    hub = FakeHub(plan)

    async def test(client: httpx.AsyncClient) -> None:
        for n in range(1, 7):
            await ship(client, f"k{n}", f"D-{n}")
        counters = await settled(client, dispatched=6)
        assert sorted(event["id"] for event in hub.events) == [
            f"wh-SHP-{n:06d}" for n in range(1, 7)
        ]
        # A retry resends the same bytes under the same key.
        assert all(len(bodies) == 1 for bodies in hub.bodies.values())
        assert all(len(keys) == 1 for keys in hub.keys.values())
        for event_id, attempts in hub.attempts.items():
            assert attempts == 1 + len(plan.get(event_id, []))
        assert (counters["pushed_acknowledged"], counters["push_retries"]) == (6, 8)
        assert counters["push_rejected"] == 0
        assert counters["last_push_error"]

    run(warehouse(hub, max_in_flight=2), test)


def test_an_event_the_hub_refuses_is_kept_and_counted() -> None:
    hub = FakeHub({"wh-SHP-000001": [422]})

    async def test(client: httpx.AsyncClient) -> None:
        await ship(client, "k1")
        await ship(client, "k2")
        counters = await settled(client, dispatched=2)
        assert (counters["pushed_acknowledged"], counters["push_rejected"]) == (1, 1)
        assert counters["last_push_error"] == "event wh-SHP-000001 refused"
        assert (await client.get("/shipments/SHP-000001")).json()["push"] == "refused"

    run(warehouse(hub), test)


def test_hold_keeps_shipments_waiting_until_released_or_dispatched_by_hand() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        faults = (await client.post("/admin/fault", json={"hold": True})).json()
        assert (faults["hold"], faults["dispatch_delay_s"]) == (True, 0.01)
        await ship(client, "k1")
        await ship(client, "k2")
        await asyncio.sleep(0.05)
        assert (await report(client))["dispatched"] == 0
        dispatched = await client.post("/admin/dispatch")
        assert dispatched.json() == {"dispatched": 2}
        await settled(client, dispatched=2)
        await ship(client, "k3")
        await asyncio.sleep(0.05)
        assert (await report(client))["dispatched"] == 2
        cleared = (await client.delete("/admin/fault")).json()
        assert (cleared["hold"], cleared["dispatch_delay_s"]) == (False, 0.01)
        counters = await settled(client, dispatched=3)
        assert counters["pushed_acknowledged"] == 3
        assert len(hub.events) == 3

    run(warehouse(hub), test)


def test_the_dispatch_delay_can_be_changed_at_runtime() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"dispatch_delay_s": 0.15})
        started = time.monotonic()
        await ship(client, "k1")
        await asyncio.sleep(0.05)
        assert (await report(client))["dispatched"] == 0
        await settled(client, dispatched=1)
        assert time.monotonic() - started >= 0.15
        assert (await client.post("/admin/dispatch")).json() == {"dispatched": 0}

    run(warehouse(hub, dispatch_delay_s=5), test)


@pytest.mark.parametrize("fault", [{"dispatch_delay_s": -1}, {"hold": "yes"}])
def test_bad_warehouse_faults_are_refused(fault: dict[str, Any]) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        answer = await client.post("/admin/fault", json=fault)
        assert answer.status_code == 422

    run(warehouse(FakeHub()), test)


def carriers_with(seed: int) -> list[tuple[str, str]]:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        for n in range(8):
            await ship(client, f"k{n}")
        await settled(client, dispatched=8)

    run(warehouse(hub, seed=seed), test)
    events = sorted(hub.events, key=lambda event: str(event["id"]))
    return [(event["data"]["carrier"], event["data"]["tracking"]) for event in events]


def test_carriers_and_tracking_numbers_follow_the_seed() -> None:
    first = carriers_with(7)
    assert first == carriers_with(7)
    assert first != carriers_with(8)
    assert {carrier for carrier, _ in first} == {"DHL", "UPS"}
    for carrier, tracking in first:
        assert tracking.startswith("JJD" if carrier == "DHL" else "1Z")


def test_without_a_hub_shipments_are_dispatched_and_their_events_wait() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        await ship(client, "k1")
        await client.post("/admin/dispatch")
        counters = await report(client)
        assert (counters["dispatched"], counters["push_pending"]) == (1, 1)
        assert (await client.get("/shipments/SHP-000001")).json()["push"] == "unsent"

    run(warehouse(None), test)


@pytest.mark.parametrize(
    "body", [{}, {"order_ref": ""}, {"order_ref": 5}, {"order_ref": "D-1", "lines": {}}, [1]]
)
def test_a_body_that_is_not_a_shipment_is_refused(body: Any) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        answer = await client.post("/shipments", json=body, headers={"Idempotency-Key": "k"})
        assert answer.status_code == 422
        assert answer.json()["type"].endswith("/invalid-shipment")
        missing = await client.get("/shipments/SHP-000001")
        assert missing.json()["type"].endswith("/shipment-not-found")

    run(warehouse(None), test)
