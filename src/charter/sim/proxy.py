"""A TCP proxy that injects socket-level faults between a client and a server.

`FaultProxy` accepts connections on one address and forwards the bytes of
each, both ways, to an upstream address. It knows nothing of HTTP; the faults
act on the byte streams, as a bad network or a middlebox would:

- ``latency_ms``: every chunk from the upstream reaches the client that much
  later (chunks keep their spacing), so each request-response exchange takes
  at least that much longer. Requests go up without delay.
- ``reset``: every open connection is reset (RST to the client and to the
  upstream) and new ones are reset as soon as they are accepted.
- ``blackhole``: connections are accepted and read, but nothing is forwarded
  or answered; open connections go silent. Held bytes flow again, in order,
  once it is cleared, like a healed partition. Reads stop after a few chunks,
  so the client's sends block as they would on a dead network.
- ``bandwidth_bytes_per_s``: each direction of each connection is paced to that.

The faults change at runtime, through the methods or over a small HTTP admin
endpoint (``GET/POST/DELETE /faults``, also at ``/admin/fault`` like the
simulators, so ``charter sim fault`` drives both; ``GET /admin/report``
counts connections). ``charter sim proxy`` and ``python -m charter.sim.proxy``
run one until SIGTERM or SIGINT; `charter.sim.spawn_proxy` starts one in a
child process. The proxy is for tests and demos: it does not do TLS, and it
does not limit how many connections it takes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._faults import reset_connection
from charter.sim._http import (
    BodyError,
    JSONAnswer,
    Option,
    http_error,
    is_integer,
    parse_options,
    problem,
    read_json,
)

CHUNK_BYTES = 64 * 1024
# Chunks read ahead of the other side per direction: the most a blackhole holds per connection.
HELD_CHUNKS = 4
# A paced direction sends about this many pieces per second.
PACED_PIECES_PER_S = 10


@dataclass(frozen=True)
class ProxyFaults:
    """The socket-level misbehaviour a `FaultProxy` currently injects."""

    latency_ms: int = 0
    reset: bool = False
    blackhole: bool = False
    bandwidth_bytes_per_s: int | None = None


PROXY_FAULT_OPTIONS: Mapping[str, Option] = {
    "latency_ms": Option(lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "reset": Option(lambda v: isinstance(v, bool), "true or false"),
    "blackhole": Option(lambda v: isinstance(v, bool), "true or false"),
    "bandwidth_bytes_per_s": Option(
        lambda v: v is None or (is_integer(v) and v >= 1), "null (unlimited) or an integer >= 1"
    ),
}


@dataclass
class ProxyCounters:
    """What the proxy has done since it started."""

    accepted: int = 0
    reset: int = 0
    upstream_unreachable: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _Broken(Exception):
    """The upstream could not be reached for a connection."""


class _Link:
    """One proxied connection: the client's side, the upstream's once connected, and the
    task pumping bytes between them."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.pump: asyncio.Task[None] | None = None

    def writers(self) -> Iterator[asyncio.StreamWriter]:
        yield self.client
        if self.upstream is not None:
            yield self.upstream

    def reset(self) -> None:
        for writer in self.writers():
            if not writer.transport.is_closing():
                reset_connection(writer.transport)

    def close(self) -> None:
        for writer in self.writers():
            writer.close()

    def cancel(self) -> None:
        if self.pump is not None and self.pump is not asyncio.current_task():
            self.pump.cancel()


