"""``charter quota [SYSTEM]`` and ``charter breakers``: quota budgets and circuit breakers.

Like ``charter dlq``, these open the project and its database directly and call
the same service functions as the API (:mod:`charter.delivery.overview`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from charter.cli_common import DatabaseOption, JsonOption, ProjectOption, hub_session, out


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _read(project: Path, database: str | None, read: Any) -> Any:
    from charter.store.resilience import ResilienceStore

    with hub_session(project, database) as hub:
        return read(hub.project, ResilienceStore(hub.store.engine))


def quota(
    system: Annotated[str | None, typer.Argument(help="Only this system.")] = None,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Quota budgets per system and their use per integration or process."""
    from charter.delivery.overview import quota_report

    rows = _read(project, database, lambda p, s: quota_report(p, s, system))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print("no system declares a quota")
        return
    budgets = Table(title="Quota budgets")
    for column in ("system", "rate/s", "burst", "tokens", "today", "concurrency", "paused until"):
        budgets.add_column(column)
    use = Table(title="Use per flow")
    for column in ("system", "flow", "tier", "granted", "avg wait ms", "deferred", "429s"):
        use.add_column(column)
    for row in rows:
        daily = f"/{row['daily']}" if row["daily"] else ""
        budgets.add_row(
            row["system"],
            f"{row['rate_per_s']:g}",
            f"{row['burst']:g}",
            f"{row['tokens']:g}",
            f"{row['used_today']}{daily}",
            str(row["concurrency"] or "-"),
            _when(row["paused_until"]),
        )
        for flow in row["flows"]:
            use.add_row(
                row["system"],
                flow["flow"],
                flow["tier"],
                str(flow["granted"]),
                "" if flow["avg_wait_ms"] is None else f"{flow['avg_wait_ms']:.1f}",
                str(flow["deferred"]),
                str(flow["rate_limited"]),
            )
    out.print(budgets)
    if use.row_count:
        out.print(use)


def breakers(
    transitions: Annotated[
        str | None, typer.Option("--transitions", help="Show this system's transitions.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Transitions to show.")] = 20,
    project: ProjectOption = Path("."),
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Circuit breakers: state per system (or endpoint); with --transitions, their history."""
    from charter.delivery.overview import breaker_report, breaker_transitions

    if transitions is not None:
        system = transitions
        rows = _read(project, database, lambda p, s: breaker_transitions(p, s, system, limit))
        if as_json:
            _print_json(rows)
            return
        table = Table(title=f"Breaker transitions of {system}, newest first")
        for column in ("at", "endpoint", "from", "to", "reason", "worker"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                _when(row["at"]),
                row["endpoint"] or "",
                row["from_state"],
                row["to_state"],
                row["reason"],
                row["worker"],
            )
        out.print(table)
        return
    rows = _read(project, database, breaker_report)
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Circuit breakers")
    for column in ("system", "endpoint", "state", "since", "failures", "probe at", "last error"):
        table.add_column(column)
    for row in rows:
        style = {"open": "red", "half_open": "yellow"}.get(row["state"], "green")
        table.add_row(
            row["system"],
            row["endpoint"] or "",
            f"[{style}]{row['state']}[/]",
            _when(row["since"]),
            str(row["consecutive_failures"]),
            _when(row["probe_at"]),
            (row["last_error"] or "")[:80],
        )
    out.print(table)
