"""Quota and circuit breaker routes: budgets and their use per flow, breakers and their history.

Read-only; unknown systems and bad parameters are answered as problem+json.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter.delivery.overview import breaker_report, breaker_transitions, quota_report
from charter.runtime import Hub
from charter.store.resilience import ResilienceStore


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def resilience_routes(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["resilience"])
    store = ResilienceStore(hub.store.engine)

    @router.get("/quotas")
    async def quotas() -> Response:
        """Every system's quota budget: tokens, pause, daily use, shares, use per flow."""
        rows = await run_in_threadpool(quota_report, hub.project, store)
        return _json({"quotas": rows})

    @router.get("/systems/{system}/quota")
    async def system_quota(system: str) -> Response:
        """One system's quota budget and its use per integration or process."""
        [row] = await run_in_threadpool(quota_report, hub.project, store, system)
        return _json(row)

    @router.get("/breakers")
    async def breakers() -> Response:
        """Every circuit breaker: state, since when, failures, the last error."""
        return _json({"breakers": await run_in_threadpool(breaker_report, hub.project, store)})

    @router.get("/breakers/{system}/transitions")
    async def transitions(system: str, limit: int = Query(100, ge=1, le=1000)) -> Response:
        """A system's breaker transitions, newest first, each with its reason and worker."""
        rows = await run_in_threadpool(breaker_transitions, hub.project, store, system, limit)
        return _json({"system": system, "transitions": rows})

    return router