class FaultProxy:
    """Forwards TCP connections from ``listen_host:listen_port`` to the upstream, with faults.

    Port 0 picks a free port; `port` and `admin_port` tell which once started.
    With ``admin_port`` (0 for any), `start` also serves the HTTP admin
    endpoint on ``admin_host``. Use ``async with`` or `start` and `stop`.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        upstream_host: str,
        upstream_port: int,
        *,
        admin_port: int | None = None,
        admin_host: str | None = None,
    ) -> None:
        self.listen_host = listen_host
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.counters = ProxyCounters()
        self._listen_port = listen_port
        self._admin_host = admin_host or listen_host
        self._admin_port = admin_port
        self._faults = ProxyFaults()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._admin: _AdminServer | None = None
        self._admin_task: asyncio.Task[None] | None = None

    # -- faults --------------------------------------------------------------------------

    @property
    def faults(self) -> ProxyFaults:
        """The faults in effect."""
        return self._faults

    def change(self, **changes: Any) -> ProxyFaults:
        """Merge ``changes`` into the faults; raises ValueError naming a bad field."""
        return self._apply(replace(self._faults, **parse_options(changes, PROXY_FAULT_OPTIONS)))

    def clear(self) -> ProxyFaults:
        """Remove every fault; held bytes flow on."""
        return self._apply(ProxyFaults())

    def _apply(self, faults: ProxyFaults) -> ProxyFaults:
        self._faults = faults
        if faults.reset:
            for link in list(self._links):
                self._reset(link)
        if faults.blackhole:
            self._flowing.clear()
        else:
            self._flowing.set()
        return faults

    def _reset(self, link: _Link) -> None:
        self.counters.reset += 1
        link.reset()
        self._links.discard(link)
        link.cancel()

    # -- serving -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._server is None:
            raise RuntimeError("the proxy is not started; call start() first")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def admin_port(self) -> int | None:
        """The admin endpoint's port, or None when it does not serve one."""
        if self._admin is None:
            return None
        return self._admin.port

    async def start(self) -> None:
        """Listen, and serve the admin endpoint when asked; raises OSError if a port is taken."""
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._listen_port, reuse_address=True
        )
        if self._admin_port is not None:
            try:
                self._admin = _AdminServer(self, self._admin_host, self._admin_port)
            except OSError:
                await self.stop()
                raise
            self._admin_task = asyncio.create_task(self._admin.serve(sockets=[self._admin.sock]))
            while not self._admin.started:
                if self._admin_task.done():
                    await self._admin_task  # raises what stopped it
                    raise RuntimeError("the admin endpoint stopped while starting")
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop listening and close every connection (with FIN, not RST)."""
        if self._admin is not None and self._admin_task is not None:
            self._admin.should_exit = True
            await self._admin_task
            self._admin, self._admin_task = None, None
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        self._links.clear()
        for link in links:
            link.close()
            link.cancel()
        # Connection handlers end once their pumps do; none is cancelled from outside.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        # asyncio logs an error for a connection handler cancelled from outside, so the
        # work runs in a pump task of its own, which a reset or a stop may cancel.
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            link = _Link(client)
            self.counters.accepted += 1
            if self._faults.reset:
                self._reset(link)
                return
            self._links.add(link)
            link.pump = asyncio.create_task(self._pump(link, client_reader))
            await asyncio.wait({link.pump})
        finally:
            self._handlers.discard(handler)

    async def _pump(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            async with asyncio.TaskGroup() as directions:
                up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(HELD_CHUNKS)
                directions.create_task(self._read(client_reader, up))
                await self._flowing.wait()
                try:
                    upstream_reader, link.upstream = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port
                    )
                except OSError as exc:
                    self.counters.upstream_unreachable += 1
                    raise _Broken from exc
                down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(HELD_CHUNKS)
                directions.create_task(self._read(upstream_reader, down))
                directions.create_task(self._write(up, link.upstream, delayed=False, up=True))
                directions.create_task(self._write(down, link.client, delayed=True, up=False))
        except* (OSError, _Broken):
            # One side reset or broke, or the upstream refused: the client learns it as a
            # reset, as it would from the server itself; so does the upstream.
            link.reset()
        finally:
            if link in self._links:
                self._links.discard(link)
                link.close()

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(CHUNK_BYTES)
            await queue.put((loop.time(), data))
            if not data:
                return

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        *,
        delayed: bool,
        up: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            received, data = await queue.get()
            if delayed and self._faults.latency_ms:
                due = received + self._faults.latency_ms / 1000
                await asyncio.sleep(max(0.0, due - loop.time()))
            await self._flowing.wait()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            await self._send(writer, data)
            if up:
                self.counters.bytes_up += len(data)
            else:
                self.counters.bytes_down += len(data)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        rate = self._faults.bandwidth_bytes_per_s
        if rate is None:
            writer.write(data)
            await writer.drain()
            return
        piece = max(1, rate // PACED_PIECES_PER_S)
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            # Each piece waits for the time its bytes take at that rate, as on a slow link.
            await asyncio.sleep(len(chunk) / rate)
            await self._flowing.wait()
            writer.write(chunk)
            await writer.drain()

    def report(self) -> dict[str, Any]:
        """The counters and the number of open connections, as a JSON object."""
        return {**asdict(self.counters), "open": len(self._links)}


# -- the admin endpoint -----------------------------------------------------------------


def _admin_app(proxy: FaultProxy) -> Starlette:
    async def get_faults(request: Request) -> Response:
        return JSONAnswer(asdict(proxy.faults))

    async def set_faults(request: Request) -> Response:
        try:
            body = read_json(await request.body())
            if not isinstance(body, dict):
                raise BodyError(f"the body must be a JSON object, got {type(body).__name__}")
            faults = proxy.change(**body)
        except BodyError as exc:
            return problem(422, "invalid-fault", "Invalid fault", f"{exc}; nothing was changed")
        return JSONAnswer(asdict(faults))

    async def clear_faults(request: Request) -> Response:
        return JSONAnswer(asdict(proxy.clear()))

    async def report(request: Request) -> Response:
        return JSONAnswer(proxy.report())

    routes = [Route("/admin/report", report, methods=["GET"])]
    for path in ("/faults", "/admin/fault"):
        routes += [
            Route(path, get_faults, methods=["GET"]),
            Route(path, set_faults, methods=["POST"]),
            Route(path, clear_faults, methods=["DELETE"]),
        ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _AdminServer(uvicorn.Server):
    """uvicorn serving the admin app on a socket bound up front, leaving signals alone."""

    def __init__(self, proxy: FaultProxy, host: str, port: int) -> None:
        config = uvicorn.Config(
            _admin_app(proxy),
            host=host,
            port=port,
            # Leave the process's logging configuration alone; only warnings matter here.
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        super().__init__(config)
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.port: int = self.sock.getsockname()[1]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The proxy's owner decides what a signal does; uvicorn must not re-raise it later.
        yield


# -- running one in the foreground ------------------------------------------------------


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; raises ValueError saying what ``what`` should look like."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT, such as 127.0.0.1:8102, got {text!r}")
    return host, int(port)


def run_proxy(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    admin_port: int,
    *,
    announce: Callable[[FaultProxy], None],
) -> None:
    """Serve a `FaultProxy` with its admin endpoint until SIGTERM or SIGINT, then stop cleanly.

    ``announce`` is told once the proxy listens (to print its ports); a port
    that is taken raises OSError before that.
    """

    async def serve() -> None:
        proxy = FaultProxy(*listen, *upstream, admin_port=admin_port)
        await proxy.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            announce(proxy)
            await stopping.wait()
        finally:
            await proxy.stop()

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


def describe(proxy: FaultProxy) -> str:
    """One line saying where a started proxy listens, forwards and takes faults."""
    return (
        f"proxy on {proxy.listen_host}:{proxy.port} -> {proxy.upstream_host}:"
        f"{proxy.upstream_port}; faults at http://{proxy.listen_host}:{proxy.admin_port}/faults"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m charter.sim.proxy --listen H:P --upstream H:P --admin-port P``."""
    parser = argparse.ArgumentParser(
        prog="python -m charter.sim.proxy", description="Serve a TCP fault proxy."
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept connections on")
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward them to")
    parser.add_argument("--admin-port", type=int, default=0, help="port of the HTTP admin API")
    args = parser.parse_args(argv)
    try:
        listen = parse_address(args.listen, "--listen")
        upstream = parse_address(args.upstream, "--upstream")
        run_proxy(
            listen, upstream, args.admin_port, announce=lambda p: print(describe(p), flush=True)
        )
    except (ValueError, OSError) as exc:
        print(f"charter.sim.proxy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
