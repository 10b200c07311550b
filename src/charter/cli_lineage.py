"""``charter lineage`` and ``charter export``: where a record came from and went, and the
catalog as OpenLineage jobs and ODCS data contracts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
import yaml
from rich.table import Table

from charter.cli_common import (
    DatabaseOption,
    JsonOption,
    ProjectOption,
    err,
    fail,
    hub_session,
    out,
)

if TYPE_CHECKING:
    from charter.governance.lineage import Lineage

export_app = typer.Typer(
    help="The catalog in other tools' shapes: OpenLineage, ODCS.", no_args_is_help=True
)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


OutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")
]


def lineage(
    record: Annotated[
        str, typer.Argument(help="The canonical record as ENTITY/KEY, e.g. order/D-1042.")
    ],
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """A record's source events, mapping versions, field origins and deliveries."""
    from charter.governance.lineage import lineage as trace

    entity, slash, key = record.partition("/")
    if not slash or not entity or not key:
        raise fail(f"{record!r} is not ENTITY/KEY; write the record as e.g. order/D-1042")
    with hub_session(project, database) as hub:
        found = trace(hub.store, hub.project, entity, key)
    if as_json:
        print(json.dumps(found.to_json(), indent=2))
        return
    show_lineage(found)


def show_lineage(found: Lineage) -> None:
    """The lineage as tables: events, field origins, deliveries, attempts, actions."""
    from charter.mapping import MISSING, get_path

    out.print(
        f"[bold]{found.entity} {found.key}[/]: owner {found.owner}, "
        f"system of record {found.system_of_record}",
        highlight=False,
    )
    events = Table(title="Source events", title_justify="left")
    for column in ("event", "system", "type", "CloudEvents id", "received", "integration"):
        events.add_column(column)
    events.add_column("mapping")
    for e in found.events:
        events.add_row(
            e.id, e.system, e.type, e.ce_id, _when(e.received_at), e.integration, e.mapping
        )
    out.print(events)
    for e in found.events:
        fields = Table(
            title=f"Field origins of event {e.id[:8]} ({e.integration}, {e.mapping})",
            title_justify="left",
        )
        for column in ("field", "value", "from system", "rule", "made by", "system of record"):
            fields.add_column(column)
        for f in e.fields:
            value = get_path(e.canonical, f.field) if e.canonical is not None else MISSING
            shown = _short(value, 40) if value is not MISSING else "(not in record)"
            fields.add_row(
                f.field, shown, f"{f.system} {f.event}", f.rule, f.kind, f.system_of_record
            )
        out.print(fields if e.fields else f"[yellow]{e.note}[/]")
    deliveries = Table(title="Deliveries", title_justify="left")
    for column in ("delivery", "integration", "target", "mapping", "status", "attempts"):
        deliveries.add_column(column)
    deliveries.add_column("delivered")
    for d in found.deliveries:
        deliveries.add_row(
            str(d.id),
            d.integration,
            d.target,
            d.mapping,
            d.status,
            str(len(d.attempts)),
            _when(d.delivered_at) if d.delivered_at is not None else "-",
        )
    out.print(deliveries)
    attempts = Table(title="Attempts", title_justify="left")
    for column in ("delivery", "attempt", "started", "status code", "outcome", "ms", "error"):
        attempts.add_column(column)
    for d in found.deliveries:
        for a in d.attempts:
            attempts.add_row(
                str(d.id),
                str(a.number),
                _when(a.started_at),
                str(a.status_code) if a.status_code is not None else "-",
                a.outcome,
                f"{a.latency_ms:.1f}",
                _short(a.error, 50),
            )
    out.print(attempts if attempts.rows else "No attempts yet.")
    actions = [(d.id, action) for d in found.deliveries for action in d.actions]
    if actions:
        table = Table(title="Operator actions", title_justify="left")
        for column in ("delivery", "action", "by", "reason", "at"):
            table.add_column(column)
        for ident, action in actions:
            table.add_row(str(ident), action.action, action.by, action.reason, _when(action.at))
        out.print(table)


def _write(text: str, path: Path | None, what: str) -> None:
    if path is None:
        print(text)
        return
    path.write_text(text + "\n")
    err.print(f"Wrote {what} to {path}.", highlight=False)


@export_app.command("openlineage")
def export_openlineage(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    out_file: OutOption = None,
) -> None:
    """Every integration as an OpenLineage job: source event, canonical entity and target
    datasets, with column lineage from the mappings (JSON)."""
    from charter.governance.exports import openlineage

    with hub_session(project, database) as hub:
        jobs = openlineage(hub.project)
    _write(json.dumps(jobs, indent=2), out_file, f"{len(jobs)} OpenLineage jobs")


@export_app.command("odcs")
def export_odcs(
    entity: Annotated[str, typer.Argument(help="The entity, e.g. order.")],
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    out_file: OutOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
) -> None:
    """An Open Data Contract Standard (v3) document for ENTITY: owner, schema, SLA."""
    from charter.governance.exports import odcs

    with hub_session(project, database) as hub:
        contract: dict[str, Any] = odcs(hub.project, entity)
    as_json = as_json or (out_file is not None and out_file.suffix == ".json")
    text = (
        json.dumps(contract, indent=2)
        if as_json
        else yaml.safe_dump(contract, sort_keys=False, allow_unicode=True).rstrip()
    )
    _write(text, out_file, f"the data contract of {entity}")
