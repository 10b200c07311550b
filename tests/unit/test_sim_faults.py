"""Runtime faults every simulator takes through ``/admin/fault``: the same endpoint on all of
them, connection resets, trickled bodies, and the CRM's switch to a new deal object."""

from __future__ import annotations

import asyncio
import errno
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jsonschema
import orjson
import pytest
from starlette.applications import Starlette

from charter.catalog import load_project
from charter.errors import MappingError
from charter.mapping import compile_mapping
from charter.sim import (
    SimProcess,
    create_analytics_app,
    create_crm_app,
    create_erp_app,
    create_noop_app,
    create_payments_app,
    create_portal_app,
    create_warehouse_app,
    spawn,
)
from charter.sim._deals import DealFactory
from tests.conftest import copy_starter

ORDER = {"external_ref": "D-000001", "total": 120.5}


def run(app: Starlette, test: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://sim.test") as client,
        ):
            await test(client)

    asyncio.run(main())


def assert_invalid_fault(response: httpx.Response, *named: str) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/invalid-fault")
    assert body["status"] == 422
    for text in named:
        assert text in body["detail"], body["detail"]
    detail: str = body["detail"]
    return detail


# -- the same /admin/fault on every simulator ------------------------------------------


@dataclass(frozen=True)
class Sim:
    """A simulator and one business request of it that succeeds or finds nothing."""

    name: str
    build: Callable[[], Starlette]
    method: str
    path: str
    status: int

    def __str__(self) -> str:
        return self.name


SIMS = [
    Sim("erp", create_erp_app, "GET", "/orders/SO-000009", 404),
    Sim("payments", create_payments_app, "GET", "/payments/PAY-000009", 404),
    Sim("portal", create_portal_app, "GET", "/orders/D-9", 404),
    Sim("analytics", create_analytics_app, "GET", "/events", 200),
    Sim("warehouse", lambda: create_warehouse_app(None), "GET", "/shipments/SHP-000009", 404),
    Sim("crm", lambda: create_crm_app(None), "GET", "/deals/D-000009", 404),
    Sim("noop", create_noop_app, "POST", "/anything", 200),
]


@pytest.mark.parametrize("sim", SIMS, ids=str)
def test_every_simulator_takes_the_same_faults(sim: Sim) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        async def business() -> httpx.Response:
            return await client.request(sim.method, sim.path)

        assert (await business()).status_code == sim.status
        faults = (await client.post("/admin/fault", json={"outage": True})).json()
        assert faults["outage"] is True
        down = await business()
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert (await client.get("/admin/report")).status_code == 200  # admin is never faulted

        detail = assert_invalid_fault(
            await client.post("/admin/fault", json={"latency_ms": -1}), "'latency_ms'", "-1"
        )
        assert "an integer >= 0" in detail
        assert (await client.get("/admin/fault")).json()["outage"] is True

        cleared = (await client.delete("/admin/fault")).json()
        assert cleared.get("outage", False) is False
        assert (await business()).status_code == sim.status

        await client.post("/admin/fault", json={"reset_rate": 1})
        with pytest.raises(ConnectionResetError):
            await business()
        await client.post("/admin/fault", json={"reset_rate": 0, "latency_ms": 30})
        started = time.perf_counter()
        assert (await business()).status_code == sim.status
        assert time.perf_counter() - started >= 0.03

    run(sim.build(), test)


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ({"reset_rate": 1.5}, ("'reset_rate'", "1.5", "a number from 0 to 1")),
        ({"reset_rate": -0.1}, ("'reset_rate'", "-0.1")),
        ({"reset_rate": True}, ("'reset_rate'", "True")),
        ({"trickle_bytes_per_s": 0}, ("'trickle_bytes_per_s'", "0", "an integer >= 1")),
        ({"trickle_bytes_per_s": 2.5}, ("'trickle_bytes_per_s'", "2.5")),
        ({"trickle_bytes_per_s": "slow"}, ("'trickle_bytes_per_s'", "'slow'")),
        ({"trickle": 10}, ("unknown field(s) trickle", "trickle_bytes_per_s")),
        ([], ("must be a JSON object",)),
    ],
)
def test_bad_fault_options_are_refused_naming_field_value_and_fix(
    fault: Any, named: tuple[str, ...]
) -> None:
    async def test(client: httpx.AsyncClient) -> None:
        before = (await client.post("/admin/fault", json={"error_rate": 0.5})).json()
        assert_invalid_fault(await client.post("/admin/fault", json=fault), *named)
        assert (await client.get("/admin/fault")).json() == before

    run(create_erp_app(), test)


