"""The REST API (FastAPI): ingest, delivery status, catalog overview, health."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import orjson
from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter import __version__
from charter.api.deadletters import dead_letter_routes
from charter.api.lineage import lineage_routes
from charter.api.metrics import metrics_routes
from charter.api.ownership import ownership_routes
from charter.api.problems import install_problem_handlers
from charter.api.processes import process_routes
from charter.api.resilience import resilience_routes
from charter.errors import NotFound
from charter.hub.parsing import check_size
from charter.runtime import Hub
from charter.store import DeliveryStatus
from charter.store.notify import listen_payloads
from charter.store.processes import ENDED_CHANNEL

INGEST_THREADS = 128


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def create_app(
    hub: Hub,
    *,
    on_ingest: Callable[[], None] | None = None,
    lifespan_tasks: list[Callable[[], Any]] | None = None,
) -> FastAPI:
    """The API of ``hub``; ``on_ingest`` runs after each accepted request (to wake a worker)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Ingest requests wait in threads for their group commit; let enough of them
        # wait at once that a group can be large.
        anyio.to_thread.current_default_thread_limiter().total_tokens = INGEST_THREADS
        stops = [await start() for start in (lifespan_tasks or [])]
        stop_listening = asyncio.Event()
        # Requests waiting for instances to end hear of ends committed by other processes.
        listener = (
            asyncio.create_task(
                listen_payloads(hub.url, ENDED_CHANNEL, hub.processes.endings.heard, stop_listening)
            )
            if hub.store.is_postgres
            else None
        )
        try:
            yield
        finally:
            stop_listening.set()
            if listener is not None:
                await listener
            for stop in reversed(stops):
                await stop()

    app = FastAPI(
        title="Charter",
        version=__version__,
        description="Ownership-driven integration hub",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(process_routes(hub, on_ingest))
    app.include_router(resilience_routes(hub))
    app.include_router(metrics_routes(hub))
    app.include_router(dead_letter_routes(hub, on_ingest))
    app.include_router(ownership_routes(hub, on_ingest))
    app.include_router(lineage_routes(hub))
    limits = hub.ingest.limits

    @app.post("/v1/systems/{system}/events", status_code=202, tags=["ingest"])
    async def ingest_events(system: str, request: Request) -> Response:
        """Take one CloudEvents 1.0 event or a batch; 202 once they are durably stored."""
        hub.router.check_system(system)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            check_size(int(declared), limits)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            check_size(len(body), limits)
        answer = await run_in_threadpool(
            hub.ingest.ingest,
            system,
            bytes(body),
            request.headers.get("content-type"),
            request.headers.get("idempotency-key"),
        )
        if on_ingest is not None:
            on_ingest()
        headers = {"idempotent-replayed": "true"} if answer.replayed else None
        return _json(answer.body, answer.status, headers)

    @app.get("/v1/health", tags=["operations"])
    async def health() -> Response:
        return _json({"status": "ok", "project": hub.project.name, "version": __version__})

    @app.get("/v1/stats", tags=["operations"])
    async def stats() -> Response:
        """Counts of events and deliveries, and end-to-end latency of delivered ones."""
        counts = await run_in_threadpool(hub.store.delivery_counts)
        latencies = await run_in_threadpool(hub.store.latencies)
        return _json(
            {
                "received": counts.received,
                "deliveries": {
                    "pending": counts.pending,
                    "delivered": counts.delivered,
                    # Of the delivered, those a fallback took while the target's breaker
                    # was open.
                    "fallback": counts.fallback,
                    "dead": counts.dead,
                    "retried": counts.retried,
                    "attempts": counts.attempts,
                },
                "latency_ms": {
                    "p50": _ms(percentile(latencies, 50)),
                    "p99": _ms(percentile(latencies, 99)),
                    "mean": _ms(statistics.fmean(latencies)) if latencies else None,
                },
            }
        )

    @app.get("/v1/deliveries", tags=["deliveries"])
    async def list_deliveries(
        status: DeliveryStatus | None = None,
        integration: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        rows = await run_in_threadpool(hub.store.list_deliveries, status, integration, limit)
        return _json({"deliveries": [_delivery(r) for r in rows]})

    @app.get("/v1/deliveries/{delivery_id}", tags=["deliveries"])
    async def show_delivery(delivery_id: int) -> Response:
        row = await run_in_threadpool(hub.store.get_delivery, delivery_id)
        if row is None:
            raise NotFound(
                f"there is no delivery {delivery_id}", fix="list them with GET /v1/deliveries"
            )
        attempts = await run_in_threadpool(hub.store.delivery_attempts, delivery_id)
        return _json(_delivery(row) | {"attempts_log": attempts})

    @app.get("/v1/events/{event_id}", tags=["events"])
    async def show_event(event_id: str) -> Response:
        row = await run_in_threadpool(hub.store.get_event, event_id)
        if row is None:
            raise NotFound(f"there is no event {event_id!r}", fix="use an id from an ingest answer")
        row["data"] = orjson.loads(row["data"])
        return _json(row)

    @app.get("/v1/integrations", tags=["catalog"])
    async def integrations() -> Response:
        return _json(
            {
                "integrations": [
                    {
                        "name": i.name,
                        "owner": i.owner,
                        "tier": i.tier.value,
                        "timeliness": i.timeliness.value,
                        "source": f"{i.source.system}/{i.source.event}",
                        "targets": [t.system for t in i.targets],
                        "slo": i.slo.model_dump(),
                    }
                    for i in hub.project.integrations.values()
                ]
            }
        )

    return app


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


def _delivery(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["payload"] = orjson.loads(row["payload"])
    return row
