"""Runtime fault injection for a simulated system's business endpoints.

The faults a simulator takes through ``GET/POST/DELETE /admin/fault``:

- ``outage``: every business request answers 503.
- ``rate_limit_per_s`` (+ ``retry_after_s``): past that many requests in the
  current one-second window, 429 with ``Retry-After``.
- ``reset_rate``: that share of requests get no answer at all: the TCP
  connection is reset (RST), as a crashing server or a middlebox does.
- ``error_rate``: that share of requests answer 500.
- ``latency_ms``: every business answer is held back that long.
- ``trickle_bytes_per_s``: every business answer's body is sent that slowly,
  in small chunks, so a client's read timeout can strike mid-body.

The faults are a frozen dataclass replaced as a whole on every change, so a
request sees one consistent set. A simulator with faults of its own (a decline
rate, a dispatch hold, a payload version) subclasses `Faults` and adds its
fields to the options.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Generic, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from charter.sim._http import (
    BodyError,
    JSONAnswer,
    Option,
    is_integer,
    is_number,
    parse_options,
    problem,
    read_json,
)

# SO_LINGER on with a zero timeout: close() drops unsent data and sends RST, not FIN.
_LINGER_ZERO = struct.pack("ii", 1, 0)
# A trickled body goes out in about this many chunks per second.
TRICKLE_CHUNKS_PER_S = 10


@dataclass(frozen=True)
class Faults:
    """The misbehaviour currently injected into a simulator's business endpoints."""

    outage: bool = False
    error_rate: float = 0.0
    latency_ms: int = 0
    rate_limit_per_s: int | None = None
    retry_after_s: float = 1.0
    reset_rate: float = 0.0
    trickle_bytes_per_s: int | None = None