def test_a_reset_rate_resets_the_share_the_seeded_rng_draws() -> None:
    expected_rng = random.Random(5)
    expected = [expected_rng.random() < 0.3 for _ in range(60)]

    async def test(client: httpx.AsyncClient) -> None:
        await client.post("/admin/fault", json={"reset_rate": 0.3})
        resets = []
        for n in range(60):
            try:
                answer = await client.post(
                    "/orders",
                    json=ORDER | {"external_ref": f"D-{n}"},
                    headers={"Idempotency-Key": f"k{n}"},
                )
            except ConnectionResetError:
                resets.append(True)
            else:
                assert answer.status_code == 201
                resets.append(False)
        assert resets == expected
        report = (await client.get("/admin/report")).json()
        assert report["faulted"] == sum(expected)
        assert report["applied"] == 60 - sum(expected)

    run(create_erp_app(rng=random.Random(5)), test)


# -- over real sockets, served by uvicorn as `charter sim run` serves them ---------------


@pytest.fixture(scope="module")
def erp_process() -> Iterator[SimProcess]:
    with spawn("erp") as erp:
        yield erp


@pytest.fixture
def erp(erp_process: SimProcess) -> SimProcess:
    erp_process.clear_faults()
    httpx.post(f"{erp_process.url}/admin/reset", trust_env=False).raise_for_status()
    return erp_process


