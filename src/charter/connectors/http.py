"""The HTTP connector (httpx): JSON over HTTP with an ``Idempotency-Key`` header."""

from __future__ import annotations

import email.utils
import time

import httpx

from charter.catalog.model import HttpConnector as HttpSettings
from charter.connectors.base import TargetRequest, TargetResponse
from charter.errors import ConnectorError, RateLimited, TargetRejected, TargetUnavailable

MAX_ERROR_BODY = 500

# How httpx failures read to the delivery layer: (error class, retryable).
_TRANSPORT_ERRORS: list[tuple[type[Exception], str]] = [
    (httpx.ConnectTimeout, "connect_timeout"),
    (httpx.ReadTimeout, "read_timeout"),
    (httpx.WriteTimeout, "write_timeout"),
    (httpx.PoolTimeout, "pool_timeout"),
    (httpx.ConnectError, "connect_error"),
    (httpx.RemoteProtocolError, "protocol_error"),
    (httpx.ReadError, "read_error"),
    (httpx.WriteError, "write_error"),
    (httpx.TransportError, "transport_error"),
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
    """Calls a system over HTTP; one connection pool per target system."""

    def __init__(
        self,
        system: str,
        settings: HttpSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        self.system = system
        self.settings = settings
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={"content-type": "application/json", **settings.headers},
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def call(self, request: TargetRequest) -> TargetResponse:
        headers = {"idempotency-key": request.idempotency_key, **request.headers}
        try:
            response = await self._client.request(
                request.method, request.path, content=request.body, headers=headers
            )
        except httpx.HTTPError as exc:
            for kind, error_class in _TRANSPORT_ERRORS:
                if isinstance(exc, kind):
                    raise TargetUnavailable(
                        f"{self.system}: {error_class.replace('_', ' ')} calling "
                        f"{request.method} {request.path}: {exc!r}",
                        error_class=error_class,
                    ) from exc
            raise ConnectorError(f"{self.system}: {exc!r}", error_class="http_error") from exc
        status = response.status_code
        if 200 <= status < 300:
            return TargetResponse(status, response.content)
        where = f"{self.system} answered {status} to {request.method} {request.path}"
        detail = f"{where}: {_excerpt(response.content)}"
        if status == 429:
            raise RateLimited(
                detail, retry_after=retry_after_seconds(response.headers.get("retry-after"))
            )
        if status >= 500 or status == 408:
            raise TargetUnavailable(detail, status_code=status, error_class=f"http_{status}")
        raise TargetRejected(detail, status_code=status, error_class=f"http_{status}")

    async def aclose(self) -> None:
        await self._client.aclose()
