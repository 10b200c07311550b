"""The simulated CRM: deterministic deals as CloudEvents, pushed until acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from charter.sim import create_crm_app
from charter.sim._push import retry_after_seconds

HUB = "http://hub.test"
EVENTS_URL = HUB + "/v1/systems/crm/events"


class FakeHub:
    """Accepts CloudEvents batches, deduplicating by Idempotency-Key as the real hub must.

    ``plan`` maps a batch (by the number of its first event) to the failures its
    first attempts meet: an HTTP status, or "connect", "timeout", or "lost" (the
    batch is stored, then the answer is lost on the way back).
    """

    def __init__(self, plan: dict[int, list[int | str]] | None = None, pause_s: float = 0.0):
        self.plan = plan or {}
        self.pause_s = pause_s
        self.accepted_ids: Counter[str] = Counter()
        self.accepted_keys: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.bodies: dict[str, set[bytes]] = {}
        self.first_event_of_key: dict[str, int] = {}
        self.content_types: set[str] = set()
        self.batches: list[list[dict[str, Any]]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == EVENTS_URL
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.pause_s)
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        self.content_types.add(request.headers["content-type"])
        self.bodies.setdefault(key, set()).add(request.content)
        events = orjson.loads(request.content)
        first = int(events[0]["id"].rsplit("-", 1)[1])
        self.first_event_of_key[key] = first
        attempt = self.attempts[key]
        self.attempts[key] += 1
        failures = self.plan.get(first, [])
        failure = failures[attempt] if attempt < len(failures) else None
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(failure, int):
            headers = {"Retry-After": "0"} if failure == 429 else {}
            detail = {"detail": f"batch {first} refused", "status": failure}
            return httpx.Response(failure, json=detail, headers=headers)
        if key not in self.accepted_keys:
            self.accepted_keys.add(key)
            self.accepted_ids.update(event["id"] for event in events)
            self.batches.append(events)
        if failure == "lost":
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(202, json={"accepted": len(events)})


def crm(hub: FakeHub | None, **options: Any) -> Starlette:
    transport = httpx.MockTransport(hub.handle) if hub else None
    return create_crm_app(HUB if hub else None, transport=transport, retry_base_s=0.005, **options)


def run(app: Starlette, test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client,
        ):
            await test(client)

    asyncio.run(main())


async def generate(client: httpx.AsyncClient, **options: Any) -> dict[str, Any]:
    response = await client.post("/admin/generate", json=options)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def finished(client: httpx.AsyncClient, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report: dict[str, Any] = (await client.get("/admin/report")).json()
        if not report["running"]:
            return report
        await asyncio.sleep(0.005)
    raise AssertionError(f"still running after {timeout_s} s: {report}")


def test_every_event_is_acknowledged_exactly_once_through_failures() -> None:
    plan: dict[int, list[int | str]] = {
        1: [503],
        21: ["connect", 429],
        41: ["timeout"],
        61: ["lost", 500],
        101: [409, 502, "connect"],
    }
    hub = FakeHub(plan, pause_s=0.002)

    async def test(client: httpx.AsyncClient) -> None:
        assert await generate(client, count=200, batch_size=20, run="r1") == {
            "run": "r1",
            "count": 200,
        }
        report = await finished(client)
        assert hub.accepted_ids.keys() == {f"crm-r1-{n}" for n in range(1, 201)}
        assert set(hub.accepted_ids.values()) == {1}
        # A retry reuses its batch's key and bytes; a new batch never reuses a key.
        assert all(len(bodies) == 1 for bodies in hub.bodies.values())
        assert len(hub.bodies) == 10
        for key, first in hub.first_event_of_key.items():
            assert hub.attempts[key] == 1 + len(plan.get(first, []))
        assert report == {
            "requested": 200,
            "generated": 200,
            "sent": 200,
            "acknowledged": 200,
            "rejected": 0,
            "pending": 0,
            "retries": 9,
            "last_error": report["last_error"],
            "running": False,
        }
        assert report["last_error"]
        assert hub.most_in_flight == 3
        assert hub.content_types == {"application/cloudevents-batch+json"}

    run(crm(hub, max_in_flight=3), test)


def test_a_refused_batch_is_counted_rejected_with_the_hubs_detail() -> None:
    hub = FakeHub({11: [422]})

    async def test(client: httpx.AsyncClient) -> None:
        await generate(client, count=30, batch_size=10, run="r")
        report = await finished(client)
        assert report["acknowledged"] == 20
        assert report["rejected"] == 10
        assert report["pending"] == 0
        assert report["retries"] == 0
        assert report["last_error"] == "batch 11 refused"
        kept = [*range(1, 11), *range(21, 31)]
        assert hub.accepted_ids.keys() == {f"crm-r-{n}" for n in kept}

    run(crm(hub), test)


def test_events_are_cloudevents_carrying_consistent_deals() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        await generate(client, count=25, run="t")
        await finished(client)
        events = [event for batch in hub.batches for event in batch]
        assert len(hub.batches) == 1  # the default batch size is 50
        assert sorted(event["id"] for event in events) == sorted(f"crm-t-{n}" for n in range(1, 26))
        for event in events:
            deal = event["data"]
            assert {k: event[k] for k in ("specversion", "source", "type", "datacontenttype")} == {
                "specversion": "1.0",
                "source": "crm.sim",
                "type": "deal.closed",
                "datacontenttype": "application/json",
            }
            assert event["subject"] == deal["id"]
            assert event["time"].endswith("Z")
            datetime.fromisoformat(event["time"])
            assert deal["stage"] == "closed_won"
            assert deal["currency"] in {"EUR", "USD", "GBP"}
            assert deal["account"]["country"] in {"DE", "FR", "US", "GB", "NL"}
            assert deal["account"]["name"] == "Account " + str(int(deal["account"]["id"][2:]))
            assert deal["lines"]
            total = sum(line["qty"] * line["unit_price"] for line in deal["lines"])
            assert deal["amount"] == round(total, 2)
            assert (await client.get(f"/deals/{deal['id']}")).json() == deal
        assert {event["data"]["id"] for event in events} == {f"D-{n:06d}" for n in range(1, 26)}
        missing = await client.get("/deals/D-999999")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

    run(crm(hub), test)


def deals_made_with(seed: int) -> list[dict[str, Any]]:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        await generate(client, count=20, batch_size=5)
        await finished(client)

    run(crm(hub, seed=seed), test)
    deals = [{**event["data"], "closed_at": None} for batch in hub.batches for event in batch]
    return sorted(deals, key=lambda deal: str(deal["id"]))


def test_the_same_seed_makes_the_same_deals() -> None:
    assert deals_made_with(7) == deals_made_with(7)
    assert deals_made_with(7) != deals_made_with(8)


def test_each_run_gets_new_event_ids_and_runs_may_overlap() -> None:
    hub = FakeHub(pause_s=0.002)

    async def test(client: httpx.AsyncClient) -> None:
        first = await generate(client, count=40, batch_size=10)
        second = await generate(client, count=40, batch_size=10)
        assert first["run"] != second["run"]
        report = await finished(client)
        assert (report["acknowledged"], report["pending"]) == (80, 0)
        assert len(hub.accepted_ids) == 80
        assert hub.most_in_flight <= 4

    run(crm(hub), test)


def test_a_rate_spreads_batches_over_time() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        await generate(client, count=20, batch_size=5, rate_per_s=200)
        await finished(client)
        # Four batches released at 0, 25, 50 and 75 ms.
        assert time.monotonic() - started >= 0.075
        assert len(hub.accepted_ids) == 20

    run(crm(hub), test)


def test_pausing_holds_events_back_until_resumed() -> None:
    hub = FakeHub()

    async def test(client: httpx.AsyncClient) -> None:
        assert (await client.post("/admin/fault", json={"paused": True})).json() == {"paused": True}
        await generate(client, count=10)
        await asyncio.sleep(0.05)
        report = (await client.get("/admin/report")).json()
        assert (report["sent"], report["running"]) == (0, True)
        assert not hub.accepted_ids
        await client.delete("/admin/fault")
        report = await finished(client)
        assert report["acknowledged"] == 10

    run(crm(hub), test)


@pytest.mark.parametrize(
    "options",
    [{}, {"count": -1}, {"count": 1, "batch_size": 0}, {"count": 1, "speed": 2}, [1]],
)
def test_a_bad_generate_request_is_refused(options: Any) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        response = await client.post("/admin/generate", json=options)
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"

    run(crm(FakeHub()), test)


def test_without_a_hub_generate_is_refused() -> None:
    async def test(client: httpx.AsyncClient) -> None:
        response = await client.post("/admin/generate", json={"count": 1})
        assert response.status_code == 409
        assert (await client.get("/admin/report")).json()["generated"] == 0

    run(crm(None), test)


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("inf") is None
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(past) == 0.0
    later = retry_after_seconds(
        format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    )
    assert later is not None and 25 < later <= 30
