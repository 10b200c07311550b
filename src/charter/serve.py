"""Run Charter processes: the API with or without an in-process worker, or a worker alone."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import uvicorn
import uvloop

from charter.api import create_app
from charter.api.processes import FastStarts
from charter.delivery import DeliveryWorker, WorkerSettings, connectors_for, worker_id
from charter.delivery.guard import resilience_for
from charter.delivery.redis_state import REDIS_PREFIX_ENV, REDIS_URL_ENV
from charter.engine.runner import ProcessRunner, RunnerSettings
from charter.engine.schedule import Scheduler
from charter.errors import StoreError
from charter.runtime import Hub
from charter.store.notify import DELIVERIES_CHANNEL, listen
from charter.store.processes import PROCESSES_CHANNEL
from charter.store.resilience import ResilienceStore

log = logging.getLogger("charter")

# Objects allocated between two collections of the youngest generation. Python's default
# (700) made the collector take about a third of a busy hub's CPU: every request and
# every transition allocates hundreds of short-lived dicts, and each young collection also
# costs a roughly fixed amount. 20,000 keeps a collection's pause to tens of milliseconds.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Ready a long-running process's collector: what start-up built (the catalog, the app,
    compiled definitions, SQLAlchemy's tables) lives as long as the process, so it is moved
    out of the collector's way (``gc.freeze``), and young collections are made rarer."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


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


class Workers:
    """The background work of a process: deliveries and process instances."""

    def __init__(
        self,
        hub: Hub,
        settings: WorkerSettings | None = None,
        runner_settings: RunnerSettings | None = None,
    ) -> None:
        self.hub = hub
        name = worker_id()
        resilience = resilience_for(
            hub.project,
            ResilienceStore(hub.store.engine),
            name,
            shared_rows=hub.store.is_postgres,
            redis_url=os.environ.get(REDIS_URL_ENV) or None,
            redis_prefix=os.environ.get(REDIS_PREFIX_ENV) or None,
        )
        self.delivery = DeliveryWorker(
            hub.router,
            hub.store,
            connectors_for(hub.project),
            settings,
            name=name,
            resilience=resilience,
        )
        self.runner = ProcessRunner(
            hub.processes.store,
            hub.processes.definitions,
            # Process calls share each system's quota and breaker with the deliveries.
            resilience.guard(connectors_for(hub.project)),
            hub.tasks,
            self.delivery.name,
            runner_settings,
            on_ended=hub.processes.endings.ended,
        )

    def wake(self) -> None:
        self.delivery.wake()
        self.runner.wake()

    def stop(self) -> None:
        self.delivery.stop()
        self.runner.stop()

    async def run(self) -> None:
        """Run both until stopped; on PostgreSQL, woken by LISTEN/NOTIFY."""
        listeners: list[asyncio.Task[None]] = []
        stop_listening = asyncio.Event()
        if self.hub.store.is_postgres:
            self.delivery.listening = self.runner.listening = True
            listeners = [
                asyncio.create_task(
                    listen(self.hub.url, DELIVERIES_CHANNEL, self.delivery.wake, stop_listening)
                ),
                asyncio.create_task(
                    listen(self.hub.url, PROCESSES_CHANNEL, self.runner.wake, stop_listening)
                ),
            ]
        scheduler = asyncio.create_task(
            Scheduler(self.hub.processes).run(stop_listening), name="charter-scheduler"
        )
        try:
            await asyncio.gather(self.delivery.run(), self.runner.run())
        finally:
            stop_listening.set()
            await scheduler
            await asyncio.gather(*listeners)
            await self.delivery.aclose()
            for connector in self.runner.connectors.values():
                await connector.aclose()


def serve(
    hub: Hub,
    *,
    host: str = "127.0.0.1",
    port: int = 8400,
    with_worker: bool = True,
    worker_settings: WorkerSettings | None = None,
    runner_settings: RunnerSettings | None = None,
) -> None:
    """Serve the API until SIGTERM or SIGINT; with ``with_worker``, deliver in the same process.

    On shutdown the server stops taking requests, answers those in flight, then
    the worker finishes its in-flight calls and releases its remaining leases.
    """
    with sole_process(hub):
        _serve(hub, host, port, with_worker, worker_settings, runner_settings)


def _serve(
    hub: Hub,
    host: str,
    port: int,
    with_worker: bool,
    worker_settings: WorkerSettings | None,
    runner_settings: RunnerSettings | None,
) -> None:
    worker = Workers(hub, worker_settings, runner_settings) if with_worker else None
    if worker is not None:
        runner = worker.runner
        hub.processes.hand_starts_to(runner.name, runner.adopt, runner.settings.lease_seconds)
    if worker is not None and not hub.store.is_postgres:
        # Embedded mode: this process is the only one using the file, so any lease
        # left in it belongs to a process that died; do not wait for it to expire.
        released = hub.store.release_leases(None) + hub.processes.store.release(None)
        if released:
            log.warning("released %d leases left by a previous process", released)

    # The worker's task, once started: if it fails, the server stops too, and the process
    # exits with the failure, rather than go on taking work that nothing would do.
    running: list[asyncio.Task[None]] = []

    async def start_worker() -> Callable[[], Awaitable[None]]:
        assert worker is not None
        task = asyncio.create_task(worker.run(), name="charter-workers")
        running.append(task)

        def ended(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("the worker stopped, so the server stops too: %s", done.exception())
                server.should_exit = True

        task.add_done_callback(ended)

        async def stop() -> None:
            worker.stop()
            await asyncio.wait({task})  # a failure is raised once the server has stopped

        return stop

    app = create_app(
        hub,
        on_ingest=worker.wake if worker else None,
        lifespan_tasks=[start_worker] if worker else [],
    )
    config = uvicorn.Config(
        FastStarts(app, hub),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        # Nothing reads a request's client address or scheme, so the middleware that
        # rewrites them from X-Forwarded-* headers would be work on every request for naught.
        proxy_headers=False,
        timeout_graceful_shutdown=15,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under
    # the handler it found; with this one in place a clean shutdown exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    settle_heap()
    server = uvicorn.Server(config)
    server.run()
    for task in running:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure


def run_worker(
    hub: Hub,
    settings: WorkerSettings | None = None,
    runner_settings: RunnerSettings | None = None,
) -> None:
    """Deliver and run processes until SIGTERM or SIGINT, then shut down gracefully."""
    worker = Workers(hub, settings, runner_settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    with sole_process(hub):
        settle_heap()
        uvloop.run(main())
