"""The HTTP connector against a scripted loopback server: what it sends and how answers read.

A real socket on 127.0.0.1 keeps these tests independent of the HTTP client
library the connector is built on.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from charter.catalog.model import HttpConnector as HttpSettings
from charter.connectors import HttpConnector, TargetRequest, TargetResponse, retry_after_seconds
from charter.errors import ConnectorError, RateLimited, TargetRejected, TargetUnavailable

REQUEST = TargetRequest(
    method="POST",
    path="/orders",
    body=b'{"external_ref":"D-1","total":10}',
    idempotency_key="evt-1:deal-to-erp-order",
    headers={"x-charter-event-id": "evt-1"},
)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedTarget:
    """A target system on a loopback port: answers with ``reply`` and records every request."""

    port: int = 0
    reply: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
    hang: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _handler(target: ScriptedTarget) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            target.received.append(Received(self.command, self.path, headers, body))
            if target.hang:
                # The client gives up first; answering its closed socket would only fail.
                target.released.wait(timeout=5)
                return
            status, reply_headers, reply_body = target.reply
            self.send_response(status)
            for name, value in reply_headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(reply_body)))
            self.end_headers()
            self.wfile.write(reply_body)

        do_POST = do_PUT = do_PATCH = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def target() -> Iterator[ScriptedTarget]:
    scripted = ScriptedTarget()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(scripted))
    scripted.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield scripted
    finally:
        scripted.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(base_url: str, request: TargetRequest = REQUEST, timeout: float = 5.0) -> TargetResponse:
    async def run() -> TargetResponse:
        settings = HttpSettings(
            base_url=base_url,
            headers={"authorization": "Bearer t"},
            timeout=timeout,
            connect_timeout=2.0,
        )
        connector = HttpConnector("erp", settings)
        try:
            return await connector.call(request)
        finally:
            await connector.aclose()

    return asyncio.run(run())


def failure(base_url: str, timeout: float = 5.0) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        call(base_url, timeout=timeout)
    return caught.value


def test_the_call_carries_the_idempotency_key_the_json_body_and_the_hub_headers(
    target: ScriptedTarget,
) -> None:
    target.reply = (201, {"content-type": "application/json"}, b'{"id":"SO-1"}')
    assert call(target.base_url) == TargetResponse(201, b'{"id":"SO-1"}')
    [sent] = target.received
    assert (sent.method, sent.path) == ("POST", "/api/orders")
    assert sent.body == REQUEST.body
    assert sent.headers["idempotency-key"] == "evt-1:deal-to-erp-order"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-charter-event-id"] == "evt-1"
    assert sent.headers["authorization"] == "Bearer t"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_the_action_method_is_used(target: ScriptedTarget, method: str) -> None:
    request = TargetRequest(method, "/orders/D-1", b"{}", "k")
    assert call(target.base_url, request).status_code == 200
    assert [(r.method, r.path) for r in target.received] == [(method, "/api/orders/D-1")]


@pytest.mark.parametrize("status", [200, 202, 204])
def test_any_2xx_is_success(target: ScriptedTarget, status: int) -> None:
    target.reply = (status, {}, b"")
    assert call(target.base_url).status_code == status


def test_429_is_rate_limited_with_retry_after_in_seconds(target: ScriptedTarget) -> None:
    target.reply = (429, {"retry-after": "7"}, b"slow down")
    error = failure(target.base_url)
    assert isinstance(error, RateLimited)
    assert error.retryable
    assert error.retry_after == 7.0
    assert error.status_code == 429
    assert "erp answered 429 to POST /orders: slow down" in error.detail


def test_retry_after_may_be_fractional(target: ScriptedTarget) -> None:
    target.reply = (429, {"retry-after": "1.5"}, b"")
    error = failure(target.base_url)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 1.5


def test_retry_after_may_be_an_http_date(target: ScriptedTarget) -> None:
    target.reply = (
        429,
        {"retry-after": email.utils.formatdate(time.time() + 120, usegmt=True)},
        b"",
    )
    error = failure(target.base_url)
    assert isinstance(error, RateLimited)
    assert error.retry_after is not None
    assert 115.0 <= error.retry_after <= 121.0


@pytest.mark.parametrize("header", [{}, {"retry-after": "soon"}])
def test_429_without_a_usable_retry_after_leaves_the_wait_to_the_backoff(
    target: ScriptedTarget, header: dict[str, str]
) -> None:
    target.reply = (429, header, b"")
    error = failure(target.base_url)
    assert isinstance(error, RateLimited)
    assert error.retry_after is None


def test_retry_after_parsing_never_goes_negative() -> None:
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(email.utils.formatdate(1_000_000, usegmt=True)) == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_5xx_and_408_are_retryable_unavailability(target: ScriptedTarget, status: int) -> None:
    target.reply = (status, {}, b"down for maintenance")
    error = failure(target.base_url)
    assert isinstance(error, TargetUnavailable)
    assert error.retryable
    assert (error.status_code, error.error_class) == (status, f"http_{status}")
    assert error.detail.endswith("down for maintenance")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_4xx_are_rejections_that_are_not_retried(target: ScriptedTarget, status: int) -> None:
    target.reply = (status, {}, b'{"error": "currency XYZ unknown"}')
    error = failure(target.base_url)
    assert isinstance(error, TargetRejected)
    assert not error.retryable
    assert (error.status_code, error.error_class) == (status, f"http_{status}")
    assert "currency XYZ unknown" in error.detail


def test_a_long_error_body_is_cut_in_the_detail(target: ScriptedTarget) -> None:
    target.reply = (400, {}, b"x" * 5000)
    assert failure(target.base_url).detail.count("x") == 500


def test_a_refused_connection_is_retryable(unused_port: int) -> None:
    error = failure(f"http://127.0.0.1:{unused_port}")
    assert isinstance(error, TargetUnavailable)
    assert error.retryable
    assert (error.error_class, error.status_code) == ("connect_error", None)
    assert error.detail.startswith("erp: connect error calling POST /orders")


def test_a_read_timeout_is_retryable(target: ScriptedTarget) -> None:
    target.hang = True
    started = time.monotonic()
    error = failure(target.base_url, timeout=0.3)
    assert time.monotonic() - started < 3.0
    assert isinstance(error, TargetUnavailable)
    assert error.retryable
    assert (error.error_class, error.status_code) == ("read_timeout", None)
    assert error.detail.startswith("erp: read timeout calling POST /orders")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
