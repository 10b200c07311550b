"""``charter dlq ...`` and ``charter replay``: dead letters and replay, on the hub's store.

Like ``charter process``, these open the project and its database directly and
call the same services as the API; a running hub's workers pick the redriven or
replayed deliveries up. Who does it (``--by``, the OS user by default) and why
(``--reason``) are recorded with every change.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from charter.cli_common import DatabaseOption, JsonOption, ProjectOption, err, out
from charter.cli_common import default_by as _default_by
from charter.cli_common import fail as _fail
from charter.cli_common import hub_session as _hub
from charter.errors import CharterError

if TYPE_CHECKING:
    pass

dlq_app = typer.Typer(
    help="Dead letters: list, show, redrive (edited or by filter), discard.", no_args_is_help=True
)
ByOption = Annotated[
    str | None, typer.Option("--by", help="Who does this (recorded); default: your user name.")
]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why (recorded; required).")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
MappingOption = Annotated[
    str,
    typer.Option(
        "--mapping", help="current: the mapping version routed today; original: the delivery's."
    ),
]
IntegrationOption = Annotated[str | None, typer.Option(help="Only this integration.")]
TeamOption = Annotated[
    str | None, typer.Option(help="Only what this team owns (integration or target system).")
]
SystemOption = Annotated[str | None, typer.Option(help="Only deliveries to this system.")]
ErrorClassOption = Annotated[
    str | None,
    typer.Option(
        "--error-class",
        help="http_5xx, http_4xx, rate_limited, timeout, connection, mapping, not_found, other.",
    ),
]
OlderThanOption = Annotated[
    str | None, typer.Option("--older-than", help="Dead for longer than this: 90, 30m, 1h, 2d.")
]


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _confirm(question: str, yes: bool) -> None:
    """Ask ``question`` on a terminal; without one (CI), only ``--yes`` goes on."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise _fail(f"{question} needs confirmation and there is no terminal to ask on; pass --yes")
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _query(
    integration: str | None,
    team: str | None,
    system: str | None,
    error_class: str | None,
    older_than: str | None,
    status: str = "dead",
) -> Any:
    from charter.delivery.deadletters import DeadLetterQuery, parse_age

    try:
        age = parse_age(older_than)
    except CharterError as exc:
        raise _fail(str(exc)) from exc
    return DeadLetterQuery(
        integration=integration,
        team=team,
        system=system,
        error_class=error_class,
        older_than=age,
        status=status,
    )


def _mapping(value: str) -> Any:
    from charter.delivery.deadletters import MappingChoice

    try:
        return MappingChoice(value)
    except ValueError as exc:
        raise _fail(f"--mapping {value!r}: use current or original") from exc


def _who(by: str | None, reason: str | None) -> Any:
    from charter.delivery.deadletters import operator

    try:
        return operator(by or _default_by(), reason)
    except CharterError as exc:
        raise _fail(f"{exc.detail}; pass --reason '...'") from exc


