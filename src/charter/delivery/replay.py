"""Replay: re-deliver events of the event log to one integration or all that route them.

Events are selected by time received, event type, entity key and source system,
and mapped again with the project the hub runs today (ingress mapping and the
target's current mapping version). Each (event, integration, target) gets its
delivery back: re-armed if it exists, created if the event never had one (an
integration added later). Idempotency-Keys make it safe: a delivery that sends
what it sent before keeps its key, so a target that applied it answers with a
no-op; corrected content gets a key of its own (see ``deadletters``).

Replay does not start processes again and does not touch pending deliveries
(they are delivered anyway) or discarded ones (redrive those on purpose).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from charter.delivery.deadletters import InvalidOperation, content_key
from charter.errors import MappingError
from charter.hub.routing import Router, delivery_key
from charter.store import EventFilter, Operator, ReplayDelivery, Store

# Events read, mapped and written per transaction.
PAGE = 1000
MAX_ERRORS = 20


def parse_time(name: str, value: str | float | None) -> float | None:
    """Seconds since the epoch from an ISO 8601 time (UTC when it has no offset) or a number."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidOperation(
            f"{name}={value!r} is not an ISO 8601 time",
            pointer=f"/{name}",
            fix=f"write e.g. {name}=2026-11-27T10:00:00Z",
        ) from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class ReplayQuery:
    """Which events to replay, and to which integration (None: every one that routes them)."""

    since: float | None = None
    until: float | None = None
    type: str | None = None
    key: str | None = None
    system: str | None = None
    integration: str | None = None


@dataclass
class ReplayReport:
    """What a replay found and did; a dry run only counts."""

    replay_id: str
    dry_run: bool
    events: int = 0
    deliveries: int = 0
    created: int = 0
    rearmed: int = 0
    pending: int = 0
    discarded: int = 0
    # Events that no longer map (or no longer validate) under today's project.
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "dry_run": self.dry_run,
            "events": self.events,
            "deliveries": self.deliveries,
            "created": self.created,
            "rearmed": self.rearmed,
            "skipped": {"pending": self.pending, "discarded": self.discarded},
            "failed": self.failed,
            "errors": self.errors,
        }


class Replayer:
    """Runs replays against the hub's store with the project the hub runs."""

    def __init__(self, router: Router, store: Store) -> None:
        self.router = router
        self.store = store

    def check(self, query: ReplayQuery) -> EventFilter:
        """The store's event filter for ``query``; refuses an empty or unknown selection."""
        if query.since is not None and query.until is not None and query.since >= query.until:
            raise InvalidOperation(
                "the time range is empty: 'since' is not before 'until'",
                pointer="/until",
                fix="give an 'until' later than 'since'",
            )
        project = self.router.project
        if query.integration is not None and query.integration not in project.integrations:
            known = ", ".join(sorted(project.integrations)) or "none"
            raise InvalidOperation(
                f"there is no integration {query.integration!r}",
                pointer="/integration",
                fix=f"use one of: {known}, or leave it out for all",
            )
        if query.system is not None and query.system not in project.systems:
            raise InvalidOperation(
                f"there is no system {query.system!r}",
                pointer="/system",
                fix="use one of: " + ", ".join(sorted(project.systems)),
            )
        return EventFilter(
            since=query.since,
            until=query.until,
            type=query.type,
            system=query.system,
            key=query.key,
        )

    def count(self, query: ReplayQuery) -> ReplayReport:
        """A dry run: the events selected and the deliveries a replay would queue."""
        return self.run(query, Operator("dry-run", "count"), dry_run=True)

    def run(
        self,
        query: ReplayQuery,
        who: Operator,
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayReport:
        """Replay the selected events page by page; ``progress`` hears events done per page."""
        where = self.check(query)
        report = ReplayReport(replay_id=str(uuid.uuid4()), dry_run=dry_run)
        after = 0
        while True:
            page = self.store.events_for_replay(where, after, PAGE)
            if not page:
                break
            after = int(page[-1]["seq"])
            planned: list[ReplayDelivery] = []
            for event in page:
                planned.extend(self._plan(event, query, report))
            report.deliveries += len(planned)
            if not dry_run and planned:
                done = self.store.replay(report.replay_id, planned, who)
                report.created += done.created
                report.rearmed += done.rearmed
                report.pending += done.pending
                report.discarded += done.discarded
            if progress is not None:
                progress(len(page))
        return report

    def _plan(
        self, event: dict[str, Any], query: ReplayQuery, report: ReplayReport
    ) -> list[ReplayDelivery]:
        """The deliveries of one event under today's project; none if it is not selected."""
        data = orjson.loads(event["data"])
        if query.key is not None and not self._has_key(event, data, query.key):
            return []
        report.events += 1
        route = self.router.events.get((event["system"], event["type"]))
        if route is None:
            return []
        planned: list[ReplayDelivery] = []
        for r in route.routes:
            name = r.integration.name
            if query.integration is not None and name != query.integration:
                continue
            try:
                canonical = r.ingress.apply(data)
            except MappingError as exc:
                self._failed(report, event, name, f"{exc.detail} (at /data{exc.pointer})")
                continue
            violation = r.entity.first_violation(canonical)
            if violation is not None:
                self._failed(
                    report,
                    event,
                    name,
                    f"the mapped {r.integration.entity} is invalid at "
                    f"{violation.pointer or '/'}: {violation.message}",
                )
                continue
            payload = orjson.dumps(canonical).decode()
            planned.extend(
                ReplayDelivery(
                    event_id=event["id"],
                    integration=name,
                    target=t.system,
                    tier=r.tier,
                    mapping=t.mapping.key,
                    payload=payload,
                    idempotency_key=delivery_key(event["id"], name),
                    changed_key=content_key(event["id"], name, t.mapping.key, payload),
                )
                for t in r.targets
            )
        return planned

    def _has_key(self, event: dict[str, Any], data: Any, key: str) -> bool:
        """Whether the event is about entity ``key``: its subject or its declared key field."""
        if event["subject"] == key:
            return True
        system = self.router.project.systems.get(event["system"])
        declared = system.events.get(event["type"]) if system is not None else None
        value: Any = data
        for part in (declared.key if declared is not None else "id").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value is not None and str(value) == key

    @staticmethod
    def _failed(report: ReplayReport, event: dict[str, Any], integration: str, why: str) -> None:
        report.failed += 1
        if len(report.errors) < MAX_ERRORS:
            report.errors.append(
                {"event_id": event["id"], "integration": integration, "error": why}
            )
