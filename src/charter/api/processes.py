"""Process routes: start, search, show, and the operator's verbs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter.errors import BadRequest
from charter.runtime import Hub

# The most instances one batch start takes.
MAX_BATCH = 1000


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    business_key: str = Field(min_length=1, max_length=255)
    input: dict[str, Any] = Field(default_factory=dict)


class StartBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[StartRequest] = Field(min_length=1, max_length=MAX_BATCH)


class Operation(BaseModel):
    """The body of an operation; which fields apply depends on the operation."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="api", min_length=1, max_length=100)
    reason: str = ""
    step: str | None = None
    name: str | None = None
    data: Any = None
    event_id: str | None = None
    approved: bool | None = None
    comment: str = ""


def _timestamp(name: str, value: str | None) -> float | None:
    """Seconds from an ISO 8601 time; a time without an offset is UTC."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(
            f"{name}={value!r} is not an ISO 8601 time",
            fix=f"write e.g. {name}=2026-11-27T10:00:00Z (encode '+' as %2B in a URL)",
        ) from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def process_routes(hub: Hub, on_change: Callable[[], None] | None = None) -> APIRouter:
    """``on_change`` runs after a start or an operation (to wake an in-process runner)."""
    router = APIRouter(prefix="/v1", tags=["processes"])
    service = hub.processes

    def changed() -> None:
        if on_change is not None:
            on_change()

    @router.get("/processes")
    async def list_processes() -> Response:
        counts = await run_in_threadpool(service.store.counts)
        return _json(
            {
                "processes": [
                    {
                        "name": p.name,
                        "version": p.version,
                        "owner": p.owner,
                        "tier": p.tier.value,
                        "steps": len(p.steps),
                        "triggers": [t.model_dump(exclude_none=True) for t in p.triggers],
                    }
                    for p in service.definitions.specs()
                ],
                "instances": counts,
            }
        )

    @router.post("/processes/{process}/instances")
    async def start_instance(process: str, request: StartRequest) -> Response:
        """Start an instance; the same process and business key never start two."""
        ident, created = await service.start_async(process, request.business_key, request.input)
        changed()
        return _json({"id": ident, "created": created}, 201 if created else 200)

    @router.post("/processes/{process}/instances/batch")
    async def start_instances(process: str, request: StartBatch) -> Response:
        """Start many instances in one request; each business key at most once, as above."""
        started = await service.start_many_async(
            process, [(item.business_key, item.input) for item in request.instances]
        )
        changed()
        created = sum(1 for _, new in started if new)
        return _json(
            {
                "created": created,
                "instances": [
                    {"id": ident, "business_key": item.business_key, "created": new}
                    for (ident, new), item in zip(started, request.instances, strict=True)
                ],
            },
            201 if created else 200,
        )

    @router.get("/processes/instances")
    async def search_instances(
        process: str | None = None,
        status: str | None = None,
        business_key: str | None = None,
        since: str | None = Query(None, description="ISO 8601 time"),
        until: str | None = Query(None, description="ISO 8601 time"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        window = _timestamp("since", since), _timestamp("until", until)
        rows = await run_in_threadpool(
            lambda: service.search(
                process=process,
                status=status,
                business_key=business_key,
                since=window[0],
                until=window[1],
                limit=limit,
            )
        )
        return _json({"instances": rows})

    @router.get("/processes/instances/{instance}")
    async def show_instance(instance: str) -> Response:
        return _json(await run_in_threadpool(service.get, instance))

    @router.post("/processes/instances/{instance}/{operation}", status_code=202)
    async def operate(instance: str, operation: str, request: Operation | None = None) -> Response:
        """signal, event, approve, cancel, terminate, retry or skip."""
        body = (request or Operation()).model_dump(exclude_none=True)
        await run_in_threadpool(service.operate, instance, operation, body)
        changed()
        return _json({"instance": instance, "queued": operation}, 202)

    @router.get("/escalations")
    async def list_escalations(team: str | None = None, limit: int = Query(100, ge=1)) -> Response:
        rows = await run_in_threadpool(service.store.escalations, team, limit)
        return _json({"escalations": rows})

    return router
