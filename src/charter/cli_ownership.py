"""``charter quarantine ...``, ``charter ownership``, ``charter drift`` and ``charter notices``.

Like ``charter dlq``, these open the project and its database directly and call
the same services as the API; a running hub's workers pick released deliveries
up. Who reviews a held write (``--by``, the OS user by default) and why
(``--reason``, required) are recorded with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from charter.cli_common import DatabaseOption, JsonOption, ProjectOption, out
from charter.cli_common import default_by as _default_by
from charter.cli_common import fail as _fail
from charter.cli_common import hub_session as _hub
from charter.cli_dlq import ByOption, ReasonOption, _print_json, _when

quarantine_app = typer.Typer(
    help="Writes of fields by systems that do not own them, held for the owner: list, accept, "
    "reject.",
    no_args_is_help=True,
)
TeamOption = Annotated[str | None, typer.Option(help="Only what this team owns.")]


def _show_value(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


@quarantine_app.command("list")
def list_(
    team: TeamOption = None,
    status: Annotated[str, typer.Option(help="open, accepted, rejected or all.")] = "open",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Held writes, newest first."""
    from charter.governance.ownership import QuarantineReview

    with _hub(project, database) as hub:
        rows = QuarantineReview(hub.project, hub.store).list(team, status, limit)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} held write(s)")
    for column in ("id", "status", "system", "field", "value", "owner", "team", "event"):
        table.add_column(column)
    table.add_column("held at")
    table.add_column("decided")
    for r in rows:
        decided = f"{r['decided_by']}: {r['reason']}" if r["decided_by"] else ""
        table.add_row(
            str(r["id"]),
            r["status"],
            r["system"],
            f"{r['entity']}.{r['field']}",
            _show_value(r["value"]),
            r["system_of_record"],
            r["team"],
            r["event_id"],
            _when(r["created_at"]),
            decided,
        )
    out.print(table)


def _decide(
    hold_id: int, accept: bool, by: str | None, reason: str | None, project: Path, database: Any
) -> None:
    from charter.governance.ownership import QuarantineReview
    from charter.store import Operator

    if reason is None or not reason.strip():
        raise _fail("'reason' is required: every review records who and why; pass --reason '...'")
    who = Operator((by or _default_by()).strip(), reason.strip())
    with _hub(project, database) as hub:
        row = QuarantineReview(hub.project, hub.store).decide(hold_id, accept, who)
    what = "accepted" if accept else "rejected"
    released = ", ".join(str(i) for i in row["released"]) or "none (other writes still held)"
    out.print(
        f"held write {hold_id} ({row['system']} -> {row['entity']}.{row['field']} = "
        f"{_show_value(row['value'])}) {what} by {who.by}; deliveries released: {released}",
        highlight=False,
        soft_wrap=True,
    )


@quarantine_app.command()
def accept(
    hold_id: Annotated[int, typer.Argument(help="The held write's id.")],
    reason: ReasonOption = None,
    by: ByOption = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Accept a held write: its deliveries go out as they are."""
    _decide(hold_id, True, by, reason, project, database)


@quarantine_app.command()
def reject(
    hold_id: Annotated[int, typer.Argument(help="The held write's id.")],
    reason: ReasonOption = None,
    by: ByOption = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Reject a held write: its deliveries go out without the field."""
    _decide(hold_id, False, by, reason, project, database)


def ownership(
    as_json: JsonOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Writes of governed fields by systems that do not own them, by policy and outcome."""
    from charter.governance.ownership import write_report

    with _hub(project, database) as hub:
        rows = write_report(hub.project, hub.store)
    if as_json:
        _print_json(rows)
        return
    table = Table(title="writes by systems that do not own the field")
    for column in ("system", "field", "owner", "team", "policy", "outcome"):
        table.add_column(column)
    table.add_column("count", justify="right")
    table.add_column("last")
    for r in rows:
        table.add_row(
            r["system"],
            f"{r['entity']}.{r['field']}",
            r["system_of_record"] or "",
            r["team"] or "",
            r["policy"],
            r["outcome"],
            str(r["count"]),
            _when(r["last_at"]),
        )
    out.print(table)


def drift(
    system: Annotated[str | None, typer.Option(help="Only this source system.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Last seen since: an ISO 8601 time or an age (1h).")
    ] = None,
    as_json: JsonOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Payload drift per system and field: unknown fields, unmapped values, stopped fields."""
    from charter.errors import CharterError
    from charter.governance.drift import drift_report, parse_since

    try:
        after = parse_since(since)
    except CharterError as exc:
        raise _fail(str(exc)) from exc
    with _hub(project, database) as hub:
        rows = drift_report(hub.project, hub.store, system=system, since=after)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} kind(s) of drift")
    for column in ("system", "event type", "kind", "field", "value"):
        table.add_column(column)
    table.add_column("count", justify="right")
    for column in ("first seen", "last seen", "team"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["system"],
            r["event_type"],
            r["kind"],
            r["field"],
            r["value"],
            str(r["count"]),
            _when(r["first_seen"]),
            _when(r["last_seen"]),
            r["team"] or "",
        )
    out.print(table)


def notices(
    team: TeamOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """What the hub told teams (drift detected), newest first, with the id of the CloudEvent
    that logged each notice in the hub's event log (GET /v1/events/ID shows it)."""
    with _hub(project, database) as hub:
        rows = hub.store.list_notices(team, limit)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} notice(s)")
    for column in ("id", "at", "team", "kind", "subject", "event"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["id"]),
            _when(r["created_at"]),
            r["team"],
            r["kind"],
            r["subject"],
            r["event_id"] or "-",
        )
    out.print(table)