FAULT_OPTIONS: Mapping[str, Option] = {
    "outage": Option(lambda v: isinstance(v, bool), "true or false"),
    "error_rate": Option(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "latency_ms": Option(lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "rate_limit_per_s": Option(lambda v: v is None or (is_integer(v) and v >= 0), "null or >= 0"),
    "retry_after_s": Option(lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "reset_rate": Option(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "trickle_bytes_per_s": Option(
        lambda v: v is None or (is_integer(v) and v >= 1), "null (off) or an integer >= 1"
    ),
}

F = TypeVar("F", bound=Faults)


def reset_connection(transport: asyncio.WriteTransport) -> None:
    """Close ``transport`` so that the peer sees a connection reset (RST), not an orderly end."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Without the zero linger, close() sends FIN when nothing unread is left.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def _server_transport(receive: Receive) -> asyncio.WriteTransport | None:
    # uvicorn hands the app its request cycle's bound `receive`; the cycle holds the
    # connection's transport. ASGI itself offers no way to drop a connection.
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    return transport if callable(getattr(transport, "abort", None)) else None


class ConnectionReset(Response):
    """An 'answer' that resets the TCP connection instead of sending any HTTP response.

    Under uvicorn the client sees ECONNRESET. Under a server that does not
    expose its connection (an in-process test transport), it raises
    `ConnectionResetError` instead, which such a server passes to the client.
    """

    def __init__(self) -> None:
        super().__init__(status_code=500)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = _server_transport(receive)
        if transport is None:
            raise ConnectionResetError("connection reset (injected reset_rate)")
        reset_connection(transport)
        # Return only once the server knows: otherwise it would answer 500 on a dead socket.
        while (await receive())["type"] != "http.disconnect":
            pass


class TrickledResponse(Response):
    """Sends another response's status and headers at once, then its body slowly.

    The body goes out in chunks of about a tenth of ``bytes_per_s``, each
    after a pause, so the whole body takes ``len(body) / bytes_per_s``
    seconds. ``Content-Length`` stays, as a slow server would send it.
    """

    def __init__(self, inner: Response, bytes_per_s: int) -> None:
        # Not Response.__init__: the status, headers and body are the inner response's.
        self.status_code = inner.status_code
        self.body = inner.body
        self.raw_headers = inner.raw_headers
        self.background = inner.background
        self.bytes_per_s = bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        chunk = max(1, self.bytes_per_s // TRICKLE_CHUNKS_PER_S)
        body = bytes(self.body)
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            # Each piece waits for the time its bytes take at that rate, as on a slow link.
            await asyncio.sleep(len(piece) / self.bytes_per_s)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


class FaultInjector(Generic[F]):
    """Holds the current faults, decides request by request which one strikes, and serves
    the ``/admin/fault`` endpoints that change them.

    ``initial`` is what ``clear`` goes back to; ``rng`` draws the ``reset_rate``
    and ``error_rate`` failures and ``clock`` drives the one-second rate-limit
    window. ``shown``, when given, limits what `describe` lists to those fields
    and the ones that differ from ``initial``. It does not count requests: the
    simulator does.
    """

    def __init__(
        self,
        system: str,
        initial: F,
        options: Mapping[str, Option],
        *,
        rng: random.Random,
        clock: Callable[[], float],
        shown: Collection[str] | None = None,
    ) -> None:
        self._system = system
        self._initial = initial
        self._options = options
        self._clock = clock
        self._shown = shown
        self._window_second = 0
        self._window_count = 0
        self.rng = rng
        self.current = initial

    def strike(self) -> Response | None:
        """The answer to give a business request instead of serving it, or None to serve it.

        That answer is a problem+json response or a `ConnectionReset`.
        """
        faults = self.current
        if faults.outage:
            return problem(
                503, "outage", "Service unavailable", f"the {self._system} is down (injected)"
            )
        if faults.rate_limit_per_s is not None and not self._take_rate_slot(
            faults.rate_limit_per_s
        ):
            return problem(
                429,
                "rate-limited",
                "Too many requests",
                f"over {faults.rate_limit_per_s} requests per second (injected)",
                headers={"Retry-After": f"{faults.retry_after_s:g}"},
            )
        # Each rate is drawn only while it is set, so that setting one does not change
        # which requests the other picks for the same seed.
        if faults.reset_rate and self.rng.random() < faults.reset_rate:
            return ConnectionReset()
        if faults.error_rate and self.rng.random() < faults.error_rate:
            return problem(500, "internal-error", "Internal error", "injected internal error")
        return None

    def _take_rate_slot(self, limit: int) -> bool:
        second = int(self._clock())
        if second != self._window_second:
            self._window_second, self._window_count = second, 0
        self._window_count += 1
        return self._window_count <= limit

    async def delay(self) -> None:
        """Wait for the injected latency, if any."""
        if self.current.latency_ms:
            await asyncio.sleep(self.current.latency_ms / 1000)

    def shape(self, response: Response) -> Response:
        """``response`` as the faults send it: its body trickled, when that is set."""
        rate = self.current.trickle_bytes_per_s
        if rate is None or isinstance(response, ConnectionReset):
            return response
        return TrickledResponse(response, rate)

    async def answer(self, serve: Callable[[], Response]) -> Response:
        """A whole business request for a simulator without idempotency bookkeeping:
        the fault that strikes or ``serve()``, after the latency, shaped."""
        response = self.strike() or serve()
        await self.delay()
        return self.shape(response)

    # -- the faults themselves -----------------------------------------------------------

    def change(self, body: Any) -> F:
        """Merge an options object into the faults; raises `BodyError` naming a bad field."""
        self.current = replace(self.current, **parse_options(body, self._options))
        return self.current

    def clear(self) -> F:
        """Go back to the faults the simulator started with."""
        self.current = self._initial
        return self.current

    def describe(self) -> dict[str, Any]:
        """The current faults as a JSON object."""
        current = asdict(self.current)
        if self._shown is None:
            return current
        initial = asdict(self._initial)
        return {k: v for k, v in current.items() if k in self._shown or v != initial[k]}

    # -- /admin/fault (never faulted itself) ---------------------------------------------

    def routes(self, on_change: Callable[[F], None] | None = None) -> list[Route]:
        """``GET`` shows the faults, ``POST`` merges an options object into them (422
        problem+json naming a bad field), ``DELETE`` clears them; each answers the faults.
        ``on_change`` hears every change."""

        async def get_fault(request: Request) -> Response:
            return JSONAnswer(self.describe())

        async def set_fault(request: Request) -> Response:
            try:
                faults = self.change(read_json(await request.body()))
            except BodyError as exc:
                return problem(422, "invalid-fault", "Invalid fault", f"{exc}; nothing was changed")
            if on_change is not None:
                on_change(faults)
            return JSONAnswer(self.describe())

        async def clear_fault(request: Request) -> Response:
            faults = self.clear()
            if on_change is not None:
                on_change(faults)
            return JSONAnswer(self.describe())

        return [
            Route("/admin/fault", get_fault, methods=["GET"]),
            Route("/admin/fault", set_fault, methods=["POST"]),
            Route("/admin/fault", clear_fault, methods=["DELETE"]),
        ]
