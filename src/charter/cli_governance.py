"""``charter plan | apply | history | rollback | impact``: changes to the catalog, governed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from charter.cli_common import DatabaseOption, ProjectOption, default_by, out
from charter.cli_common import fail as _fail
from charter.errors import CharterError

if TYPE_CHECKING:
    from charter.governance.approvals import Signoff
    from charter.governance.plan import Plan
    from charter.governance.service import Governance
    from charter.runtime import Hub

ByOption = Annotated[str | None, typer.Option("--by", help="Who does this (kept in history).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in history).")]
ApprovedByOption = Annotated[
    list[str] | None,
    typer.Option(
        "--approved-by",
        metavar="TEAM",
        help="A team that approved the change (repeat for each); kept in history. "
        "Charter checks the team exists, not who you are.",
    ),
]
SkipApprovalsOption = Annotated[
    str | None,
    typer.Option(
        "--skip-approvals",
        metavar="REASON",
        help="Go ahead without the approvals still missing, for this reason (kept in history).",
    ),
]


def _by(value: str | None) -> str:
    return value or default_by()


def _signoff(approved_by: list[str] | None, skip_reason: str | None) -> Signoff:
    from charter.governance.approvals import Signoff

    return Signoff.of(approved_by or (), skip_reason)


@contextmanager
def _governance(project: Path, database: str | None) -> Iterator[tuple[Hub, Governance]]:
    from charter.cli import _open_hub
    from charter.governance.service import Governance
    from charter.store.catalog import CatalogStore

    hub = _open_hub(project, database)
    try:
        yield hub, Governance(CatalogStore(hub.store))
    except CharterError as exc:
        raise _fail(str(exc)) from exc
    finally:
        hub.close()


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def show_plan(plan: Plan) -> None:
    """The plan as tables: changes, schema verdicts, blast radius, approvals."""
    base = "nothing applied yet" if plan.base_version is None else f"version {plan.base_version}"
    if not plan.changes:
        out.print(f"No changes: the project folder is what is applied ({base}).")
        return
    changes = Table(title=f"Changes against {base}", title_justify="left")
    for column in ("object", "action", "owner", "field", "before", "after"):
        changes.add_column(column)
    for change in plan.changes:
        if not change.fields:
            changes.add_row(change.object, change.action, change.owner or "-", "", "", "")
        for n, f in enumerate(change.fields):
            lead = (change.object, change.action, change.owner or "-")
            head = lead if n == 0 else ("", "", "")
            changes.add_row(*head, f.path, _short(f.before), _short(f.after))
    out.print(changes)
    if plan.schemas:
        schemas = Table(title="Schema compatibility", title_justify="left")
        for column in ("subject", "versions", "mode", "verdict", "rule", "path", "fix"):
            schemas.add_column(column)
        for s in plan.schemas:
            verdict = (
                "[green]compatible[/]"
                if s.compatible
                else "[red]breaking, same version: refused[/]"
                if s.refused
                else "[yellow]breaking, new major version[/]"
            )
            rows = s.problems or [{}]
            versions = f"{s.before} → {s.after}"
            if len(s.against) > 1:
                versions += " (against " + ", ".join(f"v{v}" for v in s.against) + ")"
            for n, p in enumerate(rows):
                first = (s.subject, versions, s.mode, verdict)
                cells = first if n == 0 else ("", "", "", "")
                schemas.add_row(*cells, p.get("rule", ""), p.get("path", ""), p.get("fix", ""))
        out.print(schemas)
    if plan.impact:
        radius = Table(title="Blast radius", title_justify="left")
        for column in ("hops", "kind", "name", "owner", "via"):
            radius.add_column(column)
        for a in plan.impact:
            radius.add_row(str(a.hops), a.kind, a.name, a.owner or "-", a.via or "")
        out.print(radius)
    if plan.approvals:
        approvals = Table(title="Approvals needed", title_justify="left")
        approvals.add_column("team")
        approvals.add_column("because")
        for approval in plan.approvals:
            approvals.add_row(approval.team, approval.reason)
        out.print(approvals)
    created = sum(1 for c in plan.changes if c.action == "create")
    updated = sum(1 for c in plan.changes if c.action == "update")
    deleted = sum(1 for c in plan.changes if c.action == "delete")
    verdict = "[red]breaking[/]" if plan.breaking else "compatible"
    out.print(f"Plan: {created} to create, {updated} to update, {deleted} to delete; {verdict}.")


def plan(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the plan here, for 'charter apply'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Show what applying the project folder would change. Exit 0: no changes, 2: changes,
    3: breaking changes, 1: error."""
    with _governance(project, database) as (_, governance):
        made = governance.plan(project)
    body = made.to_json()
    if out_file is not None:
        try:
            out_file.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise _fail(f"cannot write {out_file}: {exc.strerror}") from exc
    if as_json:
        print(json.dumps({k: v for k, v in body.items() if k != "target"}, indent=2))
    else:
        show_plan(made)
        if out_file is not None and made.changes:
            out.print(f"Saved to {out_file}; apply it with [bold]charter apply {out_file}[/].")
    raise typer.Exit(made.exit_code)


