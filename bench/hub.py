"""Hub throughput, latency and memory, measured as a user runs the hub.

``charter up`` runs in a child process on the starter project, on a fresh
database, delivering ``deal.closed`` events to the no-op target simulator.
For each database (SQLite in a temporary folder, PostgreSQL in a database this
script creates and drops) it measures:

- ``ingest_batched_eps``: events/s acknowledged, batches of 100 events per
  request over 4 connections (the worker delivers at the same time);
- ``delivered_eps``: events/s from the first batch sent until ``GET /v1/stats``
  shows every delivery done (the no-op's own count is checked too);
- ``single_ack_rps`` and ``single_e2e_rps``: one event per request over 64
  connections; requests/s acknowledged, and events/s from the first request
  until all are delivered;
- ``ack_p50_ms`` / ``ack_p99_ms``: ingest acknowledgement latency of single
  events offered open-loop at 500 requests/s, on a second fresh hub and
  database, and ``e2e_p50_ms`` / ``e2e_p99_ms``: that hub's ``/v1/stats``
  latency (delivery recorded minus event stored) after the phase, so it
  covers that phase's events only;
- ``hub_cpu_pct``: the hub's CPU time over the throughput phases, in % of one
  core (the hub is one process: near 100 means it is CPU-bound);
- ``peak_rss_mb``: the largest resident set of either hub process, sampled
  every 50 ms;
- ``baseline_eps``: the same rows (one event and one delivery per event, 100
  events per transaction) inserted with plain SQLAlchemy Core from this
  process into a fresh database of the same kind with the same durability
  settings, and ``ratio_vs_baseline`` = ingest_batched_eps / baseline_eps.

Usage::

    python bench/hub.py [--quick] [--db sqlite|postgresql|both] [--events N]
                        [--single N] [--seconds S] [--runs R]

Progress goes to stderr; stdout carries one table per database and, as its
last line, one JSON object: ``{"quick", "runs", "sizes", "targets",
"sqlite": {figure: median, ..., "met": {figure: bool}, "runs": [{figure:
value}, ...]}, "postgresql": {...}}``. The exit code is 0 when the run
completed, targets met or not, and 1 when it could not complete (deliveries
never finished, counts disagree, a process failed). ``CHARTER_BENCH_PG``
overrides the PostgreSQL admin URL (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert

from _harness import (
    RUN_FAILURES,
    BenchFailed,
    Figure,
    RssSampler,
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
    run_async,
    summarise,
)
from _load import LoadResult, build_request, percentile, run_load
from charter.catalog import load_project
from charter.hub import IngestLimits, Router, parse_body
from charter.processes import HubProcess
from charter.sim import SimProcess, spawn
from charter.store import NewEvent, create_store_engine, upgrade
from charter.store.schema import deliveries, events

SOURCE = "crm"
BATCH = 100
BATCH_CONNECTIONS = 4
SINGLE_CONNECTIONS = 64
OFFERED_RATE = 500.0
STALL_TIMEOUT_S = 60.0
POLL_S = 0.02
BATCH_TYPE = "application/cloudevents-batch+json"
SINGLE_TYPE = "application/cloudevents+json"


@dataclass(frozen=True)
class Sizes:
    batched: int
    single: int
    latency_seconds: float

    @property
    def total(self) -> int:
        """Events sent to the throughput hub: the batched phase, then the single-event one."""
        return self.batched + self.single


# Quick stays under a minute for both databases even when the machine is busy.
QUICK = Sizes(batched=4_000, single=1_500, latency_seconds=4.0)
FULL = Sizes(batched=50_000, single=10_000, latency_seconds=10.0)


FIGURES = [
    Figure("ingest_batched_eps", "batched ingest, 100 events/request", "events/s"),
    Figure("delivered_eps", "delivered to the no-op target", "events/s"),
    Figure("single_ack_rps", "single-event ingest, acks", "requests/s"),
    Figure("single_e2e_rps", "single-event, end to end", "events/s"),
    Figure("offered_rps", "open-loop load achieved", "requests/s"),
    Figure("ack_p50_ms", "ack latency p50 at 500/s", "ms", 2),
    Figure("ack_p99_ms", "ack latency p99 at 500/s", "ms", 2),
    Figure("e2e_p50_ms", "end-to-end p50 at 500/s", "ms", 2),
    Figure("e2e_p99_ms", "end-to-end p99 at 500/s", "ms", 2),
    Figure("hub_cpu_pct", "hub CPU, throughput phases", "% of a core"),
    Figure("peak_rss_mb", "peak RSS of the hub", "MiB", 1),
    Figure("baseline_eps", "baseline: same rows, plain Core", "events/s"),
    Figure("ratio_vs_baseline", "batched ingest / baseline", "x", 2),
]


TARGETS = [
    Target("ingest_batched_eps", True, 5_000, kinds=("sqlite",)),
    Target("single_e2e_rps", True, 1_500),
    Target("ack_p99_ms", False, 20.0),
]


# Load


def deal_event(run: str, n: int) -> dict[str, Any]:
    """A ``deal.closed`` CloudEvent whose data is valid under the starter CRM schema."""
    rng = random.Random(n)
    items = [
        (rng.randint(1, 50), rng.randint(1, 10), round(rng.uniform(5, 500), 2))
        for _ in range(rng.randint(1, 4))
    ]
    account = rng.randint(1, 500)
    return {
        "specversion": "1.0",
        "id": f"bench-{run}-{n}",
        "source": "crm.bench",
        "type": "deal.closed",
        "time": "2025-01-01T12:00:00.000Z",
        "datacontenttype": "application/json",
        "subject": f"D-{n:06d}",
        "data": {
            "id": f"D-{n:06d}",
            "account": {
                "id": f"A-{account:05d}",
                "name": f"Account {account}",
                "country": rng.choice(("DE", "FR", "US", "GB", "NL")),
            },
            "amount": round(sum(qty * price for _, qty, price in items), 2),
            "currency": rng.choice(("EUR", "USD", "GBP")),
            "stage": "closed_won",
            "owner_id": f"U-{rng.randint(1, 25):03d}",
            "closed_at": "2025-01-01T12:00:00.000Z",
            "lines": [
                {"sku": f"SKU-{sku:03d}", "qty": qty, "unit_price": price}
                for sku, qty, price in items
            ],
        },
    }


def batch_bodies(run: str, count: int) -> list[bytes]:
    return [
        orjson.dumps([deal_event(run, n) for n in range(start, min(start + BATCH, count))])
        for start in range(0, count, BATCH)
    ]


def ingest_requests(hub: HubProcess, bodies: list[bytes], content_type: str) -> list[bytes]:
    path = f"/v1/systems/{SOURCE}/events"
    headers = {"content-type": content_type}
    return [build_request("POST", "127.0.0.1", hub.port, path, b, headers) for b in bodies]


def phase_done(result: LoadResult, done: float) -> None:
    delivered = done - result.started
    progress(f"  acknowledged in {result.elapsed:.1f} s, all delivered after {delivered:.1f} s")


def check_accepted(result: LoadResult, phase: str) -> None:
    refused = {status: n for status, n in result.statuses.items() if status != 202}
    if refused:
        raise BenchFailed(f"{phase}: the hub refused requests {refused}: {result.failures}")


# Processes and databases


def wait_delivered(
    hub: HubProcess, noop: SimProcess, noop_before: int, new: int, total: int
) -> float:
    """Wait until the hub has delivered ``total`` events with none pending; when it did.

    Watches the no-op's cheap counter first and asks the hub's ``/v1/stats``
    (which counts every row) only once the no-op has seen the ``new`` calls.
    Fails when nothing moves for a minute, or when the counts disagree.
    """
    last, moved = -1, time.monotonic()
    while True:
        received = noop.report()["received"] - noop_before
        if received >= new:
            break
        if received != last:
            last, moved = received, time.monotonic()
        elif time.monotonic() - moved > STALL_TIMEOUT_S:
            raise BenchFailed(
                f"the no-op target got {received} of {new} deliveries and nothing moved for "
                f"{STALL_TIMEOUT_S:g} s; hub stats {hub.stats()}\n{hub.log_tail()}"
            )
        time.sleep(POLL_S)
    moved = time.monotonic()
    while True:
        stats = hub.stats()
        done = time.perf_counter()
        counts = stats["deliveries"]
        if counts["dead"]:
            raise BenchFailed(f"{counts['dead']} deliveries went dead: {stats}")
        if counts["pending"] == 0 and counts["delivered"] == total:
            break
        if time.monotonic() - moved > STALL_TIMEOUT_S:
            raise BenchFailed(f"the hub never finished delivering: {stats}\n{hub.log_tail()}")
        time.sleep(POLL_S)
    if stats["received"] != total:
        raise BenchFailed(f"the hub holds {stats['received']} events, expected {total}")
    received = noop.report()["received"] - noop_before
    if received < new:
        raise BenchFailed(f"the hub says delivered, but the no-op target got {received} < {new}")
    return done


# Phases


def measure_baseline(url: str, project: Path, count: int) -> dict[str, float]:
    """Insert the rows the hub would write for ``count`` events, 100 events per transaction."""
    router = Router(load_project(project))
    limits = IngestLimits()
    now = time.time()
    batches: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    for body in batch_bodies(uuid.uuid4().hex[:8], count):
        prepared = router.prepare(SOURCE, parse_body(body, BATCH_TYPE, limits), True)
        batches.append((event_rows(prepared, now), delivery_rows(prepared, now)))
    engine = create_store_engine(url)
    try:
        upgrade(engine)
        started = time.perf_counter()
        for event_batch, delivery_batch in batches:
            with engine.begin() as conn:
                conn.execute(insert(events), event_batch)
                conn.execute(insert(deliveries), delivery_batch)
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
    return {"baseline_eps": count / elapsed}


def event_rows(prepared: list[NewEvent], now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": e.id,
            "system": e.system,
            "ce_id": e.ce_id,
            "type": e.type,
            "source": e.source,
            "subject": e.subject,
            "time": e.time,
            "received_at": now,
            "data": e.data,
        }
        for e in prepared
    ]


def delivery_rows(prepared: list[NewEvent], now: float) -> list[dict[str, Any]]:
    return [
        {
            "event_id": e.id,
            "integration": d.integration,
            "target": d.target,
            "tier": d.tier,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "idempotency_key": d.idempotency_key,
            "mapping": d.mapping,
            "payload": d.payload,
            "created_at": now,
        }
        for e in prepared
        for d in e.deliveries
    ]


def without_erp_quota(project: Path) -> Path:
    """The starter's ERP budget (500 calls/s) is a business limit, not the hub's: the no-op
    target stands in for the ERP here, so the bench measures the hub without it."""
    erp = project / "systems" / "erp.yaml"
    text = erp.read_text()
    erp.write_text(text[: text.index("quota:")] if "quota:" in text else text)
    return project


def start_hub(project: Path, url: str, noop: SimProcess) -> HubProcess:
    return HubProcess(project, database=url, env={"CHARTER_ERP_URL": noop.url}).start()


def measure_throughput(project: Path, url: str, noop: SimProcess, sizes: Sizes) -> dict[str, float]:
    """Batched ingest and delivery, then single-event requests end to end, on one hub."""
    run = uuid.uuid4().hex[:8]
    batched = batch_bodies(run, sizes.batched)
    singles = [orjson.dumps(deal_event(run, n)) for n in range(sizes.batched, sizes.total)]
    hub = start_hub(project, url, noop)
    try:
        with RssSampler(hub.pid) as rss:
            noop_before = noop.report()["received"]
            cpu_before, wall_before = rss.cpu_seconds(), time.perf_counter()
            progress(f"  batched ingest of {sizes.batched:,} events")
            result = run_async(
                run_load(
                    "127.0.0.1",
                    hub.port,
                    ingest_requests(hub, batched, BATCH_TYPE),
                    connections=BATCH_CONNECTIONS,
                )
            )
            check_accepted(result, "batched ingest")
            done = wait_delivered(hub, noop, noop_before, sizes.batched, sizes.batched)
            phase_done(result, done)
            figures = {
                "ingest_batched_eps": sizes.batched / result.elapsed,
                "delivered_eps": sizes.batched / (done - result.started),
            }
            progress(f"  single-event ingest of {sizes.single:,} events")
            noop_before = noop.report()["received"]
            result = run_async(
                run_load(
                    "127.0.0.1",
                    hub.port,
                    ingest_requests(hub, singles, SINGLE_TYPE),
                    connections=SINGLE_CONNECTIONS,
                )
            )
            check_accepted(result, "single-event ingest")
            done = wait_delivered(hub, noop, noop_before, sizes.single, sizes.total)
            phase_done(result, done)
            figures["single_ack_rps"] = result.rate()
            figures["single_e2e_rps"] = sizes.single / (done - result.started)
            busy = rss.cpu_seconds() - cpu_before
            figures["hub_cpu_pct"] = 100 * busy / (time.perf_counter() - wall_before)
        figures["peak_rss_mb"] = rss.peak / 2**20
    except BaseException:
        err.print(hub.log_tail())
        raise
    finally:
        hub.close()
    return figures


def measure_latency(project: Path, url: str, noop: SimProcess, sizes: Sizes) -> dict[str, float]:
    """Open-loop single events at 500/s on a fresh hub: ack and end-to-end percentiles."""
    run = uuid.uuid4().hex[:8]
    count = round(OFFERED_RATE * sizes.latency_seconds)
    bodies = [orjson.dumps(deal_event(run, n)) for n in range(count)]
    hub = start_hub(project, url, noop)
    try:
        with RssSampler(hub.pid) as rss:
            noop_before = noop.report()["received"]
            progress(f"  {count:,} single events at {OFFERED_RATE:g}/s, open loop")
            result = run_async(
                run_load(
                    "127.0.0.1",
                    hub.port,
                    ingest_requests(hub, bodies, SINGLE_TYPE),
                    connections=SINGLE_CONNECTIONS,
                    rate=OFFERED_RATE,
                )
            )
            check_accepted(result, "open-loop ingest")
            done = wait_delivered(hub, noop, noop_before, count, count)
            phase_done(result, done)
            latency = hub.stats()["latency_ms"]
        return {
            "offered_rps": result.rate(),
            "ack_p50_ms": percentile(result.latencies, 50) * 1000,
            "ack_p99_ms": percentile(result.latencies, 99) * 1000,
            "e2e_p50_ms": float(latency["p50"]),
            "e2e_p99_ms": float(latency["p99"]),
            "peak_rss_mb": rss.peak / 2**20,
        }
    except BaseException:
        err.print(hub.log_tail())
        raise
    finally:
        hub.close()


def measure(
    kind: str, folder: Path, project: Path, noop: SimProcess, sizes: Sizes
) -> dict[str, float]:
    """Every figure for one database kind, each phase on its own fresh database."""
    progress(f"[bold]{kind}[/]: baseline of {sizes.batched:,} events")
    with fresh_database(kind, folder) as url:
        figures = measure_baseline(url, project, sizes.batched)
    progress(f"[bold]{kind}[/]: hub throughput")
    with fresh_database(kind, folder) as url:
        throughput = measure_throughput(project, url, noop, sizes)
    progress(f"[bold]{kind}[/]: hub latency")
    with fresh_database(kind, folder) as url:
        latency = measure_latency(project, url, noop, sizes)
    figures |= throughput
    figures |= latency
    figures["peak_rss_mb"] = max(throughput["peak_rss_mb"], latency["peak_rss_mb"])
    figures["ratio_vs_baseline"] = figures["ingest_batched_eps"] / figures["baseline_eps"]
    return figures


# Report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--events", type=positive, help="events in the batched phase")
    parser.add_argument("--single", type=positive, help="events in the single-event phase")
    parser.add_argument("--seconds", type=float, help="length of the open-loop phase")
    parser.add_argument("--runs", type=positive, default=1, help="repeat and report medians")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        batched=args.events or base.batched,
        single=args.single or base.single,
        latency_seconds=args.seconds or base.latency_seconds,
    )
    kinds = kinds_of(args)
    if postgres_missing(kinds):
        return 1
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="charter-bench-") as temp:
            folder = Path(temp)
            project = without_erp_quota(copy_starter(folder / "project"))
            with spawn("noop") as noop:
                for number in range(1, args.runs + 1):
                    if args.runs > 1:
                        progress(f"run {number} of {args.runs}")
                    for kind in kinds:
                        results[kind].append(measure(kind, folder, project, noop, sizes))
    except RUN_FAILURES as exc:
        err.print(f"[red]bench failed:[/] {exc}")
        return 1
    summaries = {kind: summarise(kind, FIGURES, TARGETS, runs) for kind, runs in results.items()}
    for kind, summary in summaries.items():
        title = f"Charter hub on {kind}"
        if args.runs > 1:
            title += f" (median of {args.runs} runs)"
        out.print(figures_table(title, kind, FIGURES, TARGETS, summary))
    err.print(f"took {time.monotonic() - started:.1f} s")
    head = {
        "quick": args.quick,
        "runs": args.runs,
        "sizes": {
            "batched": sizes.batched,
            "single": sizes.single,
            "latency_seconds": sizes.latency_seconds,
            "offered_rate": OFFERED_RATE,
        },
    }
    report_line(head, TARGETS, summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
