"""Wake-ups through PostgreSQL LISTEN/NOTIFY, so idle workers do not poll hard."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import psycopg

log = logging.getLogger("charter.store")

DELIVERIES_CHANNEL = "charter_deliveries"
RECONNECT_DELAY_S = 1.0
STOP_CHECK_S = 0.5
# Ids per NOTIFY payload: 150 uuids and commas come to 5,549 bytes.
IDS_PER_NOTICE = 150


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
    await listen_payloads(url, channel, lambda _payload: on_notify(), stop)


async def listen_payloads(
    url: str, channel: str, on_payload: Callable[[str | None], None], stop: asyncio.Event
) -> None:
    """`listen`, handing ``on_payload`` each notification's payload; None once connected,
    for whatever was sent while nobody listened."""
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                libpq_url(url), autocommit=True
            ) as conn:
                await conn.execute(f"LISTEN {channel}")
                on_payload(None)  # anything that arrived while we were not listening
                while not stop.is_set():
                    # The generator ends after the timeout, which is when ``stop`` is checked.
                    async for note in conn.notifies(timeout=STOP_CHECK_S):
                        on_payload(note.payload)
        except psycopg.OperationalError as exc:
            log.warning(
                "LISTEN %s lost (%s); reconnecting in %.0fs", channel, exc, RECONNECT_DELAY_S
            )
            try:
                await asyncio.wait_for(stop.wait(), RECONNECT_DELAY_S)
            except TimeoutError:
                pass


def notices(ids: list[str]) -> Iterator[str]:
    """``ids`` as NOTIFY payloads separated by commas, each under PostgreSQL's limit of
    8,000 bytes."""
    for at in range(0, len(ids), IDS_PER_NOTICE):
        yield ",".join(ids[at : at + IDS_PER_NOTICE])
