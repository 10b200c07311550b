"""Requests that wait for process instances to end (``GET /v1/processes/instances/{id}?wait=``).

A client that starts an instance and wants its outcome holds one request
open instead of polling. The request is answered as soon as the instance
has ended, told by the runner in the same process or, on PostgreSQL, by a
``NOTIFY`` that the committing worker sends in the same transaction. A
waiter also reads the instance again every `RECHECK_S`, so a notification
lost with a dropped connection makes an answer later, never wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from charter.catalog.model import parse_duration
from charter.errors import BadRequest

# The longest a request may wait for an instance to end.
MAX_WAIT_S = 60.0
# How often a waiting request reads the instance again when it hears nothing.
RECHECK_S = 1.0


class Endings:
    """Who waits for which instance to end, and the news that instances have ended.

    Used from one event loop: the API's, which in ``charter up`` is also the
    runner's.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def watch(self, instance: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``instance`` may have ended, while the block runs."""
        event = asyncio.Event()
        self._waiting.setdefault(instance, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiting.get(instance)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiting[instance]

    def ended(self, instances: Iterable[str]) -> None:
        for instance in instances:
            for event in self._waiting.get(instance, ()):
                event.set()

    def heard(self, payload: str | None) -> None:
        """A notice from another process: instance ids separated by commas, or None when
        notices may have been missed (the listener has just connected), so every waiter
        looks again."""
        if payload is None:
            for events in self._waiting.values():
                for event in events:
                    event.set()
            return
        self.ended(payload.split(","))

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiting.values())


def wait_seconds(value: str | None) -> float | None:
    """Seconds to wait from ``wait=`` (``30s``, ``500ms``, ``2.5``), at most `MAX_WAIT_S`."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise BadRequest(
            f"wait={value!r} is not a duration",
            fix=f"write e.g. wait=30s or wait=500ms (at most {MAX_WAIT_S:g}s)",
        ) from exc
    if seconds > MAX_WAIT_S:
        raise BadRequest(
            f"wait={value!r} is longer than the {MAX_WAIT_S:g}s a request may wait",
            fix=f"wait at most {MAX_WAIT_S:g}s and ask again if the instance is still running",
        )
    return seconds
