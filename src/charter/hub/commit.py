"""Group commit: many concurrent ingest requests share one durable transaction.

Each request hands its batch over and waits; one committer thread takes every
batch waiting at that moment and appends them in one transaction, so one fsync
(SQLite) or one commit round trip (PostgreSQL) serves them all. A request is
still answered only after its own batch is committed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from charter.errors import StoreError

MAX_GROUP = 512
Item = TypeVar("Item")
Result = TypeVar("Result")


class _Waiting(Generic[Item, Result]):
    """An item waiting to be committed, and whoever waits for its result: a thread (a
    `concurrent.futures.Future`) or a coroutine (an asyncio future on ``loop``)."""

    __slots__ = ("future", "item", "loop")

    def __init__(
        self,
        item: Item,
        future: Future[Result] | asyncio.Future[Result],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.item = item
        self.future = future
        self.loop = loop


class GroupCommitter(Generic[Item, Result]):
    """Commits items with ``commit``, grouping those that arrive while a commit runs.

    ``commit`` takes a list of items and returns one result per item, in order,
    all in one transaction.
    """

    def __init__(
        self, commit: Callable[[list[Item]], list[Result]], max_group: int = MAX_GROUP
    ) -> None:
        self.commit = commit
        self.max_group = max_group
        self._pending: list[_Waiting[Item, Result]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.batches = 0

    def append(self, item: Item) -> Result:
        """Commit one item durably; returns once it is committed (or raises)."""
        future: Future[Result] = Future()
        self._submit(_Waiting(item, future, None))
        return future.result()

    async def append_async(self, item: Item) -> Result:
        """`append` for a coroutine: waits on the event loop, not in a thread of its own.
        The results of a group reach each event loop in one callback."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._submit(_Waiting(item, future, loop))
        return await future

    def _submit(self, waiting: _Waiting[Item, Result]) -> None:
        with self._ready:
            if self._closed:
                raise StoreError("the hub is shutting down", fix="retry the request")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="charter-group-commit", daemon=True
                )
                self._thread.start()
            self._pending.append(waiting)
            self._ready.notify()

    def close(self) -> None:
        """Commit what is waiting, then stop the committer thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending and self._closed:
                    return
                group = self._pending[: self.max_group]
                del self._pending[: self.max_group]
            self._commit(group)

    def _commit(self, group: list[_Waiting[Item, Result]]) -> None:
        try:
            results = self.commit([waiting.item for waiting in group])
        except Exception as exc:
            # Any failure belongs to the waiting request, which turns it into its answer.
            if len(group) == 1:
                _fail(group[0], exc)
                return
            # One bad batch must not fail the others: commit each on its own.
            for waiting in group:
                self._commit([waiting])
            return
        self.commits += 1
        self.batches += len(group)
        _settle(group, results)


def _settle(group: list[_Waiting[Item, Result]], results: list[Result]) -> None:
    """Hand each waiter of ``group`` its result: threads at once, each event loop in one
    callback for all its waiters."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiting[Item, Result], Result]]] = {}
    for waiting, result in zip(group, results, strict=True):
        if waiting.loop is None:
            waiting.future.set_result(result)
        else:
            by_loop.setdefault(waiting.loop, []).append((waiting, result))
    for loop, settled in by_loop.items():
        if not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[_Waiting[Item, Result], Result]]) -> None:
    for waiting, result in settled:
        if not waiting.future.done():  # a request cancelled meanwhile no longer waits
            waiting.future.set_result(result)


def _fail(waiting: _Waiting[Item, Result], error: Exception) -> None:
    """Hand ``error`` to the waiter of ``waiting``, on its event loop if it has one."""
    if waiting.loop is None:
        waiting.future.set_exception(error)
    elif not waiting.loop.is_closed():
        waiting.loop.call_soon_threadsafe(_fail_now, waiting, error)


def _fail_now(waiting: _Waiting[Item, Result], error: Exception) -> None:
    if not waiting.future.done():
        waiting.future.set_exception(error)
