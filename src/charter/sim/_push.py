"""Pushing CloudEvents to the hub the way a well-behaved webhook sender does.

Delivery contract: every request is sent with its own Idempotency-Key and
retried with that same key and the same bytes until the hub acknowledges it
(2xx) or refuses it for good (a 4xx other than 408, 409 and 429). Nothing is
dropped: a refused request is counted as rejected, with the hub's problem
``detail`` kept in ``last_error``.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

# Statuses after which the hub may accept the same request later: it was busy,
# still processing the key, or down. Every other 4xx is a final refusal.
RETRYABLE_4XX = frozenset({408, 409, 429})


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait according to a Retry-After header (delay-seconds or HTTP-date)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def problem_detail(response: httpx.Response) -> str:
    """The ``detail`` of a problem+json answer, or the start of whatever else came back."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    return response.text[:200] or f"HTTP {response.status_code}"


@dataclass
class PushCounters:
    """Events handed to the hub, by fate; ``retries`` counts requests sent again."""

    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    retries: int = 0
    last_error: str | None = None


class EventPusher:
    """Sends event payloads to one hub URL until each is acknowledged or refused for good.

    Waits ``retry_base_s`` after a failure, doubling up to ``retry_max_s``, or
    what the hub's Retry-After says. When ``gate`` is given, every attempt first
    waits for it to be set, so clearing it pauses the sender. It does not limit concurrency:
    callers do.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        retry_base_s: float,
        retry_max_s: float,
        gate: asyncio.Event | None = None,
    ) -> None:
        self._url = url
        self._client = client
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._gate = gate
        self.counters = PushCounters()

    async def deliver(self, content: bytes, content_type: str, events: int) -> bool:
        """Send ``content``, which carries ``events`` events, until the hub answers for good.

        True once acknowledged, False once refused.
        """
        counters = self.counters
        headers = {"content-type": content_type, "idempotency-key": str(uuid.uuid4())}
        counters.sent += events
        backoff = self._retry_base_s
        while True:
            if self._gate is not None:
                await self._gate.wait()
            try:
                response = await self._client.post(self._url, content=content, headers=headers)
            except httpx.HTTPError as exc:
                # The request may or may not have landed; the same key makes resending safe.
                counters.last_error = f"hub not reached: {exc!r}"
                wait = backoff
            else:
                if response.is_success:
                    counters.acknowledged += events
                    return True
                detail = problem_detail(response)
                status = response.status_code
                if status < 500 and status not in RETRYABLE_4XX:
                    counters.rejected += events
                    counters.last_error = detail
                    return False
                counters.last_error = f"hub answered {status}: {detail}"
                hinted = retry_after_seconds(response.headers.get("retry-after"))
                wait = backoff if hinted is None else hinted
            counters.retries += 1
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, self._retry_max_s)
