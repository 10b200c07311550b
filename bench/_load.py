"""A small, fast HTTP/1.1 load generator on raw asyncio streams.

Each of N keep-alive connections sends one request, reads the status line,
the headers and a ``Content-Length`` body, then takes the next request. That
is all it understands: a response without ``Content-Length`` (chunked, or
close-delimited) is a protocol error, which is enough for the hub and the
simulators, which always send one.

Closed loop (``rate=None``): every connection sends as soon as it has its
answer, so the measured rate is what the server sustains at that concurrency.

Open loop (``rate=r``): request ``i`` is due at ``start + i / r`` whatever
happened to earlier ones. A free connection takes the next request and sends it
when it is due. When every connection is busy at that moment the request waits,
and its latency counts from when it was due, not from when it was sent, so
back-pressure shows up as latency instead of a lower offered rate (no
coordinated omission). A request taken by an idle connection counts from its
actual send, so the event loop's timer slop is not charged to the server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

_CONTENT_LENGTH = b"\r\ncontent-length:"
MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The server sent something this client does not handle."""


def build_request(
    method: str,
    host: str,
    port: int,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request with a ``Content-Length`` body."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status code and body of the next response on ``reader``."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"response head over {MAX_HEAD} bytes") from exc
    if not head.startswith(b"HTTP/1.1 ") or len(head) < 12:
        raise ProtocolError(f"not an HTTP/1.1 status line: {head[:40]!r}")
    status = int(head[9:12])
    lowered = head.lower()
    at = lowered.find(_CONTENT_LENGTH)
    if at < 0:
        raise ProtocolError(f"response {status} has no Content-Length")
    end = lowered.index(b"\r\n", at + len(_CONTENT_LENGTH))
    length = int(lowered[at + len(_CONTENT_LENGTH) : end])
    body = await reader.readexactly(length) if length else b""
    return status, body


@dataclass
class LoadResult:
    """What one load run saw; times are ``time.perf_counter()`` seconds."""

    started: float
    finished: float
    latencies: list[float]
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return self.finished - self.started

    @property
    def sent(self) -> int:
        return len(self.latencies)

    def rate(self) -> float:
        """Requests answered per second over the whole run."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class _Run:
    requests: Sequence[bytes]
    rate: float | None
    expect: int
    started: float = 0.0
    next_index: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def _connection(
    run: _Run, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while run.next_index < len(run.requests):
            index = run.next_index
            run.next_index += 1
            taken = time.perf_counter()
            if run.rate is None:
                begin = taken
            else:
                due = run.started + index / run.rate
                if taken < due:
                    await asyncio.sleep(due - taken)
                    begin = time.perf_counter()
                else:
                    begin = due
            writer.write(run.requests[index])
            status, body = await read_response(reader)
            run.latencies.append(time.perf_counter() - begin)
            run.statuses[status] += 1
            if status != run.expect and len(run.failures) < 5:
                run.failures.append(f"{status}: {body[:300].decode('utf-8', 'replace')}")
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    rate: float | None = None,
    expect: int = 202,
) -> LoadResult:
    """Send every request once over ``connections`` keep-alive connections.

    ``rate`` paces an open-loop run (requests per second); None runs closed
    loop. Answers other than ``expect`` are counted and the first few kept in
    ``failures``; a broken connection raises.
    """
    run = _Run(requests, rate, expect)
    # Connect first, so that setting up connections is not charged to the first requests.
    streams = [
        await asyncio.open_connection(host, port, limit=MAX_HEAD) for _ in range(connections)
    ]
    run.started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for reader, writer in streams:
            group.create_task(_connection(run, reader, writer))
    return LoadResult(run.started, time.perf_counter(), run.latencies, run.statuses, run.failures)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values`` by nearest rank."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(len(ordered) * q / 100)))
    return ordered[rank - 1]
