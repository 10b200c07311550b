"""Dead-letter operations: list, show, redrive (optionally edited) and discard.

The service the API and the CLI share. It decides what a redrive carries
(mapping version, payload, Idempotency-Key) from the project the hub runs;
the store carries it out and records who did it and why. It never calls a
target: a redriven delivery is due now and a worker delivers it.

Idempotency-Key of a redrive or replay: a delivery keeps its key while it
sends what it sent before, so a target that already applied it answers with a
no-op. When the mapping version or the payload changes, the key becomes
``<event>:<integration>:<hash of mapping and payload>``: the target must take
the corrected content as a new request, not refuse it as a reused key.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from charter.catalog.model import parse_duration
from charter.errors import CharterError, Conflict, MappingError, NotFound
from charter.hub.routing import Route, Router, delivery_key
from charter.store import (
    DeadLetterFilter,
    DeliveryStatus,
    ErrorClass,
    Operator,
    OwnedBy,
    Rearm,
    Store,
    error_class,
)

# The most dead letters one bulk redrive takes; run it again for more.
MAX_BULK = 10_000
KEY_LENGTH = 100


class InvalidOperation(CharterError):
    """An operation's input cannot be used; ``pointer`` names the offending member."""

    type_ = "invalid-request"
    title = "The request is invalid"
    status = 422

    def __init__(self, detail: str, *, pointer: str, fix: str | None = None) -> None:
        super().__init__(detail, fix=fix, pointer=pointer)
        self.pointer = pointer


class MappingChoice(StrEnum):
    """Which mapping version a redrive uses."""

    CURRENT = "current"  # the version the project routes today
    ORIGINAL = "original"  # the version the delivery was created with


def content_key(event: str, integration: str, mapping: str, payload: str) -> str:
    """The Idempotency-Key of content a delivery did not send before (see the module doc)."""
    digest = hashlib.sha256(f"{mapping}\x00{payload}".encode()).hexdigest()[:12]
    key = f"{delivery_key(event, integration)}:{digest}"
    return key if len(key) <= KEY_LENGTH else f"{event}:{digest}"


def operator(by: str | None, reason: str | None) -> Operator:
    """Who and why, both required: an operation nobody can account for is refused."""
    for name, value in (("by", by), ("reason", reason)):
        if value is None or not value.strip():
            raise InvalidOperation(
                f"'{name}' is required: every dead-letter operation records who and why",
                pointer=f"/{name}",
                fix=f"send a non-empty '{name}'",
            )
    assert by is not None and reason is not None
    return Operator(by.strip(), reason.strip())


def parse_age(value: str | float | None) -> float | None:
    """Seconds from an age such as ``90``, ``30m``, ``1h`` or ``2d``; None for none."""
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidOperation(
            f"older_than={value!r} is not an age",
            pointer="/older_than",
            fix="write e.g. 90 (seconds), 30m, 1h or 2d",
        ) from exc


@dataclass(frozen=True)
class DeadLetterQuery:
    """An operator's filter in catalog words; ``older_than`` is an age in seconds."""

    integration: str | None = None
    team: str | None = None
    system: str | None = None
    error_class: str | None = None
    older_than: float | None = None
    status: str = DeliveryStatus.DEAD.value


