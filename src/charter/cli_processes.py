"""``charter process ...``: start, list, show and operate process instances."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from charter.cli_common import DatabaseOption, ProjectOption, out
from charter.cli_common import default_by as _default_by
from charter.cli_common import fail as _fail
from charter.cli_common import hub_session as _hub
from charter.engine.endings import wait_seconds

if TYPE_CHECKING:
    pass

process_app = typer.Typer(
    help="Durable processes: start, list, show, operate.", no_args_is_help=True
)
ByOption = Annotated[str, typer.Option("--by", help="Who does this (recorded in the timeline).")]


def _json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"--{name} is not valid JSON: {exc}; write e.g. '{{\"total\": 10}}'") from exc


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@process_app.command("start")
def start(
    name: Annotated[str, typer.Argument(help="The process to start.")],
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="The business key (one run per key).")
    ] = None,
    input_: Annotated[str | None, typer.Option("--input", help="Input as JSON.")] = None,
    from_: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help='Start one instance per line of this JSON Lines file: {"business_key": ..., '
            '"input": {...}}.',
        ),
    ] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Start NAME for a business key (or for every line of --from); existing ones are reused."""
    if (key is None) == (from_ is None):
        raise _fail("give either --key (one instance) or --from FILE (one per line)")
    if from_ is not None:
        items = _start_lines(from_)
        with _hub(project, database) as hub:
            started = hub.processes.start_many(name, items)
        created = sum(1 for _, new in started if new)
        out.print(
            f"started {created} {name} instances; {len(started) - created} were already running"
        )
        return
    assert key is not None
    data = _json_option(input_, "input") or {}
    if not isinstance(data, dict):
        raise _fail("--input must be a JSON object")
    with _hub(project, database) as hub:
        ident, created_one = hub.processes.start(name, key, data)
    out.print(f"{'started' if created_one else 'already running'} {name} {key}: {ident}")


def _start_lines(path: Path) -> list[tuple[str, Any]]:
    """(business key, input) from each non-blank line of a JSON Lines file."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}") from exc
    items: list[tuple[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise _fail(f"{path}:{number}: not valid JSON ({exc})") from exc
        key = row.get("business_key") if isinstance(row, dict) else None
        input_ = row.get("input", {}) if isinstance(row, dict) else None
        if not isinstance(key, str) or not isinstance(input_, dict):
            raise _fail(
                f'{path}:{number}: write {{"business_key": "...", "input": {{...}}}} '
                "(business_key a string, input an object)"
            )
        items.append((key, input_))
    if not items:
        raise _fail(f"{path} has no instances to start")
    return items


@process_app.command("list")
def list_(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    process: Annotated[str | None, typer.Option(help="Only this process.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this business key.")] = None,
    since: Annotated[str | None, typer.Option(help="Started at or after (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Started before (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Search instances, newest first."""
    try:
        window = [datetime.fromisoformat(v).timestamp() if v else None for v in (since, until)]
    except ValueError as exc:
        raise _fail(f"{exc}; write times as 2026-11-27T10:00:00") from exc
    with _hub(project, database) as hub:
        rows = hub.processes.search(
            process=process,
            status=status,
            business_key=key,
            since=window[0],
            until=window[1],
            limit=limit,
        )
    table = Table(title=f"{len(rows)} instance(s)", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=36)
    for column in ("process", "version", "business key", "status", "started", "updated"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["id"],
            r["process"],
            str(r["version"]),
            r["business_key"],
            r["status"],
            _when(r["created_at"]),
            _when(r["updated_at"]),
        )
    out.print(table)


