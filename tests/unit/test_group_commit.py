"""Group commit: concurrent requests share a commit, and each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from charter.errors import StoreError
from charter.hub.commit import GroupCommitter


class Ledger:
    """A commit function that records each group and refuses negative items."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def commit(self, items: list[int]) -> list[str]:
        self.gate.wait(5)
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {items}")
        self.groups.append(items)
        return [f"ok {item}" for item in items]


def test_coroutines_waiting_together_share_a_commit_and_get_their_own_results() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit)

    async def main() -> list[str]:
        ledger.gate.clear()  # the first commit waits, so the rest queue behind it
        first = asyncio.create_task(committer.append_async(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(committer.append_async(n)) for n in range(1, 41)]
        await asyncio.sleep(0.05)
        ledger.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        assert asyncio.run(main()) == [f"ok {n}" for n in range(41)]
    finally:
        committer.close()
    assert ledger.groups[0] == [0]
    assert ledger.groups[1] == list(range(1, 41))


def test_a_bad_item_fails_alone_and_the_rest_of_its_group_commits() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit)

    async def main() -> list[str | BaseException]:
        ledger.gate.clear()
        blocker = asyncio.create_task(committer.append_async(0))
        await asyncio.sleep(0.05)
        group = [asyncio.create_task(committer.append_async(n)) for n in (1, -2, 3)]
        await asyncio.sleep(0.05)
        ledger.gate.set()
        await blocker
        return await asyncio.gather(*group, return_exceptions=True)

    try:
        one, bad, three = asyncio.run(main())
    finally:
        committer.close()
    assert (one, three) == ("ok 1", "ok 3")
    assert isinstance(bad, ValueError) and "-2" in str(bad)


def test_threads_and_coroutines_wait_on_the_same_committer() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit)
    try:
        with ThreadPoolExecutor(4) as pool:
            from_threads = list(pool.map(committer.append, range(100, 108)))

        async def main() -> list[str]:
            return await asyncio.gather(*(committer.append_async(n) for n in range(8)))

        from_loop = asyncio.run(main())
        with pytest.raises(ValueError, match="-1"):
            committer.append(-1)
    finally:
        committer.close()
    assert from_threads == [f"ok {n}" for n in range(100, 108)]
    assert from_loop == [f"ok {n}" for n in range(8)]


def test_a_request_that_stopped_waiting_does_not_disturb_the_others() -> None:
    ledger = Ledger()
    committer = GroupCommitter(ledger.commit)

    async def main() -> str:
        ledger.gate.clear()
        blocker = asyncio.create_task(committer.append_async(0))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(committer.append_async(1))
        kept = asyncio.create_task(committer.append_async(2))
        await asyncio.sleep(0.05)
        gone.cancel()
        ledger.gate.set()
        await blocker
        return await kept

    try:
        assert asyncio.run(main()) == "ok 2"
    finally:
        committer.close()
    assert [1, 2] in ledger.groups  # cancelled or not, what was handed over is committed


def test_a_closed_committer_refuses_new_items_with_the_fix() -> None:
    committer = GroupCommitter(Ledger().commit)
    committer.close()
    with pytest.raises(StoreError) as refused:
        committer.append(1)
    assert refused.value.fix == "retry the request"
