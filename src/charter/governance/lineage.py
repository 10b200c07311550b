"""Lineage of one canonical record: the events it came from, how each field was made, and
every delivery of it to targets.

``lineage(store, project, entity, key)`` reads the record's trail from the store
(``record_keys``, written with the events) and explains each canonical field
from the ingress mapping spec that produced it. It reads only; it does not
re-run mappings against the catalog of today, so a field's origin is the rule of
the mapping version that ran (when that version is still in the catalog).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from charter.catalog import Entity, Project
from charter.errors import NotFound
from charter.mapping import MISSING, FieldRule, MappingSpec, get_path
from charter.store import RecordTrail, Store

# Events read per record; a record touched more often shows its first ones.
EVENT_LIMIT = 1000


@dataclass(frozen=True)
class FieldOrigin:
    """Where one canonical field came from: the source system and the mapping rule.

    ``rule`` reads like the spec: ``from account.id``, ``expr $sum(lines.qty)``,
    ``const``, with ``, values map`` and ``, default`` when those apply. ``kind``
    is what produced this record's value: ``from``, ``expr``, ``const``,
    ``values`` (a value map translated it) or ``default`` (the source had no value).
    ``present`` is False when the field is not in the canonical payload (no
    value, or dropped because the source is not its system of record).
    """

    field: str
    system: str
    event: str
    mapping: str
    rule: str
    kind: str
    source: str | None
    system_of_record: str
    present: bool


@dataclass(frozen=True)
class SourceEvent:
    """An event that mapped to the record, through one integration's ingress mapping."""

    id: str
    system: str
    type: str
    ce_id: str
    received_at: float
    integration: str
    mapping: str
    canonical: dict[str, Any] | None
    fields: list[FieldOrigin]
    # Why ``fields`` is empty although the event mapped (the mapping left the catalog).
    note: str | None = None


@dataclass(frozen=True)
class Attempt:
    number: int
    started_at: float
    latency_ms: float
    status_code: int | None
    outcome: str
    error: str | None


@dataclass(frozen=True)
class Action:
    """What an operator did to a delivery (redrive, discard, edit, replay)."""

    action: str
    by: str
    reason: str
    at: float
    details: Any


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    integration: str
    target: str
    mapping: str
    status: str
    idempotency_key: str
    created_at: float
    delivered_at: float | None
    attempts: list[Attempt] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


@dataclass(frozen=True)
class Lineage:
    """Everything Charter knows about how one canonical record came and went."""

    entity: str
    key: str
    owner: str
    system_of_record: str
    events: list[SourceEvent]
    deliveries: list[Delivery]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_entity(project: Project, name: str) -> Entity:
    """The newest version of entity ``name``; ``NotFound`` naming the known ones."""
    versions = [e for (n, _), e in project.entities.items() if n == name]
    if not versions:
        known = ", ".join(sorted({n for n, _ in project.entities})) or "none"
        raise NotFound(
            f"there is no entity {name!r} in project {project.name!r}",
            fix=f"name one of the entities: {known}",
        )
    return max(versions, key=lambda e: e.version)


def lineage(store: Store, project: Project, entity: str, key: str) -> Lineage:
    """The lineage of record ``entity``/``key``; ``NotFound`` when the entity is unknown or
    no event of the record is stored."""
    model = find_entity(project, entity)
    trail = store.record_trail(entity, key, EVENT_LIMIT)
    if not trail.events:
        raise NotFound(
            f"no event of {entity} {key!r} is stored",
            fix=f"check the value of its key field {model.key!r}; events ingested before "
            "migration 0008 are not indexed by record",
        )
    return build(project, model, key, trail)


