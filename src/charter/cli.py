"""The ``charter`` command line (Typer + Rich)."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from charter.catalog import PROJECT_FILE, Project, load_project
from charter.cli_dlq import dlq_app, replay
from charter.cli_governance import apply, history, impact, plan, rollback
from charter.cli_lineage import export_app, lineage
from charter.cli_ownership import drift, notices, ownership, quarantine_app
from charter.cli_processes import process_app
from charter.cli_resilience import breakers, quota
from charter.cli_sim import sim_app
from charter.errors import CatalogError, CharterError

if TYPE_CHECKING:
    from charter.runtime import Hub

app = typer.Typer(
    name="charter",
    help="Charter: an ownership-driven integration hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema: upgrade and status.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sim_app, name="sim")
app.add_typer(process_app, name="process")
app.add_typer(dlq_app, name="dlq")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(export_app, name="export")
app.command("lineage")(lineage)
app.command("ownership")(ownership)
app.command("drift")(drift)
app.command("notices")(notices)
app.command("replay")(replay)
app.command("quota")(quota)
app.command("breakers")(breakers)
for command in (plan, apply, history, rollback, impact):
    app.command(command.__name__)(command)

out = Console()
err = Console(stderr=True)

ProjectOption = Annotated[
    Path,
    typer.Option("--project", "-p", envvar="CHARTER_PROJECT", help="The project folder."),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option("--database", envvar="CHARTER_DATABASE_URL", help="Database URL."),
]
HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
LeaseOption = Annotated[
    float,
    typer.Option(
        "--lease",
        min=1.0,
        envvar="CHARTER_LEASE_SECONDS",
        help="Seconds a claimed delivery stays with this worker if it dies.",
    ),
]
PortOption = Annotated[int, typer.Option(help="Port to listen on.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(project: Path) -> Project:
    try:
        return load_project(project)
    except CatalogError as exc:
        for problem in exc.problems:
            err.print(str(problem), highlight=False, soft_wrap=True, markup=False)
        raise fail(f"{len(exc.problems)} problem(s) in {project}") from exc


EXAMPLES = ("starter", "order-to-cash")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    example: Annotated[
        str,
        typer.Option(
            help="starter: a CRM-to-ERP integration; "
            "order-to-cash: durable processes across five systems."
        ),
    ] = "starter",
) -> None:
    """Create a working example project in DIRECTORY."""
    if example not in EXAMPLES:
        raise fail(f"unknown example {example!r}; use one of {', '.join(EXAMPLES)}")
    if (directory / PROJECT_FILE).exists():
        raise fail(f"{directory / PROJECT_FILE} already exists; choose an empty folder")
    template = resources.files("charter") / "templates" / example
    with resources.as_file(template) as source:
        shutil.copytree(source, directory, dirs_exist_ok=True)
    project = _load(directory)
    out.print(
        f"Created project [bold]{project.name}[/] in {directory}: "
        f"{len(project.systems)} systems, {len(project.integrations)} integration(s), "
        f"{len(project.processes)} process(es).\n"
        f"Next: [bold]charter validate -p {directory}[/], then [bold]charter up -p {directory}[/]."
    )


@app.command()
def validate(project: ProjectOption = Path(".")) -> None:
    """Check the project folder; report every problem with file, line and fix."""
    loaded = _load(project)
    table = Table(title=f"Project {loaded.name} is valid", title_justify="left")
    for column in ("integration", "owner", "tier", "timeliness", "source", "targets", "SLO"):
        table.add_column(column)
    for i in loaded.integrations.values():
        table.add_row(
            i.name,
            i.owner,
            i.tier.value,
            i.timeliness.value,
            f"{i.source.system}/{i.source.event}",
            ", ".join(t.system for t in i.targets),
            f"{i.slo.objective}% within {i.slo.latency:g}s",
        )
    out.print(table)
    if loaded.processes:
        processes = Table(title="processes", title_justify="left")
        for column in ("process", "version", "owner", "tier", "steps", "triggers", "SLO"):
            processes.add_column(column)
        for p in loaded.processes.values():
            triggers = [
                f"{t.event.system}/{t.event.type}"
                if t.event
                else "schedule"
                if t.schedule
                else "api"
                for t in p.triggers
            ]
            processes.add_row(
                p.name,
                str(p.version),
                p.owner,
                p.tier.value,
                str(len(p.steps)),
                ", ".join(triggers),
                f"{p.slo.objective}% within {p.slo.latency:g}s",
            )
        out.print(processes)
    out.print(
        f"{len(loaded.processes)} processes, "
        f"{len(loaded.teams)} teams, {len(loaded.systems)} systems, {len(loaded.entities)} "
        f"entities, {len(loaded.mappings)} mappings, {len(loaded.integrations)} integrations"
    )


def _open_hub(project: Path, database: str | None, migrate: bool = True) -> Hub:
    from charter.runtime import Hub

    _load(project)
    try:
        return Hub.open(project, database=database, migrate=migrate)
    except CharterError as exc:
        raise fail(str(exc)) from exc


def _announce_catalog(hub: Hub) -> None:
    line = hub.catalog.describe() if hub.catalog is not None else None
    if line is not None:
        err.print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)


@app.command()
def up(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8400,
    lease: LeaseOption = 60.0,
) -> None:
    """Run the API and a delivery worker in one process (the embedded default)."""
    from charter.delivery import WorkerSettings
    from charter.engine.runner import RunnerSettings
    from charter.serve import serve

    hub = _open_hub(project, database)
    err.print(f"charter: project {hub.project.name} on http://{host}:{port} ({_where(hub.url)})")
    _announce_catalog(hub)
    try:
        serve(
            hub,
            host=host,
            port=port,
            with_worker=True,
            worker_settings=WorkerSettings(lease_seconds=lease),
            runner_settings=RunnerSettings(lease_seconds=lease),
        )
    finally:
        hub.close()


@app.command()
def server(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8400,
) -> None:
    """Run the API only; run workers with 'charter worker' (PostgreSQL)."""
    from charter.serve import serve

    hub = _open_hub(project, database)
    err.print(f"charter server: project {hub.project.name} on http://{host}:{port}")
    _announce_catalog(hub)
    try:
        serve(hub, host=host, port=port, with_worker=False)
    finally:
        hub.close()


@app.command()
def worker(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight.")] = 64,
    lease: LeaseOption = 60.0,
) -> None:
    """Run a delivery worker; start as many as you like against PostgreSQL."""
    from charter.delivery import WorkerSettings
    from charter.engine.runner import RunnerSettings
    from charter.serve import run_worker

    hub = _open_hub(project, database)
    err.print(f"charter worker: project {hub.project.name} ({_where(hub.url)})")
    _announce_catalog(hub)
    try:
        run_worker(
            hub,
            WorkerSettings(concurrency=concurrency, lease_seconds=lease),
            RunnerSettings(lease_seconds=lease),
        )
    finally:
        hub.close()


def _where(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url


@db_app.command("upgrade")
def db_upgrade(project: ProjectOption = Path("."), database: DatabaseOption = None) -> None:
    """Apply pending migrations."""
    from charter.store import current_revision

    hub = _open_hub(project, database, migrate=True)
    out.print(f"database at revision {current_revision(hub.store.engine)} ({_where(hub.url)})")
    hub.close()


@db_app.command("status")
def db_status(project: ProjectOption = Path("."), database: DatabaseOption = None) -> None:
    """Show the database revision and delivery counts."""
    from charter.runtime import database_url
    from charter.store import SqlStore, current_revision, head_revision

    loaded = _load(project)
    store = SqlStore.from_url(database_url(loaded, database))
    try:
        current, head = current_revision(store.engine), head_revision()
        if current != head:
            raise fail(
                f"the database is at revision {current}, not {head}; run 'charter db upgrade'"
            )
        counts = store.delivery_counts()
    finally:
        store.close()
    out.print(f"revision {current} (head {head})")
    out.print(
        f"{counts.received} events, {counts.delivered} delivered, {counts.pending} pending, "
        f"{counts.dead} dead-lettered"
    )


@app.command()
def deliveries(
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    status: Annotated[str | None, typer.Option(help="pending, delivered or dead")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """List recent deliveries, newest first."""
    from charter.store import DeliveryStatus

    try:
        wanted = DeliveryStatus(status) if status else None
    except ValueError as exc:
        raise fail(f"unknown status {status!r}; use pending, delivered or dead") from exc
    hub = _open_hub(project, database)
    rows = hub.store.list_deliveries(wanted, None, limit)
    table = Table(title=f"{len(rows)} deliveries", title_justify="left")
    for column in (
        "id",
        "integration",
        "target",
        "status",
        "attempts",
        "last status",
        "last error",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["integration"],
            # A fallback took it while the target's breaker was open.
            f"{r['target']} -> {r['fallback']}" if r.get("fallback") else r["target"],
            r["status"],
            str(r["attempts"]),
            str(r["last_status"] or ""),
            (r["last_error"] or "")[:80],
        )
    out.print(table)
    hub.close()


@app.command()
def demo(
    example: Annotated[
        str,
        typer.Option(
            help="order-to-cash: durable processes across five systems; "
            "integration: CRM deals delivered to the ERP by an integration."
        ),
    ] = "order-to-cash",
    events: Annotated[
        int | None, typer.Option(min=10, max=100_000, help="CRM deals to push.")
    ] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Keep everything running after the run.")
    ] = False,
    outage: Annotated[float, typer.Option(min=0, help="Seconds the ERP is down.")] = 3.0,
) -> None:
    """Run a demo on local ports with simulated systems, an ERP outage and checked counts."""
    if example == "order-to-cash":
        from charter.demo_o2c import run_order_to_cash

        code = run_order_to_cash(
            out, deals=events or 400, outage_seconds=outage, keep_serving=serve_after
        )
    elif example == "integration":
        from charter.demo import run_demo

        code = run_demo(out, events=events or 3000, outage_seconds=outage, keep_serving=serve_after)
    else:
        raise fail(f"unknown example {example!r}; use order-to-cash or integration")
    raise typer.Exit(code)


@sim_app.command("run")
def sim_run(
    name: Annotated[
        str, typer.Argument(help="crm, erp, payments, warehouse, portal, analytics or noop")
    ],
    host: HostOption = "127.0.0.1",
    port: PortOption = 8102,
    hub: Annotated[
        str | None, typer.Option(help="Hub URL the CRM and the warehouse push to.")
    ] = None,
    seed: int = 7,
) -> None:
    """Serve one simulated system."""
    from charter.sim import SIM_NAMES, run_sim

    if name not in SIM_NAMES:
        raise fail(f"unknown simulated system {name!r}; use one of {', '.join(SIM_NAMES)}")
    run_sim(name, host=host, port=port, hub_url=hub, seed=seed)


def main() -> None:
    """Entry point of the ``charter`` script."""
    try:
        app()
    except CharterError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except SQLAlchemyError as exc:
        # Anything the store did not translate still gets one line, not a traceback.
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        err.print(f"[bold red]error:[/] database error: {first}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
