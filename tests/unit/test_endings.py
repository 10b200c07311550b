"""Who waits for which instance to end, and NOTIFY payloads of ended instances."""

from __future__ import annotations

import asyncio
import uuid

from charter.engine.endings import Endings
from charter.store.notify import notices


def test_news_of_an_end_reaches_only_the_requests_waiting_for_that_instance() -> None:
    async def scenario() -> None:
        endings = Endings()
        with endings.watch("a") as first, endings.watch("a") as second, endings.watch("b") as other:
            endings.ended(["a", "nobody"])
            assert first.is_set() and second.is_set() and not other.is_set()
            endings.heard("x,b")
            assert other.is_set()
            assert endings.waiting == 3
        assert endings.waiting == 0

    asyncio.run(scenario())


def test_when_notices_may_have_been_missed_every_waiting_request_looks_again() -> None:
    async def scenario() -> None:
        endings = Endings()
        with endings.watch("a") as one, endings.watch("b") as two:
            endings.heard(None)
            assert one.is_set() and two.is_set()

    asyncio.run(scenario())


def test_ended_ids_are_sent_in_payloads_postgresql_takes() -> None:
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    payloads = list(notices(ids))
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert [i for p in payloads for i in p.split(",")] == ids
    assert list(notices([])) == []
