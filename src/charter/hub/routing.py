"""A project compiled for the hot path: validators and mappings built once, looked up by key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from charter.catalog import Integration, Project, Tier
from charter.catalog.model import WritePolicy
from charter.errors import InvalidEvent, MappingError, UnknownSystem
from charter.governance.drift import DriftTally, PayloadShape, PickList, pick_lists
from charter.governance.ownership import FieldGuard, FieldWriteRefused
from charter.hub.parsing import CloudEvent
from charter.mapping import CompiledMapping, compile_mapping
from charter.schema import SchemaValidator
from charter.store import FieldHold, FieldWrite, NewDelivery, NewEvent, RecordKey

# Hub event ids are derived from (system, CloudEvents id), so a resent event maps
# to the same row and is stored once.
EVENT_NAMESPACE = uuid.UUID("5d0c1f4e-8f39-4c1e-9a53-6a3d2c7b9e10")
TIER_RANK = {Tier.REVENUE_CRITICAL: 0, Tier.OPERATIONAL: 1, Tier.INFORMATIONAL: 2}


def event_id(system: str, ce_id: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{system}\x00{ce_id}"))


def record_key(canonical: dict[str, Any], field: str) -> str | None:
    """The value of the entity's key ``field`` in a canonical payload, as text; None if absent.

    Text stays as it is; other values are their JSON (``123``, ``true``), so
    ``charter lineage order/123`` finds a numeric key too.
    """
    value: Any = canonical
    for part in field.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def delivery_key(event: str, integration: str) -> str:
    """The Idempotency-Key sent to targets: stable per (event, integration)."""
    return f"{event}:{integration}"


@dataclass(frozen=True)
class TargetRoute:
    system: str
    mapping: CompiledMapping


class Ingress:
    """How an integration turns a source payload into its canonical payload: the ingress
    mapping, then the fields its source may not write and whose policy is ``ignore`` dropped.

    Replay maps logged events through this, so a replayed delivery carries what the
    original ingest delivered. Ingest itself runs ``mapping`` and the route's guard,
    which also counts and holds writes.
    """

    __slots__ = ("ignored", "key", "mapping")

    def __init__(self, mapping: CompiledMapping, guard: FieldGuard) -> None:
        self.mapping = mapping
        self.key = mapping.key
        self.ignored = tuple(f.name for f in guard.fields if f.policy is WritePolicy.IGNORE)

    def apply(self, payload: Any) -> dict[str, Any]:
        canonical = self.mapping.apply(payload)
        for name in self.ignored:
            canonical.pop(name, None)
        return canonical


@dataclass(frozen=True)
class Route:
    """What one integration does with one source event."""

    integration: Integration
    tier: int
    ingress: Ingress
    entity: SchemaValidator
    targets: list[TargetRoute]
    # Who owns the canonical fields this integration's source writes.
    guard: FieldGuard
    # The entity's key field, whose value names the canonical record (for lineage).
    key_field: str


@dataclass(frozen=True)
class EventRoute:
    schema: SchemaValidator
    routes: list[Route]
    # What drift counting checks: the schema's declared fields, the ingress value maps.
    shape: PayloadShape
    pick_lists: tuple[PickList, ...] = ()


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
                    self._route(project, i, compiled, entity_validators)
                    for i in project.integrations_for(system.name, event_type)
                ]
                event_schema = project.event_schema(system.name, event_type)
                # Integrations sharing an ingress mapping count its values once.
                ingress = {r.ingress.key: r.ingress.mapping for r in routes}
                self.events[(system.name, event_type)] = EventRoute(
                    SchemaValidator(event_schema),
                    routes,
                    PayloadShape(event_schema),
                    tuple(check for m in ingress.values() for check in pick_lists(m)),
                )

    @staticmethod
    def _route(
        project: Project,
        integration: Integration,
        compiled: dict[tuple[str, int], CompiledMapping],
        entity_validators: dict[tuple[str, int], SchemaValidator],
    ) -> Route:
        i = integration
        mapping = compiled[(i.mapping.name, i.mapping.version)]
        guard = FieldGuard(project, i, list(mapping.spec.fields))
        return Route(
            integration=i,
            tier=TIER_RANK[i.tier],
            ingress=Ingress(mapping, guard),
            entity=entity_validators[(i.entity.name, i.entity.version)],
            targets=[
                TargetRoute(t.system, compiled[(t.mapping.name, t.mapping.version)])
                for t in i.targets
            ],
            guard=guard,
            key_field=project.entities[(i.entity.name, i.entity.version)].key,
        )

    def check_system(self, system: str) -> None:
        if system not in self.project.systems:
            known = ", ".join(sorted(self.project.systems)) or "none"
            raise UnknownSystem(
                f"there is no system {system!r} in project {self.project.name!r}",
                fix=f"post to one of the systems defined: {known}",
            )

    def prepare(
        self,
        system: str,
        events: list[CloudEvent],
        batch: bool,
        tally: DriftTally | None = None,
    ) -> list[NewEvent]:
        """Validate, map and enforce field ownership for a request's events; raise on the
        first that cannot be taken.

        Errors name the field by a JSON pointer into the request body, which for a
        batch starts with the event's index. ``tally`` counts drift of every event
        that validates against its schema, and writes refused by a field's policy,
        up to the event that is refused.
        """
        self.check_system(system)
        tally = DriftTally() if tally is None else tally
        return [
            self._prepare_one(system, event, f"/{n}" if batch else "", tally)
            for n, event in enumerate(events)
        ]

    def _prepare_one(self, system: str, event: CloudEvent, at: str, tally: DriftTally) -> NewEvent:
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
        tally.observe(system, event.type, route.shape, route.pick_lists, event.data)
        hub_id = event_id(system, event.id)
        deliveries: list[NewDelivery] = []
        holds: list[FieldHold] = []
        writes: list[FieldWrite] = []
        records: list[RecordKey] = []
        for r in route.routes:
            name = r.integration.name
            try:
                canonical = r.ingress.mapping.apply(event.data)
            except MappingError as exc:
                raise InvalidEvent(
                    f"integration {name!r}: {exc.detail}",
                    fix=exc.fix,
                    pointer=f"{at}/data{exc.pointer}",
                ) from exc
            if r.guard.fields:
                try:
                    enforced = r.guard.enforce(canonical, f"{at}/data")
                except FieldWriteRefused as exc:
                    tally.refused.append(exc.write)
                    raise
                canonical = enforced.canonical
                holds.extend(enforced.holds)
                writes.extend(enforced.writes)
            entity_error = r.entity.first_violation(canonical)
            if entity_error is not None:
                raise InvalidEvent(
                    f"integration {name!r}: the mapped {r.integration.entity} is invalid at "
                    f"{entity_error.pointer or '/'}: {entity_error.message}",
                    fix=f"fix mapping {r.integration.mapping} or the payload",
                    pointer=f"{at}/data",
                )
            payload = orjson.dumps(canonical).decode()
            key = record_key(canonical, r.key_field)
            if key is not None:
                records.append(RecordKey(r.integration.entity.name, key, name, r.ingress.key))
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
            holds=holds,
            writes=writes,
            records=records,
        )