def apply(
    plan_file: Annotated[Path, typer.Argument(help="A plan written by 'charter plan --out'.")],
    reason: ReasonOption,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    by: ByOption = None,
    approved_by: ApprovedByOption = None,
    skip_approvals: SkipApprovalsOption = None,
) -> None:
    """Apply exactly the changes of PLAN_FILE; refused when the applied state changed since,
    or when a team the plan asks to approve is not named with --approved-by."""
    from charter.governance.plan import Plan

    try:
        data = orjson.loads(plan_file.read_bytes())
    except OSError as exc:
        raise _fail(f"cannot read {plan_file}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise _fail(f"{plan_file} is not JSON ({exc}); make it with 'charter plan --out'") from exc
    with _governance(project, database) as (_, governance):
        try:
            made = Plan.from_json(data)
        except CharterError as exc:
            raise _fail(f"{plan_file}: {exc}") from exc
        version, applied = governance.apply(
            made, _by(by), reason, _signoff(approved_by, skip_approvals)
        )
    show_plan(applied)
    out.print(f"Applied as catalog version {version}. Restart Charter's processes to run it.")
    _skipped(applied, approved_by)


def history(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Applied catalog versions, newest first: who, when, why, what changed, who approved."""
    from charter.governance.approvals import describe

    with _governance(project, database) as (_, governance):
        versions = governance.history(limit)
    if as_json:
        print(json.dumps({"versions": [v.to_json() for v in versions]}, indent=2))
        return
    if not versions:
        out.print("Nothing applied yet: Charter runs the project folder as it is.")
        return
    table = Table(title="Applied catalog versions", title_justify="left")
    for column in ("version", "applied", "by", "action", "changes", "reason", "approvals"):
        table.add_column(column)
    table.add_column("digest")
    for v in versions:
        s = v.summary
        counts = f"+{s.get('create', 0)} ~{s.get('update', 0)} -{s.get('delete', 0)}"
        if s.get("breaking"):
            counts += " breaking"
        table.add_row(
            str(v.version),
            _when(v.applied_at),
            v.applied_by,
            v.action,
            counts,
            v.reason,
            describe(v.approvals),
            v.digest.removeprefix("sha256:")[:12],
        )
    out.print(table)


def rollback(
    reason: ReasonOption,
    version: Annotated[
        int | None, typer.Argument(help="The version to go back to (default: the previous).")
    ] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    by: ByOption = None,
    approved_by: ApprovedByOption = None,
    skip_approvals: SkipApprovalsOption = None,
) -> None:
    """Make the applied catalog what VERSION was, as a new version; the approvals its plan
    asks for are required as for 'charter apply'."""
    with _governance(project, database) as (_, governance):
        new, made = governance.rollback(
            version, _by(by), reason, _signoff(approved_by, skip_approvals)
        )
    show_plan(made)
    out.print(f"Rolled back as catalog version {new}. Restart Charter's processes to run it.")
    _skipped(made, approved_by)


def _skipped(made: Plan, approved_by: list[str] | None) -> None:
    missing = [t for t in made.approving_teams if t not in (approved_by or [])]
    if missing:
        out.print(f"[yellow]Applied without the approval of {', '.join(missing)}[/] (recorded).")


def impact(
    node: Annotated[
        str,
        typer.Argument(
            help="What would change: system:NAME, event:SYSTEM/TYPE, entity:NAME, "
            "field:ENTITY.FIELD, mapping:NAME@VERSION, integration:NAME or process:NAME."
        ),
    ],
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Everything a change of NODE can reach, with hop counts and owning teams."""
    from charter.governance import impact as graphs

    with _governance(project, database) as (hub, _):
        graph = graphs.build(hub.project)
    if node not in graph:
        known = graph.suggestions(node)
        hint = f"; known: {', '.join(known)}" if known else ""
        raise _fail(f"{node!r} is not in the catalog{hint}")
    affected = graph.impact([node])
    teams = graphs.teams(affected)
    if as_json:
        body = {"node": node, "affected": [a.to_json() for a in affected], "teams": teams}
        print(json.dumps(body, indent=2))
        return
    table = Table(title=f"What a change of {node} reaches", title_justify="left")
    for column in ("hops", "kind", "name", "owner", "via"):
        table.add_column(column)
    for a in affected:
        table.add_row(str(a.hops), a.kind, a.name, a.owner or "-", a.via or "")
    out.print(table)
    out.print("Teams: " + ", ".join(f"{t} ({h} hops)" for t, h in teams.items()))
