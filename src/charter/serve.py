"""Run Charter processes: the API with or without an in-process worker, or a worker alone."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import uvicorn
import uvloop

from charter.api import create_app
from charter.delivery import DeliveryWorker, WorkerSettings, connectors_for
from charter.errors import StoreError
from charter.runtime import Hub
from charter.store.notify import DELIVERIES_CHANNEL, listen

log = logging.getLogger("charter")


@contextmanager
def sole_process(hub: Hub) -> Iterator[None]:
    """On SQLite, make sure this is the only Charter process serving the database file.

    The embedded mode relies on it: a process that starts there releases every
    lease it finds, which is only right when no other process holds any.
    """
    database = hub.store.engine.url.database
    if hub.store.is_postgres or not database:
        yield
        return
    with open(f"{database}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreError(
                f"another Charter process is already serving {database}",
                fix="stop it first; to run several processes, use PostgreSQL "
                "(CHARTER_DATABASE_URL)",
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_worker(hub: Hub, settings: WorkerSettings | None = None) -> DeliveryWorker:
    return DeliveryWorker(hub.router, hub.store, connectors_for(hub.project), settings)


async def deliver(hub: Hub, worker: DeliveryWorker) -> None:
    """Run ``worker`` until it is stopped; on PostgreSQL, woken by LISTEN/NOTIFY."""
    listener: asyncio.Task[None] | None = None
    stop_listening = asyncio.Event()
    if hub.store.is_postgres:
        worker.listening = True
        listener = asyncio.create_task(
            listen(hub.url, DELIVERIES_CHANNEL, worker.wake, stop_listening)
        )
    try:
        await worker.run()
    finally:
        stop_listening.set()
        if listener is not None:
            await listener
        await worker.aclose()


def serve(
    hub: Hub,
    *,
    host: str = "127.0.0.1",
    port: int = 8400,
    with_worker: bool = True,
    worker_settings: WorkerSettings | None = None,
) -> None:
    """Serve the API until SIGTERM or SIGINT; with ``with_worker``, deliver in the same process.

    On shutdown the server stops taking requests, answers those in flight, then
    the worker finishes its in-flight calls and releases its remaining leases.
    """
    with sole_process(hub):
        _serve(hub, host, port, with_worker, worker_settings)


def _serve(
    hub: Hub,
    host: str,
    port: int,
    with_worker: bool,
    worker_settings: WorkerSettings | None,
) -> None:
    worker = build_worker(hub, worker_settings) if with_worker else None
    if worker is not None and not hub.store.is_postgres:
        # Embedded mode: this process is the only one using the file, so any lease
        # left in it belongs to a process that died; do not wait for it to expire.
        released = hub.store.release_leases(None)
        if released:
            log.warning("released %d leases left by a previous process", released)

    async def start_worker() -> Callable[[], Awaitable[None]]:
        assert worker is not None
        task = asyncio.create_task(deliver(hub, worker), name="delivery-worker")

        async def stop() -> None:
            worker.stop()
            await task

        return stop

    app = create_app(
        hub,
        on_ingest=worker.wake if worker else None,
        lifespan_tasks=[start_worker] if worker else [],
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under
    # the handler it found; with this one in place a clean shutdown exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    uvicorn.Server(config).run()


def run_worker(hub: Hub, settings: WorkerSettings | None = None) -> None:
    """Deliver until SIGTERM or SIGINT, then shut down gracefully."""
    worker = build_worker(hub, settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await deliver(hub, worker)

    with sole_process(hub):
        uvloop.run(main())