class DeadLetters:
    """Dead letters of the hub's store, judged against the project the hub runs."""

    def __init__(self, router: Router, store: Store) -> None:
        self.router = router
        self.store = store
        self._routes: dict[str, Route] = {
            r.integration.name: r for er in router.events.values() for r in er.routes
        }

    # reading

    def where(self, query: DeadLetterQuery, now: float | None = None) -> DeadLetterFilter:
        """The store's filter for ``query``; unknown team, class or status are refused."""
        project = self.router.project
        owned = None
        if query.team is not None:
            if query.team not in project.teams:
                known = ", ".join(sorted(project.teams)) or "none"
                raise InvalidOperation(
                    f"there is no team {query.team!r}", pointer="/team", fix=f"use one of: {known}"
                )
            owned = OwnedBy(
                integrations=frozenset(
                    i.name for i in project.integrations.values() if i.owner == query.team
                ),
                systems=frozenset(
                    s.name for s in project.systems.values() if s.owner == query.team
                ),
            )
        try:
            wanted = ErrorClass(query.error_class) if query.error_class else None
        except ValueError as exc:
            raise InvalidOperation(
                f"unknown error class {query.error_class!r}",
                pointer="/error_class",
                fix="use one of: " + ", ".join(c.value for c in ErrorClass),
            ) from exc
        if query.status not in (DeliveryStatus.DEAD.value, DeliveryStatus.DISCARDED.value):
            raise InvalidOperation(
                f"status {query.status!r} is not a dead-letter status",
                pointer="/status",
                fix="use dead or discarded",
            )
        if query.older_than is not None and query.older_than < 0:
            raise InvalidOperation(
                f"older_than={query.older_than:g} is negative",
                pointer="/older_than",
                fix="give an age in seconds, e.g. 3600 for dead letters older than an hour",
            )
        dead_before = None
        if query.older_than is not None:
            dead_before = (now if now is not None else time.time()) - query.older_than
        return DeadLetterFilter(
            integration=query.integration,
            system=query.system,
            owned_by=owned,
            error_class=wanted,
            dead_before=dead_before,
            status=DeliveryStatus(query.status),
        )

    def search(self, query: DeadLetterQuery, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters newest first, with their error class, death time and owner teams."""
        rows = self.store.list_dead_letters(self.where(query), limit)
        return [self._summary(row) for row in rows]

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        project = self.router.project
        integration = project.integrations.get(row["integration"])
        target = project.systems.get(row["target"])
        summary = {k: v for k, v in row.items() if k not in ("payload", "lease_owner")}
        summary["payload"] = orjson.loads(row["payload"])
        summary["owners"] = {
            "integration": integration.owner if integration else None,
            "system": target.owner if target else None,
        }
        if "error_class" not in summary:
            found = error_class(row["last_status"], row["last_error"])
            summary["error_class"] = found.value if found else None
        return summary

    def show(self, delivery_id: int) -> dict[str, Any]:
        """One delivery with its event, payload, last error, every attempt and every action."""
        row = self._get(delivery_id)
        event = self.store.get_event(row["event_id"])
        shown = self._summary(row)
        if event is not None:
            event = dict(event)
            event["data"] = orjson.loads(event["data"])
        shown["event"] = event
        shown["attempts_log"] = self.store.delivery_attempts(delivery_id)
        shown["actions"] = self.store.delivery_actions(delivery_id)
        return shown

    def _get(self, delivery_id: int) -> dict[str, Any]:
        row = self.store.get_delivery(delivery_id)
        if row is None:
            raise NotFound(
                f"there is no delivery {delivery_id}",
                fix="list dead letters with GET /v1/dead-letters or 'charter dlq list'",
            )
        return row

    # changing

    def redrive(
        self,
        delivery_id: int,
        who: Operator,
        *,
        payload: Any = None,
        mapping: MappingChoice = MappingChoice.CURRENT,
    ) -> dict[str, Any]:
        """Make one dead (or discarded) letter due now, optionally with an edited payload.

        The edited payload must be valid under the integration's canonical entity
        schema and map to the target; errors name the member by JSON pointer.
        """
        row = self._get(delivery_id)
        self._check_redrivable(row)
        chosen = self._mapping(row, mapping)
        edited = self._checked_payload(row, chosen, payload) if payload is not None else None
        rearm = self._rearm(row, chosen, edited)
        if not self.store.redrive([rearm], who):
            # Someone else changed it between our read and our write.
            self._check_redrivable(self._get(delivery_id))
            raise Conflict(
                f"delivery {delivery_id} changed while it was being redriven",
                fix="show it again and retry",
            )
        return self.show(delivery_id)

    def redrive_many(
        self,
        query: DeadLetterQuery,
        who: Operator,
        *,
        mapping: MappingChoice = MappingChoice.CURRENT,
        limit: int = MAX_BULK,
    ) -> list[int]:
        """Redrive every dead letter ``query`` matches (up to ``limit``); returns their ids."""
        rows = self.store.list_dead_letters(self.where(query), min(limit, MAX_BULK))
        rearms = [self._rearm(row, self._mapping(row, mapping), None) for row in rows]
        return self.store.redrive(rearms, who)

    def discard(self, delivery_id: int, who: Operator) -> dict[str, Any]:
        """Give up on a dead letter, recording why; it stays visible as ``discarded``."""
        row = self._get(delivery_id)
        if row["status"] != DeliveryStatus.DEAD.value or not self.store.discard(delivery_id, who):
            row = self._get(delivery_id)
            raise Conflict(
                f"delivery {delivery_id} is {row['status']}, not dead; only dead letters are "
                "discarded",
                fix="list dead letters with GET /v1/dead-letters",
                delivery_status=row["status"],
            )
        return self.show(delivery_id)

    def _check_redrivable(self, row: dict[str, Any]) -> None:
        status = row["status"]
        if status in (DeliveryStatus.DEAD.value, DeliveryStatus.DISCARDED.value):
            return
        what = "already delivered" if status == DeliveryStatus.DELIVERED.value else "still pending"
        raise Conflict(
            f"delivery {row['id']} is {what}; only dead or discarded deliveries are redriven",
            fix="replay its event ('charter replay') to deliver it again on purpose",
            delivery_status=status,
        )

    def _checked_payload(self, row: dict[str, Any], mapping_key: str, payload: Any) -> str:
        route = self._routes.get(row["integration"])
        if route is None:
            raise Conflict(
                f"integration {row['integration']!r} is no longer in the project, so an "
                "edited payload cannot be checked",
                fix="restore the integration, or redrive without editing",
            )
        violation = route.entity.first_violation(payload)
        if violation is not None:
            pointer = f"/payload{violation.pointer}"
            raise InvalidOperation(
                f"{pointer}: {violation.message}",
                pointer=pointer,
                fix=f"send a payload valid under entity {route.integration.entity}",
            )
        mapping = self.router.mappings.get(mapping_key)
        if mapping is not None:
            try:
                mapping.apply(payload)
            except MappingError as exc:
                pointer = f"/payload{exc.pointer}"
                raise InvalidOperation(
                    f"{pointer}: {exc.detail}", pointer=pointer, fix=exc.fix
                ) from exc
        return orjson.dumps(payload).decode()

    def _current_mapping(self, row: dict[str, Any]) -> str | None:
        integration = self.router.project.integrations.get(row["integration"])
        if integration is None:
            return None
        target = next((t for t in integration.targets if t.system == row["target"]), None)
        return str(target.mapping) if target is not None else None

    def _original_mapping(self, row: dict[str, Any]) -> str:
        for action in self.store.delivery_actions(row["id"]):
            before = action["details"].get("mapping_before")
            if before:
                return str(before)
        return str(row["mapping"])

    def _mapping(self, row: dict[str, Any], choice: MappingChoice) -> str:
        if choice is MappingChoice.ORIGINAL:
            return self._original_mapping(row)
        mapping = self._current_mapping(row)
        if mapping is None:
            raise Conflict(
                f"delivery {row['id']}: integration {row['integration']!r} no longer routes "
                f"to {row['target']!r}, so it has no current mapping",
                fix="restore the integration or its target, or redrive with mapping=original",
            )
        return mapping

    def _rearm(self, row: dict[str, Any], mapping: str, payload: str | None) -> Rearm:
        content = payload if payload is not None else row["payload"]
        key = None
        if (mapping, content) != (row["mapping"], row["payload"]):
            key = content_key(row["event_id"], row["integration"], mapping, content)
        return Rearm(row["id"], mapping=mapping, payload=payload, idempotency_key=key)
