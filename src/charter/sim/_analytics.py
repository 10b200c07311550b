"""A simulated analytics system: takes any event object and counts events by ``type``.

``POST /events`` is applied once per Idempotency-Key, so ``by_type`` in the
report counts events, not deliveries.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._faults import FAULT_OPTIONS, Faults
from charter.sim._http import http_error
from charter.sim._target import Outcome, Shape, Target

EVENT = Shape("event", {})
# What `by_type` counts an event under when its `type` is missing or not a string.
UNTYPED = "(untyped)"


@dataclass
class _Events:
    events: list[dict[str, Any]] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        return {"events": len(self.events), "by_type": dict(self.by_type)}

    def record(self, event: dict[str, Any]) -> Outcome:
        number = f"EV-{len(self.events) + 1:06d}"
        kind = event.get("type")
        self.by_type[kind if isinstance(kind, str) else UNTYPED] += 1
        self.events.append(event)
        return Outcome(202, {"id": number, "status": "accepted"})

    def listed(self, kind: str | None) -> list[dict[str, Any]]:
        if kind is None:
            return self.events
        return [event for event in self.events if event.get("type") == kind]


class _Analytics:
    def __init__(self, target: Target[_Events, Faults]) -> None:
        self.target = target

    async def post_event(self, request: Request) -> Response:
        return await self.target.idempotent(
            request, EVENT.check, lambda events, key, event: events.record(event)
        )

    async def list_events(self, request: Request) -> Response:
        kind = request.query_params.get("type")
        return await self.target.read(request, lambda events: events.listed(kind))


def create_analytics_app(
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """Build a simulated analytics system holding its events in memory.

    ``POST /events`` with any JSON object answers 202 ``{"id": "EV-000001",
    "status": "accepted"}``; ``GET /events[?type=T]`` lists what was recorded;
    the report adds ``events`` and ``by_type`` (events without a string
    ``type`` count as ``"(untyped)"``). Writes need an Idempotency-Key. Faults
    are the ERP's; ``rng`` and ``clock`` drive the error rate and rate-limit window.
    """
    target = Target(
        "analytics system",
        _Events,
        faults=Faults(),
        fault_options=FAULT_OPTIONS,
        rng=rng or random.Random(7),
        clock=clock,
        extra_report=_Events.report,
    )
    analytics = _Analytics(target)
    return Starlette(
        routes=[
            Route("/events", analytics.post_event, methods=["POST"]),
            Route("/events", analytics.list_events, methods=["GET"]),
            *target.admin_routes(),
        ],
        exception_handlers={HTTPException: http_error},
    )
