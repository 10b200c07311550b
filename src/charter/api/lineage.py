"""Lineage routes: one canonical record's source events, field origins and deliveries.

An unknown entity or a record with no stored event is a 404 problem+json.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter.governance.lineage import lineage
from charter.runtime import Hub


def lineage_routes(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["lineage"])

    @router.get("/lineage/{entity}/{key:path}")
    async def show_lineage(entity: str, key: str) -> Response:
        """Where record ``entity``/``key`` came from (events, mapping versions, the origin of
        each field) and every delivery of it, with attempts and operator actions."""
        found = await run_in_threadpool(lineage, hub.store, hub.project, entity, key)
        return Response(orjson.dumps(found.to_json()), media_type="application/json")

    return router