@dlq_app.command("list")
def list_(
    integration: IntegrationOption = None,
    team: TeamOption = None,
    system: SystemOption = None,
    error_class: ErrorClassOption = None,
    older_than: OlderThanOption = None,
    status: Annotated[str, typer.Option(help="dead or discarded.")] = "dead",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Dead letters, newest first."""
    from charter.delivery.deadletters import DeadLetters

    query = _query(integration, team, system, error_class, older_than, status)
    with _hub(project, database) as hub:
        rows = DeadLetters(hub.router, hub.store).search(query, limit)
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} {status} letter(s)", title_justify="left")
    for column in ("id", "integration", "target", "owners", "class", "dead since", "last error"):
        table.add_column(column)
    for r in rows:
        owners = sorted({o for o in r["owners"].values() if o})
        table.add_row(
            str(r["id"]),
            r["integration"],
            r["target"],
            ", ".join(owners),
            r["error_class"] or "",
            _when(r["dead_at"]),
            (r["last_error"] or "")[:80],
        )
    out.print(table)


@dlq_app.command("show")
def show(
    delivery: Annotated[int, typer.Argument(help="Delivery id.")],
    as_json: JsonOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """A dead letter's payload, error, every attempt and every action taken on it."""
    from charter.delivery.deadletters import DeadLetters

    with _hub(project, database) as hub:
        found = DeadLetters(hub.router, hub.store).show(delivery)
    if as_json:
        _print_json(found)
        return
    out.print(
        f"[bold]delivery {found['id']}[/] {found['integration']} -> {found['target']}  "
        f"[bold]{found['status']}[/]  class {found['error_class'] or '-'}  "
        f"mapping {found['mapping']}  key {found['idempotency_key']}",
        highlight=False,
    )
    out.print(f"last error: {found['last_error'] or '-'}", highlight=False, markup=False)
    out.print("payload: " + orjson.dumps(found["payload"]).decode(), markup=False)
    attempts = Table(title="attempts", title_justify="left")
    for column in ("#", "started", "ms", "status", "outcome", "error"):
        attempts.add_column(column)
    for a in found["attempts_log"]:
        attempts.add_row(
            str(a["number"]),
            _when(a["started_at"]),
            f"{a['latency_ms']:.0f}",
            str(a["status_code"] or ""),
            a["outcome"],
            (a["error"] or "")[:80],
        )
    out.print(attempts)
    actions = Table(title="actions", title_justify="left")
    for column in ("at", "action", "by", "reason"):
        actions.add_column(column)
    for a in found["actions"]:
        actions.add_row(_when(a["at"]), a["action"], a["by"], a["reason"])
    out.print(actions)


@dlq_app.command("redrive")
def redrive(
    delivery: Annotated[
        int | None, typer.Argument(help="Delivery id; leave out to redrive by filter.")
    ] = None,
    reason: ReasonOption = None,
    by: ByOption = None,
    payload: Annotated[
        str | None, typer.Option(help="An edited canonical payload as JSON (one delivery).")
    ] = None,
    mapping: MappingOption = "current",
    integration: IntegrationOption = None,
    team: TeamOption = None,
    system: SystemOption = None,
    error_class: ErrorClassOption = None,
    older_than: OlderThanOption = None,
    yes: YesOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Redrive one dead letter (optionally edited), or every one a filter matches."""
    from charter.delivery.deadletters import DeadLetters

    who = _who(by, reason)
    choice = _mapping(mapping)
    filtered = any(v is not None for v in (integration, team, system, error_class, older_than))
    if delivery is not None and filtered:
        raise _fail("give a delivery id or filters, not both")
    if delivery is None and payload is not None:
        raise _fail("--payload edits one delivery; give its id")
    edited = None
    if payload is not None:
        try:
            edited = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _fail(f"--payload is not valid JSON: {exc}") from exc
    with _hub(project, database) as hub:
        letters = DeadLetters(hub.router, hub.store)
        if delivery is not None:
            found = letters.redrive(delivery, who, payload=edited, mapping=choice)
            out.print(
                f"redrove delivery {delivery} with mapping {found['mapping']} "
                f"(key {found['idempotency_key']})",
                highlight=False,
            )
            return
        if not filtered:
            raise _fail("give a delivery id, or filters (--integration, --team, ...) to redrive")
        query = _query(integration, team, system, error_class, older_than)
        matched = len(letters.search(query, 10_000))
        out.print(f"{matched} dead letter(s) match")
        if not matched:
            return
        _confirm(f"Redrive {matched} dead letter(s)?", yes)
        ids = letters.redrive_many(query, who, mapping=choice)
    out.print(f"redrove {len(ids)} dead letter(s)")


@dlq_app.command("discard")
def discard(
    delivery: Annotated[int, typer.Argument(help="Delivery id.")],
    reason: ReasonOption = None,
    by: ByOption = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Give up on a dead letter, recording why; it stays listed as discarded."""
    from charter.delivery.deadletters import DeadLetters

    who = _who(by, reason)
    with _hub(project, database) as hub:
        DeadLetters(hub.router, hub.store).discard(delivery, who)
    out.print(f"discarded delivery {delivery}: {who.reason}", highlight=False, markup=False)


def replay(
    since: Annotated[str | None, typer.Option(help="Received at or after (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (ISO 8601).")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this event type.")] = None,
    key: Annotated[str | None, typer.Option(help="Only events about this entity key.")] = None,
    system: Annotated[str | None, typer.Option(help="Only events from this source system.")] = None,
    integration: Annotated[
        str | None, typer.Option(help="Only to this integration (default: all that route).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
    reason: ReasonOption = None,
    by: ByOption = None,
    yes: YesOption = False,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Re-deliver events of the log; targets that applied them see repeats as no-ops."""
    from charter.delivery.replay import Replayer, ReplayQuery, parse_time

    who = None if dry_run else _who(by, reason)
    with _hub(project, database) as hub:
        query = ReplayQuery(
            since=parse_time("since", since),
            until=parse_time("until", until),
            type=event_type,
            key=key,
            system=system,
            integration=integration,
        )
        replayer = Replayer(hub.router, hub.store)
        counted = replayer.count(query)
        out.print(
            f"{counted.events} event(s) selected; {counted.deliveries} deliveries to queue"
            + (f"; {counted.failed} no longer map" if counted.failed else "")
        )
        if dry_run or not counted.events:
            return
        assert who is not None
        _confirm(f"Replay {counted.events} event(s)?", yes)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("replaying", total=counted.events)
            report = replayer.run(
                query, who, progress=lambda n: progress.advance(task, n) if n else None
            )
    out.print(
        f"replay {report.replay_id}: {report.events} event(s), {report.created} deliveries "
        f"created, {report.rearmed} re-armed, {report.pending} still pending, "
        f"{report.discarded} discarded left alone, {report.failed} failed to map",
        highlight=False,
    )
    for error in report.errors:
        err.print(
            f"{error['event_id']} {error['integration']}: {error['error']}",
            markup=False,
            highlight=False,
        )