@process_app.command("show")
def show(
    instance: Annotated[str, typer.Argument(help="Instance id.")],
    wait: Annotated[
        str | None,
        typer.Option(
            help="Show it once it has ended (completed, failed, compensated, cancelled or "
            "terminated), waiting at most this long, e.g. 30s."
        ),
    ] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """An instance's steps and timeline: inputs, outputs, attempts, errors, durations."""
    seconds = wait_seconds(wait)
    with _hub(project, database) as hub:
        if seconds:
            # This process runs no runner and hears no notices: it reads the instance again
            # every tenth of a second.
            found = asyncio.run(hub.processes.get_when_ended(instance, seconds, recheck=0.1))
        else:
            found = hub.processes.get(instance)
    out.print(
        f"[bold]{found['process']}[/] v{found['version']}  key {found['business_key']}  "
        f"[bold]{found['status']}[/]" + (f"  ({found['reason']})" if found["reason"] else "")
    )
    steps = Table(title="steps", title_justify="left")
    for column in ("step", "status", "attempts", "duration", "output or error"):
        steps.add_column(column)
    for step, entry in found["steps"].items():
        started, ended = entry.get("started"), entry.get("ended")
        duration = f"{(ended - started) * 1000:.0f} ms" if started and ended else ""
        result = entry.get("error") or found["context"]["steps"].get(step)
        steps.add_row(
            step,
            entry["status"],
            str(entry.get("attempt", 0)),
            duration,
            orjson.dumps(result).decode()[:100] if result is not None else "",
        )
    out.print(steps)
    timeline = Table(title="timeline", title_justify="left")
    for column in ("at", "step", "what", "detail"):
        timeline.add_column(column)
    for h in found["timeline"]:
        detail = {k: v for k, v in h.items() if k not in ("at", "step", "what")}
        timeline.add_row(
            _when(h["at"]),
            h.get("step", ""),
            h["what"],
            orjson.dumps(detail).decode()[:100] if detail else "",
        )
    out.print(timeline)
    if found["waits"]:
        out.print("waiting for: " + orjson.dumps(found["waits"]).decode())


def _operate(
    project: Path, database: str | None, instance: str, kind: str, body: dict[str, Any]
) -> None:
    with _hub(project, database) as hub:
        hub.processes.operate(instance, kind, body)
    out.print(f"{kind} queued for {instance}")


def _verb(kind: str, doc: str) -> Callable[..., None]:
    def command(
        instance: Annotated[str, typer.Argument(help="Instance id.")],
        reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
        by: ByOption = "",
        project: ProjectOption = Path("."),
        database: DatabaseOption = None,
    ) -> None:
        _operate(project, database, instance, kind, {"by": by or _default_by(), "reason": reason})

    command.__doc__ = doc
    return command


process_app.command("cancel")(
    _verb("cancel", "Cancel an instance; completed steps are compensated.")
)
process_app.command("terminate")(
    _verb("terminate", "End an instance at once, without compensation.")
)
process_app.command("retry")(_verb("retry", "Retry a failed instance from its failed step."))


@process_app.command("skip")
def skip(
    instance: Annotated[str, typer.Argument(help="Instance id.")],
    step: Annotated[str, typer.Argument(help="The step to skip.")],
    by: ByOption = "",
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Skip a failed, waiting or retrying step and go on."""
    _operate(project, database, instance, "skip", {"step": step, "by": by or _default_by()})


@process_app.command("signal")
def signal(
    instance: Annotated[str, typer.Argument(help="Instance id.")],
    name: Annotated[str, typer.Argument(help="The signal's name.")],
    data: Annotated[str | None, typer.Option(help="Data as JSON.")] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Send a signal to an instance waiting for it."""
    _operate(
        project, database, instance, "signal", {"name": name, "data": _json_option(data, "data")}
    )


@process_app.command("event")
def event(
    instance: Annotated[str, typer.Argument(help="Instance id.")],
    data: Annotated[str, typer.Option(help="The event's data as JSON.")],
    step: Annotated[str | None, typer.Option(help="The waiting step, if several wait.")] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Hand a business event to an instance waiting for one."""
    body: dict[str, Any] = {"data": _json_option(data, "data"), "event_id": "cli"}
    if step:
        body["step"] = step
    _operate(project, database, instance, "event", body)


@process_app.command("approve")
def approve(
    instance: Annotated[str, typer.Argument(help="Instance id.")],
    step: Annotated[str, typer.Argument(help="The approval step.")],
    reject: Annotated[bool, typer.Option("--reject", help="Decide no.")] = False,
    comment: Annotated[str, typer.Option(help="Recorded with the decision.")] = "",
    by: ByOption = "",
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Decide an approval step (recording who)."""
    _operate(
        project,
        database,
        instance,
        "approve",
        {"step": step, "approved": not reject, "by": by or _default_by(), "comment": comment},
    )


@process_app.command("escalations")
def escalations(
    team: Annotated[str | None, typer.Option(help="Only this team's.")] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
) -> None:
    """Escalations raised by processes, newest first."""
    with _hub(project, database) as hub:
        rows = hub.processes.store.escalations(team)
    table = Table(title=f"{len(rows)} escalation(s)", title_justify="left")
    for column in ("at", "team", "instance", "step", "message"):
        table.add_column(column)
    for r in rows:
        table.add_row(_when(r["created_at"]), r["team"], r["instance_id"], r["step"], r["message"])
    out.print(table)
