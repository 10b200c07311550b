"""Fallback while a target's circuit breaker is open: when to use it, and the file drop.

A target may name a fallback in the catalog (:class:`~charter.catalog.model.Fallback`):
another target system, or a file drop. The delivery worker asks :func:`park_until`
what to do with a delivery its target's breaker held back; :class:`DropFolder`
appends deliveries to a folder as JSON lines.

Deliberately not here: quota deferrals never fall back (the target is up, only
busy), and nothing moves deliveries from a file drop back to the target once it
recovers: the lines carry what is needed (Idempotency-Key, action, payload) for
whoever replays them.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

from charter.catalog.model import Fallback
from charter.delivery.guard import Deferred
from charter.errors import TargetUnavailable

# Added to a delivery's Idempotency-Key when it goes to a fallback system, so the
# backup dedupes retries of it without taking it for the target's own key.
FALLBACK_KEY_SUFFIX = ":fallback"


def park_until(
    fallback: Fallback | None, deferred: Deferred, opened_at: float, now: float
) -> float | None:
    """When to put a held-back delivery back until, or None to send it to ``fallback`` now.

    Only an open breaker (``deferred.kind == "breaker"``) that has been open since
    ``opened_at`` for at least ``fallback.after`` leads to the fallback. Before then the
    delivery waits, but no later than the moment the fallback becomes due. Pure.
    """
    if fallback is None or deferred.kind != "breaker":
        return deferred.until
    due = (opened_at or now) + fallback.after
    if now >= due:
        return None
    return min(deferred.until, due)


def drop_file_name(system: str, at: float) -> str:
    """The file of ``system``'s deliveries dropped on the UTC day of ``at``."""
    return f"{system}-{time.strftime('%Y-%m-%d', time.gmtime(at))}.jsonl"


class DropFolder:
    """Appends deliveries to ``folder`` as JSON lines, one file per target system and UTC day.

    Contract: when :meth:`append` returns, the line is on disk (the file is fsync'd, and
    the folder too when the file is new). Each line is written whole in one ``write``
    under an exclusive lock on the file, so concurrent workers never interleave; a line
    cut short by a crash is never reported as written, and the next append starts on a
    new line, so a reader skips at most that one broken line. A delivery whose append
    was cut short is retried, so a line may appear twice after a crash: readers dedupe
    by ``idempotency_key``.
    """

    def __init__(self, folder: Path, shown: str) -> None:
        self.folder = folder
        # How the folder reads in the catalog, for what is recorded and reported.
        self.shown = shown

    async def append(self, system: str, record: dict[str, Any]) -> str:
        """Append ``record`` to today's file of ``system``; returns that file as shown."""
        now = time.time()
        name = drop_file_name(system, now)
        line = orjson.dumps({"at": now, **record}) + b"\n"
        try:
            await asyncio.to_thread(self._write, self.folder / name, line)
        except OSError as exc:
            raise TargetUnavailable(
                f"the file drop {self.shown}/{name} cannot be written: {exc.strerror or exc}",
                error_class="file_drop",
                fix=f"make the folder {self.shown!r} writable and keep space free",
            ) from exc
        return f"{self.shown}/{name}"

    def _write(self, path: Path, line: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            # A line cut short by a crash stays as it is; ours starts on a line of its own.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):
                # Keep the file whole: take the partial line back out.
                os.ftruncate(fd, size)
                raise OSError(f"only {written} of {len(line)} bytes were written")
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        if created:
            directory = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


__all__ = ["FALLBACK_KEY_SUFFIX", "DropFolder", "drop_file_name", "park_until"]
