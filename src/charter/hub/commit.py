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
        self._pending: list[tuple[Item, Future[Result]]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.batches = 0

    def append(self, item: Item) -> Result:
        """Commit one item durably; returns once it is committed (or raises)."""
        return self._submit(item).result()

    async def append_async(self, item: Item) -> Result:
        """`append` for a coroutine: waits on the event loop, not in a thread of its own."""
        return await asyncio.wrap_future(self._submit(item))

    def _submit(self, item: Item) -> Future[Result]:
        future: Future[Result] = Future()
        with self._ready:
            if self._closed:
                raise StoreError("the hub is shutting down", fix="retry the request")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="charter-group-commit", daemon=True
                )
                self._thread.start()
            self._pending.append((item, future))
            self._ready.notify()
        return future

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

    def _commit(self, group: list[tuple[Item, Future[Result]]]) -> None:
        try:
            results = self.commit([item for item, _ in group])
        except Exception as exc:
            # Any failure belongs to the waiting request, which turns it into its answer.
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            # One bad batch must not fail the others: commit each on its own.
            for item in group:
                self._commit([item])
            return
        self.commits += 1
        self.batches += len(group)
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)
