"""The HTTP connector: JSON over HTTP/1.1 with an ``Idempotency-Key`` header (aiohttp).

Every call ends within the system's ``deadline`` (connect, send, headers and
the whole body, however slowly it trickles) on top of the connect and read
timeouts, and an answer over ``max_response_bytes`` is refused, not buffered.

aiohttp's client is used rather than httpx because it sustains about 25 times
the request rate on many concurrent keep-alive connections (see
docs/performance.md), and a worker's throughput is bounded by it.
"""

from __future__ import annotations

import asyncio
import email.utils
import time

import aiohttp

from charter.catalog.model import HttpConnector as HttpSettings
from charter.connectors.base import TargetRequest, TargetResponse
from charter.errors import ConnectorError, RateLimited, TargetRejected, TargetUnavailable

MAX_ERROR_BODY = 500
# The default of the ``max_response_bytes`` setting.
MAX_RESPONSE_BYTES = 1024 * 1024

# How aiohttp failures read to the delivery layer; the first match wins.
_TRANSPORT_ERRORS: list[tuple[type[BaseException], str]] = [
    (aiohttp.ConnectionTimeoutError, "connect_timeout"),
    (aiohttp.SocketTimeoutError, "read_timeout"),
    (TimeoutError, "timeout"),
    (aiohttp.ClientConnectorError, "connect_error"),
    (aiohttp.ServerDisconnectedError, "disconnected"),
    (aiohttp.ClientPayloadError, "protocol_error"),
    (aiohttp.ClientResponseError, "protocol_error"),
    (aiohttp.ClientOSError, "connection_reset"),
    (aiohttp.ClientError, "transport_error"),
]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def _excerpt(body: bytes) -> str:
    return body[:MAX_ERROR_BODY].decode("utf-8", "replace")


class HttpConnector:
    """Calls one system over HTTP; one connection pool per target system.

    The session is made on first use, inside the event loop that uses it.
    """

    def __init__(self, system: str, settings: HttpSettings, *, max_connections: int = 64) -> None:
        self.system = system
        self.settings = settings
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.settings.base_url + "/",
                headers={"content-type": "application/json", **self.settings.headers},
                # The deadline bounds the whole call (asyncio.timeout in `call`).
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.settings.connect_timeout,
                    sock_read=self.settings.timeout,
                ),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                trust_env=False,
                auto_decompress=True,
            )
        return self._session

    async def call(self, request: TargetRequest) -> TargetResponse:
        headers = {"idempotency-key": request.idempotency_key, **request.headers}
        session = self._open()
        deadline = self.settings.deadline
        try:
            async with asyncio.timeout(deadline):
                async with session.request(
                    request.method, request.path.lstrip("/"), data=request.body, headers=headers
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("retry-after")
                    body = await self._read(response, request)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise self._transport_error(exc, request) from exc
            raise TargetUnavailable(
                f"{self.system}: deadline of {deadline:g} s passed (timeout) calling "
                f"{request.method} {request.path}",
                error_class="deadline",
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, request) from exc
        if 200 <= status < 300:
            return TargetResponse(status, body)
        where = f"{self.system} answered {status} to {request.method} {request.path}"
        detail = f"{where}: {_excerpt(body)}"
        if status == 429:
            raise RateLimited(detail, retry_after=retry_after_seconds(retry_after))
        if status >= 500 or status == 408:
            raise TargetUnavailable(detail, status_code=status, error_class=f"http_{status}")
        raise TargetRejected(detail, status_code=status, error_class=f"http_{status}")

    async def _read(self, response: aiohttp.ClientResponse, request: TargetRequest) -> bytes:
        """The body, refused past ``max_response_bytes`` (before reading it when the length
        is announced)."""
        cap = self.settings.max_response_bytes
        if response.content_length is not None and response.content_length > cap:
            raise self._too_large(response.content_length, request)
        body = await response.content.read(cap + 1)
        if len(body) > cap:
            raise self._too_large(None, request)
        return body

    def _too_large(self, length: int | None, request: TargetRequest) -> ConnectorError:
        size = f"{length:,} bytes" if length is not None else "more"
        return ConnectorError(
            f"{self.system} answered {size} to {request.method} {request.path}, over "
            f"max_response_bytes ({self.settings.max_response_bytes:,})",
            error_class="response_too_large",
            fix=f"raise max_response_bytes of {self.system}'s connector if that answer is expected",
        )

    def _transport_error(self, exc: BaseException, request: TargetRequest) -> ConnectorError:
        for kind, error_class in _TRANSPORT_ERRORS:
            if isinstance(exc, kind):
                return TargetUnavailable(
                    f"{self.system}: {error_class.replace('_', ' ')} calling "
                    f"{request.method} {request.path}: {exc!r}",
                    error_class=error_class,
                )
        return ConnectorError(f"{self.system}: {exc!r}", error_class="http_error")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            # Give the connector a moment to close its transports cleanly.
            await asyncio.sleep(0)
