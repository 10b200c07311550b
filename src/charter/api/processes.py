"""Process routes: start, search, show, and the operator's verbs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from charter.engine.endings import MAX_WAIT_S, wait_seconds
from charter.errors import BadRequest, CharterError
from charter.runtime import Hub

log = logging.getLogger("charter.api")

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


Body = TypeVar("Body", bound=BaseModel)


def _body(request: bytes, model: type[Body]) -> Body:
    """``request`` parsed and validated as ``model``, in one pass (pydantic-core reads the
    JSON itself); what does not fit is the same 422 problem FastAPI's own validation gives."""
    try:
        return model.model_validate_json(request)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_context=False)]
        ) from None


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that validates ``model`` itself."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(schema)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


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
    """``on_change`` runs after an operation (to wake an in-process runner; the instances a
    start creates are handed to that runner by the service)."""
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

    # The start routes read their bodies themselves: FastAPI's per-request body handling
    # (reading, decoding, then validating a dict) cost more than the start itself.
    @router.post("/processes/{process}/instances", openapi_extra=_documented(StartRequest))
    async def start_instance(process: str, http: Request) -> Response:
        """Start an instance; the same process and business key never start two."""
        request = _body(await http.body(), StartRequest)
        ident, created = await service.start_async(process, request.business_key, request.input)
        return _json({"id": ident, "created": created}, 201 if created else 200)

    @router.post("/processes/{process}/instances/batch", openapi_extra=_documented(StartBatch))
    async def start_instances(process: str, http: Request) -> Response:
        """Start many instances in one request; each business key at most once, as above."""
        request = _body(await http.body(), StartBatch)
        started = await service.start_many_async(
            process, [(item.business_key, item.input) for item in request.instances]
        )
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
    async def show_instance(
        instance: str,
        wait: str | None = Query(
            None,
            description="answer once the instance has ended (completed, failed, compensated, "
            f"cancelled or terminated) or after this long, at most {MAX_WAIT_S:g}s: "
            "e.g. 30s, 500ms, 2.5",
        ),
    ) -> Response:
        """An instance with its steps and timeline; with ``wait``, held until it ends."""
        seconds = wait_seconds(wait)
        if seconds:
            return _json(await service.get_when_ended(instance, seconds))
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


# The largest start body the fast path reads; a larger one goes the framework's way.
FAST_START_MAX_BODY = 1 << 20
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastStarts:
    """ASGI in front of the API: answers a well-formed single start itself.

    ``POST /v1/processes/{process}/instances`` is the hot path of a hub that
    runs processes, and the framework's middleware, routing and dependency
    handling cost more CPU than the start. This answers the requests that
    validate and start cleanly exactly as the route above would (same body
    model, same service call, same answer); it does not answer anything
    else: every other request, and a start whose body does not validate or
    whose start raises, goes to ``app`` unchanged (its body replayed), which
    gives the same problem+json as before. A start is idempotent by business
    key, so handing a failed one on repeats nothing.
    """

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.service = hub.processes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        process = _start_target(scope)
        if process is None:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if not message.get("more_body", False) or size > FAST_START_MAX_BODY:
                break
        complete = (
            received[-1]["type"] == "http.request"
            and not received[-1].get("more_body", False)
            and size <= FAST_START_MAX_BODY
        )
        answer = None
        if complete:
            body = b"".join(m.get("body", b"") for m in received)
            answer = await self._start(process, body)
        if answer is None:
            await self.app(scope, _replay(received, receive), send)
            return
        status, payload = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _start(self, process: str, body: bytes) -> tuple[int, bytes] | None:
        """The answer to a start, or None to hand the request on."""
        try:
            request = StartRequest.model_validate_json(body)
            ident, created = await self.service.start_async(
                process, request.business_key, request.input
            )
        except (ValidationError, CharterError):
            # A bad body, an unknown process, a refused start: the app answers these with
            # its problem+json, from the start (a start is idempotent by business key).
            return None
        except Exception:
            # Unexpected: logged here with its cause; the app then tries the request once
            # more and answers as it answers any error (problem+json, 500 if it persists).
            log.exception("a start of process %r failed on the fast path", process)
            return None
        return (201 if created else 200), orjson.dumps({"id": ident, "created": created})


def _start_target(scope: Scope) -> str | None:
    """The process a single-start request names, or None for any other request."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if not path.startswith("/v1/processes/") or not path.endswith("/instances"):
        return None
    process = path[len("/v1/processes/") : -len("/instances")]
    if not process or "/" in process:
        return None
    return process


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` with the messages already read put back in front."""
    pending = list(received)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
