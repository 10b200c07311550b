"""A project compiled for the hot path: validators and mappings built once, looked up by key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from charter.catalog import Integration, Project, Tier
from charter.errors import InvalidEvent, MappingError, UnknownSystem
from charter.hub.parsing import CloudEvent
from charter.mapping import CompiledMapping, compile_mapping
from charter.schema import SchemaValidator
from charter.store import NewDelivery, NewEvent

# Hub event ids are derived from (system, CloudEvents id), so a resent event maps
# to the same row and is stored once.
EVENT_NAMESPACE = uuid.UUID("5d0c1f4e-8f39-4c1e-9a53-6a3d2c7b9e10")
TIER_RANK = {Tier.REVENUE_CRITICAL: 0, Tier.OPERATIONAL: 1, Tier.INFORMATIONAL: 2}


def event_id(system: str, ce_id: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{system}\x00{ce_id}"))


def delivery_key(event: str, integration: str) -> str:
    """The Idempotency-Key sent to targets: stable per (event, integration)."""
    return f"{event}:{integration}"


@dataclass(frozen=True)
class TargetRoute:
    system: str
    mapping: CompiledMapping


@dataclass(frozen=True)
class Route:
    """What one integration does with one source event."""

    integration: Integration
    tier: int
    ingress: CompiledMapping
    entity: SchemaValidator
    targets: list[TargetRoute]


@dataclass(frozen=True)
class EventRoute:
    schema: SchemaValidator
    routes: list[Route]


class Router:
    """The compiled form of a :class:`Project` that ingest and delivery run on."""

    def __init__(self, project: Project) -> None:
        self.project = project
        compiled = {key: compile_mapping(spec) for key, spec in project.mappings.items()}
        self.mappings: dict[str, CompiledMapping] = {m.key: m for m in compiled.values()}
        entity_validators = {
            key: SchemaValidator(project.entity_schema(*key)) for key in project.entities
        }
        self.events: dict[tuple[str, str], EventRoute] = {}
        for system in project.systems.values():
            for event_type in system.events:
                routes = [
                    Route(
                        integration=i,
                        tier=TIER_RANK[i.tier],
                        ingress=compiled[(i.mapping.name, i.mapping.version)],
                        entity=entity_validators[(i.entity.name, i.entity.version)],
                        targets=[
                            TargetRoute(t.system, compiled[(t.mapping.name, t.mapping.version)])
                            for t in i.targets
                        ],
                    )
                    for i in project.integrations_for(system.name, event_type)
                ]
                schema = SchemaValidator(project.event_schema(system.name, event_type))
                self.events[(system.name, event_type)] = EventRoute(schema, routes)

    def check_system(self, system: str) -> None:
        if system not in self.project.systems:
            known = ", ".join(sorted(self.project.systems)) or "none"
            raise UnknownSystem(
                f"there is no system {system!r} in project {self.project.name!r}",
                fix=f"post to one of the systems defined: {known}",
            )

    def prepare(self, system: str, events: list[CloudEvent], batch: bool) -> list[NewEvent]:
        """Validate and map a request's events; raise on the first that cannot be taken.

        Errors name the field by a JSON pointer into the request body, which for a
        batch starts with the event's index.
        """
        self.check_system(system)
        return [
            self._prepare_one(system, event, f"/{n}" if batch else "")
            for n, event in enumerate(events)
        ]

    def _prepare_one(self, system: str, event: CloudEvent, at: str) -> NewEvent:
        route = self.events.get((system, event.type))
        if route is None:
            declared = ", ".join(t for s, t in self.events if s == system) or "none"
            raise InvalidEvent(
                f"system {system!r} declares no event type {event.type!r}",
                fix=f"declare it under 'events:' of system {system!r} (declared: {declared})",
                pointer=f"{at}/type",
            )
        violation = route.schema.first_violation(event.data)
        if violation is not None:
            pointer = f"{at}/data{violation.pointer}"
            raise InvalidEvent(
                f"{pointer}: {violation.message}",
                fix=f"send a payload valid under the schema of {system}/{event.type}",
                pointer=pointer,
            )
        hub_id = event_id(system, event.id)
        deliveries: list[NewDelivery] = []
        for r in route.routes:
            name = r.integration.name
            try:
                canonical = r.ingress.apply(event.data)
            except MappingError as exc:
                raise InvalidEvent(
                    f"integration {name!r}: {exc.detail}",
                    fix=exc.fix,
                    pointer=f"{at}/data{exc.pointer}",
                ) from exc
            entity_error = r.entity.first_violation(canonical)
            if entity_error is not None:
                raise InvalidEvent(
                    f"integration {name!r}: the mapped {r.integration.entity} is invalid at "
                    f"{entity_error.pointer or '/'}: {entity_error.message}",
                    fix=f"fix mapping {r.integration.mapping} or the payload",
                    pointer=f"{at}/data",
                )
            payload = orjson.dumps(canonical).decode()
            deliveries.extend(
                NewDelivery(
                    integration=name,
                    target=t.system,
                    tier=r.tier,
                    idempotency_key=delivery_key(hub_id, name),
                    mapping=t.mapping.key,
                    payload=payload,
                )
                for t in r.targets
            )
        return NewEvent(
            id=hub_id,
            system=system,
            ce_id=event.id,
            type=event.type,
            source=event.source,
            subject=event.subject,
            time=event.time,
            data=orjson.dumps(event.data).decode(),
            deliveries=deliveries,
        )
