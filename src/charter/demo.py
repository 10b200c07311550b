"""The order-to-cash demo: CRM deals through the hub to the ERP, surviving an ERP outage.

Everything runs as real processes on local ports: the simulated CRM pushes
CloudEvents webhooks to ``charter up`` (embedded SQLite), which delivers to the
simulated ERP. Midway the ERP goes down; retries drain when it returns. The
summary is checked against the ERP's own count.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from charter.processes import HubProcess
from charter.sim import SimProcess, spawn

DEMO_TIMEOUT_S = 110.0


def _project(directory: Path) -> Path:
    template = resources.files("charter") / "templates" / "starter"
    with resources.as_file(template) as source:
        shutil.copytree(source, directory, dirs_exist_ok=True)
    return directory


def _summary(
    events: int, hub: dict[str, Any], erp: dict[str, Any], crm: dict[str, Any], elapsed: float
) -> tuple[Table, bool]:
    deliveries = hub["deliveries"]
    checks = {
        "every event acknowledged by the hub": crm["acknowledged"] == events,
        "hub received = events pushed": hub["received"] == events,
        "hub delivered = ERP applied": deliveries["delivered"] == erp["applied"],
        "ERP applied every event once": erp["applied"] == events
        and erp["applied_more_than_once"] == 0,
        "nothing dead-lettered or pending": deliveries["dead"] == 0 and deliveries["pending"] == 0,
    }
    table = Table(title="Order-to-cash: CRM -> hub -> ERP", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("source", style="dim")
    rows = [
        ("events pushed by the CRM", crm["generated"], "CRM"),
        ("events received", hub["received"], "hub"),
        ("delivered", deliveries["delivered"], "hub"),
        ("retried (deliveries with > 1 attempt)", deliveries["retried"], "hub"),
        ("attempts in all", deliveries["attempts"], "hub"),
        ("dead-lettered", deliveries["dead"], "hub"),
        ("end-to-end latency p50", f"{hub['latency_ms']['p50']} ms", "hub"),
        ("end-to-end latency p99", f"{hub['latency_ms']['p99']} ms", "hub"),
        ("orders applied", erp["applied"], "ERP"),
        ("duplicate calls absorbed by Idempotency-Key", erp["duplicates"], "ERP"),
        ("calls refused during the outage", erp["faulted"], "ERP"),
        ("orders applied more than once", erp["applied_more_than_once"], "ERP"),
        ("wall time", f"{elapsed:.1f} s", ""),
    ]
    for name, value, source in rows:
        table.add_row(name, str(value), source)
    for name, ok in checks.items():
        table.add_row(name, "[green]yes[/]" if ok else "[bold red]NO[/]", "check")
    return table, all(checks.values())


def run_demo(
    console: Console, *, events: int = 3000, outage_seconds: float = 4.0, keep_serving: bool = False
) -> int:
    """Run the demo; returns the exit code (0 when every check holds)."""
    with tempfile.TemporaryDirectory(prefix="charter-demo-") as tmp:
        project = _project(Path(tmp) / "order-to-cash")
        console.print(
            Panel.fit(
                "Charter demo: a CRM pushes closed deals; the hub turns each into an order in the "
                "ERP.\nThe ERP goes down midway; nothing acknowledged may be lost or doubled.",
                title="order-to-cash",
            )
        )
        with spawn("erp") as erp:
            with HubProcess(project, env={"CHARTER_ERP_URL": erp.url}) as hub:
                with spawn("crm", hub_url=hub.url) as crm:
                    console.print(
                        f"hub {hub.url}  ·  ERP {erp.url}  ·  CRM {crm.url}  ·  "
                        f"database {project}/.charter/charter.db"
                    )
                    code = _drive(console, events, outage_seconds, hub, erp, crm)
                    if keep_serving:
                        serve_until_interrupted(
                            console,
                            f"curl {hub.url}/v1/stats  ·  curl {erp.url}/admin/report",
                        )
                    return code


def serve_until_interrupted(console: Console, hint: str) -> None:
    """Keep the demo's processes running for exploring, until Ctrl-C."""
    console.print(f"Serving. Try: {hint}  ·  Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")


def demo_progress(console: Console, width: int) -> Progress:
    """The progress display both demos use: a label, a bar, done/total, elapsed."""
    return Progress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _drive(
    console: Console,
    events: int,
    outage_seconds: float,
    hub: HubProcess,
    erp: SimProcess,
    crm: SimProcess,
) -> int:
    started = time.monotonic()
    rate = max(100.0, events / 10)
    crm._call(
        "POST",
        "/admin/generate",
        json={"count": events, "batch_size": 50, "rate_per_s": rate, "run": "demo"},
    )
    outage_at, outage_until, outage_done = events * 0.3, 0.0, outage_seconds == 0
    with demo_progress(console, 34) as progress:
        acked = progress.add_task("CRM -> hub (acknowledged)", total=events)
        applied = progress.add_task("hub -> ERP (applied)", total=events)
        while time.monotonic() - started < DEMO_TIMEOUT_S:
            crm_report, erp_report = crm.report(), erp.report()
            progress.update(acked, completed=crm_report["acknowledged"])
            progress.update(applied, completed=erp_report["applied"])
            now = time.monotonic()
            if not outage_done and not outage_until and erp_report["applied"] >= outage_at:
                erp.fault(outage=True)
                outage_until = now + outage_seconds
                progress.update(applied, description="hub -> ERP [bold red](ERP DOWN)[/]")
            elif outage_until and now >= outage_until and not outage_done:
                erp.clear_faults()
                outage_done = True
                progress.update(applied, description="hub -> ERP [green](ERP back)[/]")
            stats = hub.stats()
            if (
                outage_done
                and crm_report["pending"] == 0
                and stats["deliveries"]["pending"] == 0
                and stats["received"] >= crm_report["acknowledged"]
            ):
                break
            time.sleep(0.2)
    table, ok = _summary(
        events, hub.stats(), erp.report(), crm.report(), time.monotonic() - started
    )
    console.print(table)
    console.print("[bold green]All checks hold.[/]" if ok else "[bold red]A check failed.[/]")
    return 0 if ok else 1
