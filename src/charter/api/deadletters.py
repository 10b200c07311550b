"""Dead-letter and replay routes: list, show, redrive (one, edited, or by filter), discard,
replay. Every change names who and why; bad input is answered as problem+json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter.delivery.deadletters import (
    MAX_BULK,
    DeadLetterQuery,
    DeadLetters,
    MappingChoice,
    operator,
    parse_age,
)
from charter.delivery.replay import Replayer, ReplayQuery, parse_time
from charter.runtime import Hub


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Who(BaseModel):
    """Who does an operation and why; both are recorded with it."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=2000)


class RedriveOne(Who):
    # The edited canonical payload; absent: the delivery's own.
    payload: dict[str, Any] | None = None
    mapping: MappingChoice = MappingChoice.CURRENT


class RedriveMany(Who):
    integration: str | None = None
    team: str | None = None
    system: str | None = None
    error_class: str | None = None
    older_than: str | float | None = None
    mapping: MappingChoice = MappingChoice.CURRENT
    limit: int = Field(MAX_BULK, ge=1, le=MAX_BULK)
    dry_run: bool = False


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | float | None = None
    until: str | float | None = None
    type: str | None = None
    key: str | None = None
    system: str | None = None
    integration: str | None = None
    dry_run: bool = False
    by: str | None = Field(None, max_length=100)
    reason: str | None = Field(None, max_length=2000)


def dead_letter_routes(hub: Hub, on_change: Callable[[], None] | None = None) -> APIRouter:
    """``on_change`` runs after deliveries were made due (to wake an in-process worker)."""
    router = APIRouter(prefix="/v1", tags=["dead letters"])
    letters = DeadLetters(hub.router, hub.store)
    replayer = Replayer(hub.router, hub.store)

    def changed() -> None:
        if on_change is not None:
            on_change()

    @router.get("/dead-letters")
    async def list_dead_letters(
        integration: str | None = None,
        team: str | None = None,
        system: str | None = None,
        error_class: str | None = None,
        older_than: str | None = Query(None, description="an age: 90, 30m, 1h, 2d"),
        status: str = Query("dead", description="dead or discarded"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        """Dead letters newest first, filtered by integration, owner team, target system,
        error class and age."""
        query = DeadLetterQuery(
            integration=integration,
            team=team,
            system=system,
            error_class=error_class,
            older_than=parse_age(older_than),
            status=status,
        )
        rows = await run_in_threadpool(letters.search, query, limit)
        return _json({"dead_letters": rows, "count": len(rows)})

    @router.post("/dead-letters/redrive")
    async def redrive_many(request: RedriveMany) -> Response:
        """Redrive every dead letter the filter matches (``dry_run``: only count them)."""
        who = operator(request.by, request.reason)
        query = DeadLetterQuery(
            integration=request.integration,
            team=request.team,
            system=request.system,
            error_class=request.error_class,
            older_than=parse_age(request.older_than),
        )
        if request.dry_run:
            rows = await run_in_threadpool(letters.search, query, request.limit)
            return _json({"dry_run": True, "matched": len(rows), "ids": [r["id"] for r in rows]})
        ids = await run_in_threadpool(
            lambda: letters.redrive_many(query, who, mapping=request.mapping, limit=request.limit)
        )
        changed()
        return _json({"dry_run": False, "redriven": len(ids), "ids": ids})

    @router.get("/dead-letters/{delivery_id}")
    async def show_dead_letter(delivery_id: int) -> Response:
        """A delivery with its event, payload, last error, every attempt and every action."""
        return _json(await run_in_threadpool(letters.show, delivery_id))

    @router.post("/dead-letters/{delivery_id}/redrive")
    async def redrive_one(delivery_id: int, request: RedriveOne) -> Response:
        """Make a dead letter due now, with an edited payload and the mapping asked for."""
        who = operator(request.by, request.reason)
        shown = await run_in_threadpool(
            lambda: letters.redrive(
                delivery_id, who, payload=request.payload, mapping=request.mapping
            )
        )
        changed()
        return _json(shown)

    @router.post("/dead-letters/{delivery_id}/discard")
    async def discard(delivery_id: int, request: Who) -> Response:
        """Give up on a dead letter; the reason is recorded and it stays listed as discarded."""
        who = operator(request.by, request.reason)
        return _json(await run_in_threadpool(letters.discard, delivery_id, who))

    @router.post("/replays")
    async def replay(request: ReplayRequest) -> Response:
        """Re-deliver events of the log (``dry_run``: count them and their deliveries)."""
        query = ReplayQuery(
            since=parse_time("since", request.since),
            until=parse_time("until", request.until),
            type=request.type,
            key=request.key,
            system=request.system,
            integration=request.integration,
        )
        if request.dry_run:
            report = await run_in_threadpool(replayer.count, query)
            return _json(report.as_dict())
        who = operator(request.by, request.reason)
        report = await run_in_threadpool(lambda: replayer.run(query, who))
        changed()
        return _json(report.as_dict(), 202)

    return router
