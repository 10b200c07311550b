"""Field ownership and drift routes: held writes and their review, write counts, drift,
notices. Every review names who and why; bad input is answered as problem+json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter.governance.drift import drift_report, parse_since
from charter.governance.ownership import QuarantineReview, write_report
from charter.runtime import Hub
from charter.store import Operator


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Review(BaseModel):
    """Who accepts or rejects a held write, and why; both are recorded with it."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=2000)


def ownership_routes(hub: Hub, on_change: Callable[[], None] | None = None) -> APIRouter:
    """``on_change`` runs after held deliveries were released (to wake an in-process worker)."""
    router = APIRouter(prefix="/v1", tags=["ownership and drift"])
    review = QuarantineReview(hub.project, hub.store)

    @router.get("/quarantine")
    async def list_quarantine(
        team: str | None = Query(None, description="the owner team of the field"),
        status: str = Query("open", description="open, accepted, rejected or all"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        """Writes of fields by systems that do not own them, held for the owner, newest first."""
        rows = await run_in_threadpool(review.list, team, status, limit)
        return _json({"quarantine": rows, "count": len(rows)})

    async def decide(hold_id: int, accept: bool, request: Review) -> Response:
        who = Operator(request.by, request.reason)
        row = await run_in_threadpool(review.decide, hold_id, accept, who)
        if row["released"] and on_change is not None:
            on_change()
        return _json(row)

    @router.post("/quarantine/{hold_id}/accept")
    async def accept(hold_id: int, request: Review) -> Response:
        """Accept a held write: its deliveries go out as they are."""
        return await decide(hold_id, True, request)

    @router.post("/quarantine/{hold_id}/reject")
    async def reject(hold_id: int, request: Review) -> Response:
        """Reject a held write: its deliveries go out without the field."""
        return await decide(hold_id, False, request)

    @router.get("/ownership/writes")
    async def writes() -> Response:
        """Writes of governed fields by systems that do not own them, by policy and outcome."""
        rows = await run_in_threadpool(write_report, hub.project, hub.store)
        return _json({"writes": rows})

    @router.get("/drift")
    async def drift(
        system: str | None = None,
        since: str | None = Query(None, description="an ISO 8601 time, epoch seconds or an age"),
    ) -> Response:
        """Unknown fields, unmapped pick-list values and stopped fields, per system and field."""
        after = parse_since(since)
        rows = await run_in_threadpool(
            lambda: drift_report(hub.project, hub.store, system=system, since=after)
        )
        return _json({"drift": rows, "count": len(rows)})

    @router.get("/notices")
    async def notices(team: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> Response:
        """What the hub told teams (``drift.detected``), newest first; ``event`` is the
        CloudEvent (type ``charter.drift.detected``) that logged the notice in the hub's event
        log, also at ``GET /v1/events/{event_id}``."""
        rows = await run_in_threadpool(hub.store.list_notices, team, limit)
        return _json({"notices": rows, "count": len(rows)})

    return router