def is_connection_reset(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET


def test_a_reset_reaches_a_real_client_as_econnreset_and_nothing_is_applied(
    erp: SimProcess,
) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:

            async def place(key: str) -> int:
                async with session.post(
                    f"{erp.url}/orders", json=ORDER, headers={"Idempotency-Key": key}
                ) as answer:
                    await answer.read()
                    return answer.status

            assert await place("k0") == 201  # a kept-alive connection, reset next
            erp.fault(reset_rate=1.0)
            for key in ("k1", "k2"):
                with pytest.raises(aiohttp.ClientOSError) as caught:
                    await place(key)
                assert is_connection_reset(caught.value), repr(caught.value)
            erp.clear_faults()
            assert await place("k1") == 201

    asyncio.run(main())
    report = erp.report()
    assert (report["faulted"], report["applied"], report["keys"]) == (2, 2, 2)
    # uvicorn saw a connection go away, not an app that failed to answer.
    assert "ASGI" not in erp.log_tail() and "Traceback" not in erp.log_tail()


def test_a_trickled_body_arrives_slowly_in_pieces_and_whole(erp: SimProcess) -> None:
    with httpx.Client(base_url=erp.url, trust_env=False) as client:
        for n in range(3):
            order = {"external_ref": "D-7", "total": n}
            client.post("/orders", json=order, headers={"Idempotency-Key": f"k{n}"})
        whole = client.get("/orders").content
    assert len(whole) > 250
    rate = 1000
    erp.fault(trickle_bytes_per_s=rate)

    async def main() -> tuple[float, float, list[bytes]]:
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            async with session.get(f"{erp.url}/orders") as answer:
                headers_after = time.perf_counter() - started
                assert answer.status == 200
                assert answer.headers["content-length"] == str(len(whole))
                pieces = [piece async for piece in answer.content.iter_any()]
            return headers_after, time.perf_counter() - started, pieces

    headers_after, body_after, pieces = asyncio.run(main())
    assert b"".join(pieces) == whole
    assert len(pieces) >= 3, pieces
    assert body_after >= 0.9 * len(whole) / rate
    assert headers_after < body_after / 2


# -- the CRM's deal object, version 1 or 2 -----------------------------------------------


class Hub:
    """Acknowledges every batch and keeps the events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.events.extend(orjson.loads(request.content))
        return httpx.Response(202, json={})


async def generate_all(client: httpx.AsyncClient, count: int) -> None:
    answer = await client.post("/admin/generate", json={"count": count, "batch_size": 10})
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 5
    while (await client.get("/admin/report")).json()["running"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


def test_the_crm_switches_to_deal_version_2_and_back_at_runtime(tmp_path: Path) -> None:
    hub = Hub()
    app = create_crm_app("http://hub.test", transport=httpx.MockTransport(hub.handle), seed=3)

    async def test(client: httpx.AsyncClient) -> None:
        await generate_all(client, 40)
        assert (await client.post("/admin/fault", json={"schema_version": 2})).json() == {
            "paused": False,
            "schema_version": 2,
        }
        await generate_all(client, 40)
        assert (await client.get("/deals/D-000041")).json() == hub.events[40]["data"]
        assert (await client.delete("/admin/fault")).json() == {"paused": False}
        await generate_all(client, 10)
        assert_invalid_fault(
            await client.post("/admin/fault", json={"schema_version": 3}),
            "'schema_version'",
            "3",
            "1 (current deals) or 2",
        )

    run(app, test)
    deals = [event["data"] for event in sorted(hub.events, key=lambda e: e["data"]["id"])]
    v1, v2, back = deals[:40], deals[40:80], deals[80:]
    assert all("channel" not in d and d["stage"] == "closed_won" for d in v1 + back)
    assert {d["channel"] for d in v2} == {"direct", "partner"}
    for deal in v2:
        assert (deal["stage"] == "closed_won_partner") == (deal["channel"] == "partner")
    # Apart from the change, a deal is the one version 1 would have made.
    factory = DealFactory(3)
    for number, deal in enumerate(v2, start=41):
        same = factory.deal(number, deal["closed_at"])
        assert {k: v for k, v in deal.items() if k not in ("channel", "stage")} == {
            k: v for k, v in same.items() if k != "stage"
        }

    # Both versions pass the starter project's schema, which allows extra fields and any
    # stage; its mapping is what notices the new pick-list value.
    project = load_project(copy_starter(tmp_path / "project"))
    schema = project.systems["crm"].events["deal.closed"].schema_
    assert isinstance(schema, dict)
    validator = jsonschema.Draft202012Validator(schema)
    assert [list(validator.iter_errors(deal)) for deal in deals] == [[]] * len(deals)
    mapping = compile_mapping(project.mappings[("crm-deal-to-order", 1)])
    for deal in v1 + [d for d in v2 if d["channel"] == "direct"]:
        assert mapping.apply(deal)["status"] == "open"
    for deal in (d for d in v2 if d["channel"] == "partner"):
        with pytest.raises(MappingError, match="closed_won_partner"):
            mapping.apply(deal)


def test_the_crm_waits_as_long_as_the_hubs_retry_after_says() -> None:
    attempts: list[float] = []

    def quota_hub(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return httpx.Response(
                429, json={"detail": "over quota"}, headers={"Retry-After": "0.3"}
            )
        return httpx.Response(202, json={})

    # The CRM's own backoff (5 ms) is far shorter: only the hub's hint explains the wait.
    app = create_crm_app(
        "http://hub.test", transport=httpx.MockTransport(quota_hub), retry_base_s=0.005
    )

    async def test(client: httpx.AsyncClient) -> None:
        await generate_all(client, 1)
        report = (await client.get("/admin/report")).json()
        assert (report["acknowledged"], report["retries"]) == (1, 1)

    run(app, test)
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.3
