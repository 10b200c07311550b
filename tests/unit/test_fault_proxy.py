"""The TCP fault proxy in front of a real HTTP server (the no-op simulator), on real ports,
as an aiohttp client sees it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest

from charter.sim import SimProcess, free_port, spawn
from charter.sim.proxy import FaultProxy, ProxyFaults

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def upstream_process() -> Iterator[SimProcess]:
    with spawn("noop") as noop:
        yield noop


@pytest.fixture
def upstream(upstream_process: SimProcess) -> SimProcess:
    upstream_process.clear_faults()
    httpx.post(f"{upstream_process.url}/admin/reset", trust_env=False).raise_for_status()
    return upstream_process


def received(upstream: SimProcess) -> int:
    count: int = upstream.report()["received"]
    return count


def through_proxy(
    upstream: SimProcess,
    test: Callable[[FaultProxy, aiohttp.ClientSession], Awaitable[None]],
    **options: Any,
) -> None:
    """Run ``test`` with a proxy to ``upstream`` and a client session, both closed after."""

    async def main() -> None:
        async with (
            FaultProxy(HOST, 0, HOST, upstream.port, **options) as proxy,
            aiohttp.ClientSession(base_url=f"http://{HOST}:{proxy.port}") as session,
        ):
            await test(proxy, session)

    asyncio.run(main())


async def post(session: aiohttp.ClientSession, data: bytes = b"{}", timeout: float = 5.0) -> int:
    async with session.post(
        "/things", data=data, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as answer:
        assert await answer.read() == b"{}"
        return answer.status


async def timed_post(session: aiohttp.ClientSession, data: bytes = b"{}") -> float:
    started = time.perf_counter()
    assert await post(session, data) == 200
    return time.perf_counter() - started


def is_connection_reset(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET


def test_without_faults_bytes_pass_both_ways(upstream: SimProcess) -> None:
    async def test(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
        for _ in range(3):
            assert await post(session, b"x" * 100_000) == 200
        assert proxy.counters.bytes_up > 300_000
        assert proxy.counters.bytes_down > 0
        assert proxy.counters.accepted == 1  # one kept-alive connection

    through_proxy(upstream, test)
    assert received(upstream) == 3


def test_latency_delays_every_answer_by_at_least_that(upstream: SimProcess) -> None:
    async def test(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
        baseline = await timed_post(session)
        assert proxy.change(latency_ms=200) == ProxyFaults(latency_ms=200)
        delayed = [await timed_post(session) for _ in range(2)]
        assert all(0.2 <= took <= baseline + 1.5 for took in delayed), (baseline, delayed)
        proxy.clear()
        assert await timed_post(session) < 0.2

    through_proxy(upstream, test)


def test_reset_resets_new_connections_until_cleared(upstream: SimProcess) -> None:
    async def test(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
        assert await post(session) == 200
        proxy.change(reset=True)
        for _ in range(2):
            with pytest.raises(aiohttp.ClientOSError) as caught:
                await post(session)
            assert is_connection_reset(caught.value), repr(caught.value)
        proxy.clear()
        assert await post(session) == 200

    through_proxy(upstream, test)
    assert received(upstream) == 2  # the first request and the one after clearing


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP server sending back whatever it receives; yields its port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_reset_hits_open_connections_mid_stream() -> None:
    async def main() -> None:
        async with echo_server() as port, FaultProxy(HOST, 0, HOST, port) as proxy:
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            try:
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                proxy.change(reset=True)
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(reader.read(10), 2)
                assert proxy.counters.reset == 1
            finally:
                writer.close()

    asyncio.run(main())


def test_bandwidth_paces_each_direction() -> None:
    async def main() -> None:
        async with echo_server() as port, FaultProxy(HOST, 0, HOST, port) as proxy:
            proxy.change(bandwidth_bytes_per_s=40_000)
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            try:
                started = time.perf_counter()
                writer.write(b"x" * 20_000)
                assert await reader.readexactly(20_000) == b"x" * 20_000
                took = time.perf_counter() - started
                assert 0.45 <= took <= 3, took
            finally:
                writer.close()

    asyncio.run(main())


def test_blackhole_swallows_requests_until_the_client_gives_up(upstream: SimProcess) -> None:
    async def test(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
        assert await post(session) == 200
        proxy.change(blackhole=True)
        async with aiohttp.ClientSession(base_url=f"http://{HOST}:{proxy.port}") as fresh:
            for client in (session, fresh):  # an open connection goes silent; a new one too
                started = time.perf_counter()
                with pytest.raises(asyncio.TimeoutError):
                    await post(client, timeout=0.5)
                assert 0.5 <= time.perf_counter() - started < 2
            assert received(upstream) == 1  # nothing was forwarded
            proxy.clear()
        async with aiohttp.ClientSession(base_url=f"http://{HOST}:{proxy.port}") as after:
            assert await post(after) == 200

    through_proxy(upstream, test)


def test_a_proxy_to_nothing_resets_its_clients() -> None:
    async def main() -> None:
        async with (
            FaultProxy(HOST, 0, HOST, free_port()) as proxy,
            aiohttp.ClientSession() as session,
        ):
            with pytest.raises(aiohttp.ClientOSError) as caught:
                await session.get(f"http://{HOST}:{proxy.port}/")
            assert is_connection_reset(caught.value), repr(caught.value)
            assert proxy.counters.upstream_unreachable >= 1  # aiohttp may try twice

    asyncio.run(main())


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"latency_ms": -5}, "'latency_ms' must be an integer >= 0, got -5"),
        ({"reset": "yes"}, "'reset' must be true or false, got 'yes'"),
        ({"bandwidth_bytes_per_s": 0}, "'bandwidth_bytes_per_s' must be null (unlimited)"),
        ({"jitter_ms": 5}, "unknown field(s) jitter_ms"),
    ],
)
def test_bad_faults_are_refused_by_method_and_over_http(
    upstream: SimProcess, changes: dict[str, Any], named: str
) -> None:
    async def test(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
        with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
            proxy.change(**changes)
        admin = f"http://{HOST}:{proxy.admin_port}"
        async with httpx.AsyncClient(base_url=admin, trust_env=False) as client:
            answer = await client.post("/faults", json=changes)
            assert answer.status_code == 422
            assert answer.headers["content-type"] == "application/problem+json"
            assert named in answer.json()["detail"]
            assert proxy.faults == ProxyFaults()

    through_proxy(upstream, test, admin_port=0)


def test_the_admin_endpoint_steers_the_proxy(upstream: SimProcess) -> None:
    async def test(proxy: FaultProxy, session: aiohttp.ClientSession) -> None:
        admin = f"http://{HOST}:{proxy.admin_port}"
        async with httpx.AsyncClient(base_url=admin, trust_env=False) as client:
            shown = (await client.post("/faults", json={"latency_ms": 150})).json()
            assert shown == {
                "latency_ms": 150,
                "reset": False,
                "blackhole": False,
                "bandwidth_bytes_per_s": None,
            }
            assert proxy.faults.latency_ms == 150
            assert await timed_post(session) >= 0.15
            # `charter sim fault` talks to simulators at /admin/fault; the proxy answers there.
            both = (await client.post("/admin/fault", json={"blackhole": True})).json()
            assert (both["latency_ms"], both["blackhole"]) == (150, True)
            assert (await client.delete("/faults")).json()["blackhole"] is False
            assert (await client.get("/admin/fault")).json() == shown | {"latency_ms": 0}
            assert await timed_post(session) < 0.15
            report = (await client.get("/admin/report")).json()
            assert report["accepted"] == 1 and report["open"] == 1

    through_proxy(upstream, test, admin_port=0)
