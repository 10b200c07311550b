"""Lineage lookups: ``lineage()`` of a delivered order with many events stored.

For each database (SQLite in a temporary folder, PostgreSQL in a database this
script creates and drops), on a fresh, migrated database, this process:

1. appends ``--events`` ``deal.closed`` events (default 100,000), each with one
   delivery to the ERP and its ``record_keys`` row, through ``SqlStore.append``
   in batches of 1,000, as ingest writes them;
2. delivers every delivery: claims them in batches and records one attempt
   each (HTTP 201), so the ``attempts`` table holds one row per delivery;
3. times ``lineage(store, project, "order", key)`` for ``--lookups`` random
   delivered orders (default 200, after 20 warm-up lookups): ``lineage_p50_ms``
   and ``lineage_p99_ms``;
4. times the baseline, the bare SQL lookup of the same keys' events in
   ``record_keys`` (one indexed ``SELECT``): ``baseline_p50_ms``, and
   ``ratio_vs_baseline`` = lineage_p50_ms / baseline_p50_ms.

The target is ``lineage_p99_ms`` at most 200 ms with 100,000 events stored.

Usage::

    python bench/lineage.py [--quick] [--db sqlite|postgresql|both] [--events N]
                            [--lookups N]

Progress goes to stderr; stdout carries one table per database and, as its
last line, one JSON object: ``{"quick", "events", "lookups", "targets",
"sqlite": {figure: value, ..., "met": {figure: bool}}, "postgresql": {...}}``.
The exit code is 0 when the run completed, target met or not, and 1 when it
could not complete.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from _harness import (
    RUN_FAILURES,
    BenchFailed,
    Figure,
    Target,
    bench_parser,
    copy_starter,
    err,
    exit_on_sigterm,
    figures_table,
    fresh_database,
    kinds_of,
    out,
    positive,
    postgres_missing,
    progress,
    report_line,
    with_verdicts,
)
from charter.catalog import Project, load_project
from charter.governance.lineage import lineage
from charter.store import (
    AttemptResult,
    IngestBatch,
    NewDelivery,
    NewEvent,
    Outcome,
    RecordKey,
    SqlStore,
    upgrade,
)
from charter.store.schema import record_keys

INTEGRATION = "deal-to-erp-order"
INGRESS = "crm-deal-to-order@1"
BATCH = 1_000
WARMUP = 20
FULL_EVENTS = 100_000
QUICK_EVENTS = 20_000
FULL_LOOKUPS = 200
QUICK_LOOKUPS = 100
TARGETS = [Target("lineage_p99_ms", False, 200.0)]
FIGURES = [
    Figure("lineage_p50_ms", "lineage() median", "ms", 2),
    Figure("lineage_p99_ms", "lineage() p99", "ms", 2),
    Figure("baseline_p50_ms", "bare record_keys SELECT median", "ms", 3),
    Figure("baseline_p99_ms", "bare record_keys SELECT p99", "ms", 3),
    Figure("ratio_vs_baseline", "lineage / baseline (medians)", "x", 1),
    Figure("load_s", "append + deliver all events", "s", 1),
]


def order(n: int) -> str:
    return f"D-{n:07d}"


def new_event(run: str, n: int) -> NewEvent:
    """A deal as ingest stores it: the event, one delivery to the ERP, its record key."""
    hub_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run}/{n}"))
    account = f"A-{n % 500:05d}"
    data = {
        "id": order(n),
        "account": {"id": account, "name": "Account"},
        "amount": 100.0 + n % 97,
        "currency": "EUR",
        "stage": "closed_won",
        "lines": [{"sku": f"SKU-{n % 40}", "qty": 1 + n % 3, "unit_price": 25.0}],
    }
    canonical = {
        "order_id": order(n),
        "customer": {"id": account, "name": "Account"},
        "total": data["amount"],
        "currency": "EUR",
        "lines": [{"sku": f"SKU-{n % 40}", "quantity": 1 + n % 3, "unit_price": 25.0}],
    }
    return NewEvent(
        id=hub_id,
        system="crm",
        ce_id=f"bench-{run}-{n}",
        type="deal.closed",
        source="crm.bench",
        subject=None,
        time=None,
        data=orjson.dumps(data).decode(),
        deliveries=[
            NewDelivery(
                integration=INTEGRATION,
                target="erp",
                tier=0,
                idempotency_key=f"{hub_id}:{INTEGRATION}",
                mapping="order-to-erp@1",
                payload=orjson.dumps(canonical).decode(),
            )
        ],
        records=[RecordKey("order", order(n), INTEGRATION, INGRESS)],
    )


def load(store: SqlStore, events: int) -> None:
    """Append ``events`` events in batches, then deliver every delivery with one attempt."""
    run = uuid.uuid4().hex[:8]
    for start in range(0, events, BATCH):
        batch = [new_event(run, n) for n in range(start, min(start + BATCH, events))]
        store.append([IngestBatch(batch)])
        if (start // BATCH) % 20 == 0:
            progress(f"appended {start + len(batch):,} events")
    delivered = 0
    while True:
        claimed = store.claim_due_deliveries("bench", BATCH, 600.0)
        if not claimed:
            break
        now = time.time()
        store.record_attempts(
            "bench",
            [AttemptResult(d.id, Outcome.DELIVERED, now, 3.0, status_code=201) for d in claimed],
        )
        delivered += len(claimed)
        if (delivered // BATCH) % 20 == 0:
            progress(f"delivered {delivered:,}")
    if delivered != events:
        raise BenchFailed(f"delivered {delivered:,} of {events:,} deliveries")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def measure(kind: str, folder: Path, project: Project, events: int, lookups: int) -> dict[str, Any]:
    with fresh_database(kind, folder) as url:
        store = SqlStore.from_url(url)
        try:
            upgrade(store.engine)
            started = time.monotonic()
            load(store, events)
            load_s = time.monotonic() - started
            rng = random.Random(7)
            keys = [order(rng.randrange(events)) for _ in range(WARMUP + lookups)]
            took: list[float] = []
            for n, key in enumerate(keys):
                t0 = time.perf_counter()
                found = lineage(store, project, "order", key)
                elapsed = time.perf_counter() - t0
                if found.deliveries[0].status != "delivered" or not found.deliveries[0].attempts:
                    raise BenchFailed(f"order {key} is not delivered: {found.to_json()}")
                if n >= WARMUP:
                    took.append(elapsed * 1000)
            bare: list[float] = []
            for n, key in enumerate(keys):
                t0 = time.perf_counter()
                with store.engine.connect() as conn:
                    rows = conn.execute(
                        select(record_keys.c.event_id).where(
                            record_keys.c.entity == "order", record_keys.c.key == key
                        )
                    ).all()
                elapsed = time.perf_counter() - t0
                if len(rows) != 1:
                    raise BenchFailed(f"order {key} has {len(rows)} record rows, not 1")
                if n >= WARMUP:
                    bare.append(elapsed * 1000)
        finally:
            store.close()
    figures = {
        "lineage_p50_ms": statistics.median(took),
        "lineage_p99_ms": percentile(took, 99),
        "baseline_p50_ms": statistics.median(bare),
        "baseline_p99_ms": percentile(bare, 99),
        "load_s": load_s,
    }
    figures["ratio_vs_baseline"] = figures["lineage_p50_ms"] / figures["baseline_p50_ms"]
    return with_verdicts(kind, TARGETS, figures)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--events", type=positive, help="events stored before the lookups")
    parser.add_argument("--lookups", type=positive, help="lineage lookups timed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    args = parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    lookups = args.lookups or (QUICK_LOOKUPS if args.quick else FULL_LOOKUPS)
    kinds = kinds_of(args)
    if postgres_missing(kinds):
        return 1
    started = time.monotonic()
    summaries: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="charter-bench-") as temp:
            folder = Path(temp)
            project = load_project(copy_starter(folder / "project"))
            for kind in kinds:
                progress(f"{kind}: {events:,} events")
                summaries[kind] = measure(kind, folder, project, events, lookups)
    except RUN_FAILURES as exc:
        err.print(f"[red]bench failed:[/] {exc}")
        return 1
    for kind, summary in summaries.items():
        title = f"Lineage lookups on {kind}: {events:,} events stored, {lookups} lookups"
        out.print(figures_table(title, kind, FIGURES, TARGETS, summary))
    err.print(f"took {time.monotonic() - started:.1f} s")
    report_line({"quick": args.quick, "events": events, "lookups": lookups}, TARGETS, summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
