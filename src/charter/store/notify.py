"""Wake-ups through PostgreSQL LISTEN/NOTIFY, so idle workers do not poll hard."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

log = logging.getLogger("charter.store")

DELIVERIES_CHANNEL = "charter_deliveries"
RECONNECT_DELAY_S = 1.0
STOP_CHECK_S = 0.5


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


async def listen(
    url: str, channel: str, on_notify: Callable[[], None], stop: asyncio.Event
) -> None:
    """Call ``on_notify`` for each notification on ``channel`` until ``stop`` is set.

    Reconnects after a lost connection; while it is down the caller's own
    polling interval is the fallback, so nothing is missed, only later.
    """
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                libpq_url(url), autocommit=True
            ) as conn:
                await conn.execute(f"LISTEN {channel}")
                on_notify()  # anything that arrived while we were not listening
                while not stop.is_set():
                    # The generator ends after the timeout, which is when ``stop`` is checked.
                    async for _ in conn.notifies(timeout=STOP_CHECK_S):
                        on_notify()
        except psycopg.OperationalError as exc:
            log.warning(
                "LISTEN %s lost (%s); reconnecting in %.0fs", channel, exc, RECONNECT_DELAY_S
            )
            try:
                await asyncio.wait_for(stop.wait(), RECONNECT_DELAY_S)
            except TimeoutError:
                pass
