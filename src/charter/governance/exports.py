"""The catalog in other tools' shapes: OpenLineage job descriptions and ODCS data contracts.

Both are built from the catalog alone (pure): ``openlineage(project)`` describes
each integration as a job reading its source event and writing its canonical
entity and the target payloads, with column lineage from the mapping specs;
``odcs(project, entity)`` is an Open Data Contract Standard v3 document for one
entity. Neither reads the store: they say what the flows do, not what they did.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from charter import __version__
from charter.catalog import Entity, Integration, Project
from charter.governance.lineage import describe_rule, find_entity
from charter.mapping import FieldRule, MappingSpec

PRODUCER = f"https://github.com/charter-hub/charter/tree/v{__version__}"
OPENLINEAGE_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/JobEvent"
SCHEMA_FACET = "https://openlineage.io/spec/facets/1-1-1/SchemaDatasetFacet.json"
COLUMN_FACET = "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json"
ODCS_VERSION = "v3.0.2"
# JSON Schema types as ODCS logical types.
LOGICAL_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


def namespace(project: Project) -> str:
    """The OpenLineage namespace of a project's jobs and datasets."""
    return f"charter://{project.name}"


def openlineage(project: Project, event_time: str | None = None) -> list[dict[str, Any]]:
    """One OpenLineage ``JobEvent`` (static lineage: a job with its datasets, no run) per
    integration, by name; ``event_time`` (ISO 8601) defaults to now.

    Datasets: ``<system>/<event type>`` (the source event), ``entity/<name>@<version>``
    (the canonical record) and ``<system>/<mapping>`` (a target's payload). Column
    lineage maps each output field to the input fields its rule reads.
    """
    when = event_time or datetime.now(UTC).isoformat(timespec="seconds")
    return [_job(project, i, when) for _, i in sorted(project.integrations.items())]


def _job(project: Project, integration: Integration, when: str) -> dict[str, Any]:
    ns = namespace(project)
    i = integration
    targets = ", ".join(t.system for t in i.targets)
    source = f"{i.source.system}/{i.source.event}"
    entity = f"entity/{i.entity}"
    ingress = project.mappings[(i.mapping.name, i.mapping.version)]
    inputs = [
        _dataset(ns, source, _properties(project.event_schema(i.source.system, i.source.event)))
    ]
    entity_fields = _properties(project.entity_schema(i.entity.name, i.entity.version))
    outputs = [_dataset(ns, entity, entity_fields, _column_lineage(ns, source, ingress))]
    for t in i.targets:
        spec = project.mappings[(t.mapping.name, t.mapping.version)]
        outputs.append(
            _dataset(
                ns,
                f"{t.system}/{t.mapping.name}",
                [(name, "") for name in spec.fields],
                _column_lineage(ns, entity, spec),
            )
        )
    return {
        "eventTime": when,
        "producer": PRODUCER,
        "schemaURL": OPENLINEAGE_SCHEMA,
        "job": {
            "namespace": ns,
            "name": i.name,
            "facets": {
                "ownership": {
                    "_producer": PRODUCER,
                    "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/OwnershipJobFacet.json",
                    "owners": [{"name": f"team:{i.owner}", "type": "owner"}],
                },
                "documentation": {
                    "_producer": PRODUCER,
                    "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DocumentationJobFacet.json",
                    "description": i.description or f"{source} to {targets}",
                },
            },
        },
        "inputs": inputs,
        "outputs": outputs,
    }


