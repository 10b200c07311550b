"""The order-to-cash demo: closed deals run as durable processes across five systems.

Real processes on local ports: the simulated CRM pushes deals to ``charter up``
(embedded SQLite); each deal starts an order-to-cash instance that creates the
ERP order, captures the payment, requests the shipment, waits for the
warehouse's dispatch event, invoices, and tells the portal and analytics. The
ERP goes down midway; about one deal in a hundred has a card that is declined,
and its ERP order is cancelled by compensation. Every figure is checked against
the simulated systems' own counts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from charter.demo import demo_progress, serve_until_interrupted
from charter.processes import HubProcess
from charter.sim import SimProcess, spawn

DEMO_TIMEOUT_S = 150.0
TARGETS = ("erp", "payments", "warehouse", "portal", "analytics")


def _project(directory: Path) -> Path:
    template = resources.files("charter") / "templates" / "order-to-cash"
    with resources.as_file(template) as source:
        shutil.copytree(source, directory, dirs_exist_ok=True)
    return directory


def run_order_to_cash(
    console: Console, *, deals: int = 400, outage_seconds: float = 3.0, keep_serving: bool = False
) -> int:
    """Run the demo; returns the exit code (0 when every check holds)."""
    console.print(
        Panel.fit(
            "Each closed CRM deal runs as a durable order-to-cash process: ERP order, payment,\n"
            "shipment request, wait for the warehouse's dispatch event, invoice, portal and\n"
            "analytics. The ERP goes down midway; declined cards cancel their orders.",
            title="order-to-cash",
        )
    )
    with tempfile.TemporaryDirectory(prefix="charter-demo-") as tmp, ExitStack() as stack:
        project = _project(Path(tmp) / "order-to-cash")
        sims = {name: stack.enter_context(spawn(name)) for name in TARGETS if name != "warehouse"}
        hub = HubProcess(
            project,
            env={f"CHARTER_{name.upper()}_URL": sim.url for name, sim in sims.items()}
            | {"CHARTER_WAREHOUSE_URL": "http://127.0.0.1:1"},
        )
        # The warehouse pushes to the hub, so it needs the hub's address first.
        sims["warehouse"] = stack.enter_context(spawn("warehouse", hub_url=hub.url))
        hub.env["CHARTER_WAREHOUSE_URL"] = sims["warehouse"].url
        stack.enter_context(hub)
        crm = stack.enter_context(spawn("crm", hub_url=hub.url))
        sims["warehouse"].fault(dispatch_delay_s=0.2)
        console.print(
            f"hub {hub.url}  ·  "
            + "  ·  ".join(f"{n} {s.url}" for n, s in sims.items())
            + f"  ·  crm {crm.url}"
        )
        code = _drive(console, deals, outage_seconds, hub, crm, sims)
        if keep_serving:
            serve_until_interrupted(console, f"curl {hub.url}/v1/processes")
        return code


def _process_counts(hub: HubProcess) -> dict[str, int]:
    response = hub.client.get("/v1/processes")
    response.raise_for_status()
    counts: dict[str, int] = response.json()["instances"]
    return counts


def _drive(
    console: Console,
    deals: int,
    outage_seconds: float,
    hub: HubProcess,
    crm: SimProcess,
    sims: dict[str, SimProcess],
) -> int:
    started = time.monotonic()
    crm._call(
        "POST",
        "/admin/generate",
        json={"count": deals, "batch_size": 25, "rate_per_s": max(50.0, deals / 8), "run": "o2c"},
    )
    erp = sims["erp"]
    outage_until, outage_done = 0.0, outage_seconds == 0
    with demo_progress(console, 38) as progress:
        acked = progress.add_task("CRM -> hub (deals acknowledged)", total=deals)
        ended = progress.add_task("processes finished", total=deals)
        while time.monotonic() - started < DEMO_TIMEOUT_S:
            counts = _process_counts(hub)
            finished = sum(counts.get(s, 0) for s in ("completed", "compensated", "cancelled"))
            progress.update(acked, completed=crm.report()["acknowledged"])
            progress.update(ended, completed=finished)
            now = time.monotonic()
            if not outage_done and not outage_until and finished >= deals * 0.25:
                erp.fault(outage=True)
                outage_until = now + outage_seconds
                progress.update(ended, description="processes [bold red](ERP DOWN)[/]")
            elif outage_until and now >= outage_until and not outage_done:
                erp.clear_faults()
                outage_done = True
                progress.update(ended, description="processes [green](ERP back)[/]")
            if outage_done and finished >= deals:
                break
            time.sleep(0.25)
    elapsed = time.monotonic() - started
    table, ok = _summary(deals, _process_counts(hub), crm.report(), sims, elapsed, hub)
    console.print(table)
    console.print("[bold green]All checks hold.[/]" if ok else "[bold red]A check failed.[/]")
    return 0 if ok else 1


def _summary(
    deals: int,
    counts: dict[str, int],
    crm: dict[str, Any],
    sims: dict[str, SimProcess],
    elapsed: float,
    hub: HubProcess,
) -> tuple[Table, bool]:
    r = {name: sim.report() for name, sim in sims.items()}
    completed, compensated = counts.get("completed", 0), counts.get("compensated", 0)
    escalations = hub.client.get("/v1/escalations").json()["escalations"]
    checks = {
        "every deal acknowledged by the hub": crm["acknowledged"] == deals,
        "every deal ran one process to its end": completed + compensated == deals
        and sum(counts.values()) == deals,
        "one ERP order per deal": r["erp"]["orders"] == deals,
        "declined payments = compensated processes = cancelled orders": (
            r["payments"]["declined"] == compensated == r["erp"]["cancelled"]
        ),
        "captured = shipped = invoiced = portal = analytics = completed": (
            r["payments"]["payments"]
            == r["warehouse"]["dispatched"]
            == r["erp"]["invoices"]
            == r["portal"]["applied"]
            == r["analytics"]["applied"]
            == completed
        ),
        "no effect applied twice in any system": all(
            rep["applied_more_than_once"] == 0 for rep in r.values()
        ),
    }
    table = Table(title="Order-to-cash: deals through five systems", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("source", style="dim")
    rows: list[tuple[str, Any, str]] = [
        ("deals pushed by the CRM", crm["generated"], "CRM"),
        ("processes completed", completed, "hub"),
        ("processes compensated (card declined)", compensated, "hub"),
        ("escalations to fulfilment-ops", len(escalations), "hub"),
        ("ERP orders created", r["erp"]["orders"], "ERP"),
        ("ERP orders cancelled by compensation", r["erp"]["cancelled"], "ERP"),
        ("ERP invoices", r["erp"]["invoices"], "ERP"),
        ("ERP calls refused during the outage", r["erp"]["faulted"], "ERP"),
        (
            "repeated calls absorbed by Idempotency-Key",
            ", ".join(f"{n} {x['duplicates']}" for n, x in r.items() if x["duplicates"]) or 0,
            "all",
        ),
        ("payments captured", r["payments"]["payments"], "payments"),
        ("payments declined", r["payments"]["declined"], "payments"),
        ("shipments dispatched", r["warehouse"]["dispatched"], "warehouse"),
        ("portal status updates", r["portal"]["applied"], "portal"),
        ("analytics events", r["analytics"]["applied"], "analytics"),
        ("wall time", f"{elapsed:.1f} s", ""),
    ]
    for name, value, source in rows:
        table.add_row(name, str(value), source)
    for name, ok in checks.items():
        table.add_row(name, "[green]yes[/]" if ok else "[bold red]NO[/]", "check")
    return table, all(checks.values())