def build(project: Project, entity: Entity, key: str, trail: RecordTrail) -> Lineage:
    """Lineage from a record's trail as the store returned it (pure)."""
    attempts: dict[int, list[Attempt]] = {}
    for a in trail.attempts:
        attempts.setdefault(a["delivery_id"], []).append(
            Attempt(
                a["number"],
                a["started_at"],
                a["latency_ms"],
                a["status_code"],
                a["outcome"],
                a["error"],
            )
        )
    actions: dict[int, list[Action]] = {}
    for a in trail.actions:
        actions.setdefault(a["delivery_id"], []).append(
            Action(a["action"], a["by"], a["reason"], a["at"], a["details"])
        )
    canonical: dict[tuple[str, str], str] = {}
    for d in trail.deliveries:
        canonical.setdefault((d["event_id"], d["integration"]), d["payload"])
    events = [
        _source_event(project, entity, row, canonical.get((row["id"], row["integration"])))
        for row in trail.events
    ]
    return Lineage(
        entity=entity.name,
        key=key,
        owner=entity.owner,
        system_of_record=entity.system_of_record,
        events=events,
        deliveries=[
            Delivery(
                id=d["id"],
                event_id=d["event_id"],
                integration=d["integration"],
                target=d["target"],
                mapping=d["mapping"],
                status=d["status"],
                idempotency_key=d["idempotency_key"],
                created_at=d["created_at"],
                delivered_at=d["delivered_at"],
                attempts=attempts.get(d["id"], []),
                actions=actions.get(d["id"], []),
            )
            for d in trail.deliveries
        ],
    )


def _source_event(
    project: Project, entity: Entity, row: dict[str, Any], payload: str | None
) -> SourceEvent:
    spec = _mapping(project, row["mapping"])
    data = orjson.loads(row["data"])
    mapped = orjson.loads(payload) if payload is not None else None
    note = None if spec is not None else f"mapping {row['mapping']} is no longer in the catalog"
    return SourceEvent(
        id=row["id"],
        system=row["system"],
        type=row["type"],
        ce_id=row["ce_id"],
        received_at=row["received_at"],
        integration=row["integration"],
        mapping=row["mapping"],
        canonical=mapped,
        fields=field_origins(spec, entity, data, mapped) if spec is not None else [],
        note=note,
    )


def _mapping(project: Project, key: str) -> MappingSpec | None:
    name, _, version = key.partition("@")
    if not version.isdigit():
        return None
    return project.mappings.get((name, int(version)))


def field_origins(
    spec: MappingSpec, entity: Entity, source: Any, canonical: dict[str, Any] | None
) -> list[FieldOrigin]:
    """The origin of each field an ingress mapping writes, for one source payload (pure).

    ``canonical`` is the payload the hub delivered; a field missing from it is
    reported with ``present`` False.
    """
    system = spec.source.system or f"{spec.source.entity}@{spec.source.version}"
    event = spec.source.event or ""
    origins = []
    for output, rule in spec.fields.items():
        top = output.split(".")[0]
        owner = entity.fields.get(top)
        present = canonical is not None and get_path(canonical, output) is not MISSING
        origins.append(
            FieldOrigin(
                field=output,
                system=system,
                event=event,
                mapping=f"{spec.name}@{spec.version}",
                rule=describe_rule(rule),
                kind=_applied(rule, source),
                source=rule.from_ if rule.from_ is not None else rule.expr,
                system_of_record=owner.system_of_record if owner else entity.system_of_record,
                present=present,
            )
        )
    return origins


def describe_rule(rule: FieldRule) -> str:
    """A rule as one line: ``from stage, values map, default``."""
    if rule.from_ is not None:
        text = f"from {rule.from_}"
    elif rule.expr is not None:
        text = f"expr {rule.expr}"
    else:
        return "const"
    if rule.values is not None:
        text += ", values map"
    if rule.each is not None:
        inner = "; ".join(f"{name} {describe_rule(r)}" for name, r in rule.each.items())
        text += f", each ({inner})"
    if rule.has_default:
        text += ", default"
    return text


def _applied(rule: FieldRule, source: Any) -> str:
    """What made this payload's value: the source value, its value map, or the default."""
    if rule.from_ is None:
        return "expr" if rule.expr is not None else "const"
    value = get_path(source, rule.from_)
    if (value is MISSING or value is None) and rule.has_default:
        return "default"
    if rule.values is not None:
        return "values"
    return "from"