def _dataset(
    ns: str,
    name: str,
    fields: list[tuple[str, str]],
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    facets: dict[str, Any] = {
        "schema": {
            "_producer": PRODUCER,
            "_schemaURL": SCHEMA_FACET,
            "fields": [{"name": n, "type": t} if t else {"name": n} for n, t in fields],
        }
    }
    if lineage is not None:
        facets["columnLineage"] = {
            "_producer": PRODUCER,
            "_schemaURL": COLUMN_FACET,
            "fields": lineage,
        }
    return {"namespace": ns, "name": name, "facets": facets}


def _properties(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Top-level properties of a JSON Schema with their types."""
    return [(name, _type(sub)) for name, sub in (schema.get("properties") or {}).items()]


def _type(schema: Any) -> str:
    kind = schema.get("type", "") if isinstance(schema, dict) else ""
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "")
    return str(kind)


def _column_lineage(ns: str, source: str, spec: MappingSpec) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for output, rule in spec.fields.items():
        inputs = _input_fields(rule)
        transformation = {
            "type": "DIRECT",
            "subtype": "IDENTITY" if _identity(rule) else "TRANSFORMATION",
            "description": describe_rule(rule),
        }
        fields[output] = {
            "inputFields": [
                {"namespace": ns, "name": source, "field": f, "transformations": [transformation]}
                for f in inputs
            ],
            "transformationDescription": describe_rule(rule),
            "transformationType": "IDENTITY" if _identity(rule) else "TRANSFORMATION",
        }
    return fields


def _identity(rule: FieldRule) -> bool:
    return (
        rule.from_ is not None
        and rule.values is None
        and rule.each is None
        and not rule.has_default
    )


def _input_fields(rule: FieldRule) -> list[str]:
    """The source fields a rule reads: its path, its ``each`` rules' paths below it."""
    if rule.from_ is None:
        return []  # expressions and constants name no single field
    if rule.each is None:
        return [rule.from_]
    return [f"{rule.from_}[*].{inner}" for r in rule.each.values() for inner in _input_fields(r)]


def odcs(project: Project, entity: str) -> dict[str, Any]:
    """An Open Data Contract Standard v3 document for the newest version of ``entity``.

    The schema's properties come from the entity's JSON Schema (each with its
    system of record); the team is the entity's owner; SLA properties are the
    latency objectives of the integrations that write the entity.
    """
    model = find_entity(project, entity)
    schema = project.entity_schema(model.name, model.version)
    writers = [i for _, i in sorted(project.integrations.items()) if i.entity.name == model.name]
    return {
        "apiVersion": ODCS_VERSION,
        "kind": "DataContract",
        "id": f"{project.name}:{model.name}",
        "name": model.name,
        "version": f"{model.version}.0.0",
        "status": "active",
        "domain": model.domain,
        "tenant": project.name,
        "description": {
            "purpose": model.description or f"The canonical {model.name} of {project.name}.",
            "usage": f"Written by {', '.join(i.name for i in writers) or 'no integration'}; "
            f"system of record {model.system_of_record}.",
        },
        "schema": [
            {
                "name": model.name,
                "physicalName": f"entity/{model.name}@{model.version}",
                "logicalType": "object",
                "description": model.description,
                "properties": _contract_properties(model, schema),
            }
        ],
        "team": [{"username": model.owner, "role": "owner"}]
        + [
            {"username": owner, "role": "integration owner"}
            for owner in sorted({i.owner for i in writers} - {model.owner})
        ],
        "slaDefaultElement": f"{model.name}.{model.key}",
        "slaProperties": [p for i in writers for p in _sla(i)],
        "customProperties": [
            {"property": "owner", "value": model.owner},
            {"property": "systemOfRecord", "value": model.system_of_record},
            {"property": "key", "value": model.key},
        ],
    }


def _contract_properties(model: Entity, schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required") or [])
    found = []
    for name, sub in (schema.get("properties") or {}).items():
        kind = _type(sub)
        owner = model.fields.get(name)
        prop: dict[str, Any] = {
            "name": name,
            "logicalType": LOGICAL_TYPES.get(kind, "string"),
            "physicalType": kind or "any",
            "required": name in required,
            "primaryKey": name == model.key,
            "customProperties": [
                {
                    "property": "systemOfRecord",
                    "value": owner.system_of_record if owner else model.system_of_record,
                }
            ],
        }
        if isinstance(sub, dict):
            if "enum" in sub:
                prop["logicalTypeOptions"] = {"enum": sub["enum"]}
            if sub.get("description"):
                prop["description"] = sub["description"]
            if kind == "object":
                prop["properties"] = _contract_properties(model, sub)
            if kind == "array" and isinstance(sub.get("items"), dict):
                item = sub["items"]
                prop["items"] = {
                    "logicalType": LOGICAL_TYPES.get(_type(item), "string"),
                    **(
                        {"properties": _contract_properties(model, item)}
                        if _type(item) == "object"
                        else {}
                    ),
                }
        found.append(prop)
    return found


def _sla(integration: Integration) -> list[dict[str, Any]]:
    slo = integration.slo
    return [
        {
            "property": "latency",
            "value": slo.latency,
            "unit": "s",
            "driver": integration.tier.value,
            "description": f"{integration.name}: {slo.objective:g}% of events delivered "
            f"within {slo.latency:g}s over {slo.window / 86400:g}d",
        },
        {
            "property": "objective",
            "value": slo.objective,
            "unit": "percent",
            "driver": integration.tier.value,
            "description": f"{integration.name}: share of events delivered in time",
        },
    ]
