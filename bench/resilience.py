"""Delivery throughput with the quota and circuit breaker middleware on and off, in one run.

``charter up`` runs in a child process on the starter project, on a fresh
database each time, delivering ``deal.closed`` events to the no-op target
simulator. Two variants of the ERP system (the one target) alternate within
each run:

- **on**: the ERP declares a quota that never limits (100,000 calls/s, burst
  2,000, concurrency 64) and keeps its default circuit breaker, so every
  delivery takes a token from the shared bucket (leased in batches), holds a
  concurrency slot and feeds the breaker;
- **off**: no quota and ``breaker: {enabled: false}``: the middleware passes
  calls straight through.

Figures per database: ``on_eps`` and ``off_eps`` (events/s from the first
batch posted until ``GET /v1/stats`` shows every delivery done, batches of
100 events over 4 connections) and ``overhead_pct`` = (1 - on / off) x 100,
whose target is at most 10 %. On PostgreSQL ``charter up`` uses the shared
rows (``SELECT ... FOR UPDATE`` per lease), as ``charter worker`` processes do.

End-to-end figures on a shared machine spread by more than the effect, so the
same run also measures the middleware alone, in this process: calls through
a guarded no-op connector against the bare connector, 64 at a time, with the
same shared state (in memory on SQLite, bucket and breaker rows on
PostgreSQL), alternating. ``middleware_us`` is what the guard adds per call
(median of the alternations); ``cost_pct`` puts it against the time one
delivery takes end to end with the middleware off (``1e6 / off_eps`` µs).

Usage::

    python bench/resilience.py [--quick] [--db sqlite|postgresql|both] [--events N] [--runs R]

Progress goes to stderr; stdout carries one table per database and, as its
last line, one JSON object: ``{"quick", "runs", "events", "targets",
"sqlite": {figure: median, ..., "met": {...}, "runs": [...]}, "postgresql":
{...}}``. The exit code is 0 when the run completed, target met or not, and 1
when it could not complete.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    run_async,
    with_verdicts,
)
from _load import build_request, run_load
from charter.catalog import Project, load_project
from charter.catalog.model import Quota, Tier
from charter.connectors import TargetRequest, TargetResponse
from charter.delivery.guard import Resilience, resilience_for
from charter.processes import HubProcess
from charter.sim import SimProcess, spawn
from charter.store.migrate import upgrade
from charter.store.resilience import ResilienceStore
from charter.store.sql import create_store_engine

BATCH = 100
CONNECTIONS = 4
STALL_TIMEOUT_S = 60.0
QUICK_EVENTS = 2_000
FULL_EVENTS = 10_000
QUICK_RUNS = 2
FULL_RUNS = 3
# The in-process measurement of the middleware alone: calls per pass, passes, concurrency.
MICRO_CALLS = 20_000
MICRO_PASSES = 7
MICRO_CONCURRENCY = 64

VARIANTS = {
    "on": "quota: {rate_per_s: 100000, burst: 2000, concurrency: 64}\n",
    "off": "breaker: {enabled: false}\n",
}
TARGETS = [Target("overhead_pct", False, 10.0), Target("cost_pct", False, 10.0)]
FIGURES = [
    Figure("on_eps", "delivered, quota + breaker on", "events/s"),
    Figure("off_eps", "delivered, middleware off", "events/s"),
    Figure("overhead_pct", "overhead (1 - on/off)", "%", 1),
    Figure("middleware_us", "middleware alone, per call", "µs", 1),
    Figure("cost_pct", "middleware / delivery time off", "%", 1),
]


def project_variant(folder: Path, variant: str) -> Path:
    project = copy_starter(folder / f"project-{variant}")
    erp = project / "systems" / "erp.yaml"
    text = erp.read_text()
    erp.write_text(text[: text.index("quota:")] + VARIANTS[variant])
    return project


def deal_bodies(run: str, count: int) -> list[bytes]:
    import orjson

    def deal(n: int) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": f"res-{run}-{n}",
            "source": "crm.bench",
            "type": "deal.closed",
            "data": {
                "id": f"D-{n:06d}",
                "account": {"id": f"A-{n % 500:05d}", "name": "Account"},
                "amount": 100.0,
                "currency": "EUR",
                "stage": "closed_won",
            },
        }

    return [
        orjson.dumps([deal(n) for n in range(start, min(start + BATCH, count))])
        for start in range(0, count, BATCH)
    ]


def delivered_eps(project: Path, url: str, noop: SimProcess, events: int, run: str) -> float:
    hub = HubProcess(project, database=url, env={"CHARTER_ERP_URL": noop.url}).start()
    try:
        headers = {"content-type": "application/cloudevents-batch+json"}
        requests = [
            build_request("POST", "127.0.0.1", hub.port, "/v1/systems/crm/events", body, headers)
            for body in deal_bodies(run, events)
        ]
        started = time.perf_counter()
        result = run_async(run_load("127.0.0.1", hub.port, requests, connections=CONNECTIONS))
        refused = {s: n for s, n in result.statuses.items() if s != 202}
        if refused:
            raise BenchFailed(f"the hub refused requests {refused}: {result.failures}")
        moved, last = time.monotonic(), -1
        while True:
            counts = hub.stats()["deliveries"]
            done = time.perf_counter()
            if counts["dead"]:
                raise BenchFailed(f"{counts['dead']} deliveries went dead")
            if counts["pending"] == 0 and counts["delivered"] == events:
                break
            if counts["delivered"] != last:
                last, moved = counts["delivered"], time.monotonic()
            elif time.monotonic() - moved > STALL_TIMEOUT_S:
                raise BenchFailed(f"deliveries stalled at {counts}\n{hub.log_tail()}")
            time.sleep(0.02)
        return events / (done - started)
    except BaseException:
        err.print(hub.log_tail())
        raise
    finally:
        hub.close()


class NoOp:
    """A connector that answers at once: what remains is the guard's own cost."""

    async def call(self, request: TargetRequest) -> TargetResponse:
        return TargetResponse(201, b"{}")

    async def aclose(self) -> None:
        pass


async def _per_call_us(connector: Any, calls: int) -> float:
    request = TargetRequest(
        "POST", "/orders", b"{}", "bench", tier=Tier.OPERATIONAL, flow="deal-to-erp-order"
    )
    started = time.perf_counter()
    for _ in range(calls // MICRO_CONCURRENCY):
        await asyncio.gather(*(connector.call(request) for _ in range(MICRO_CONCURRENCY)))
    return (time.perf_counter() - started) / calls * 1e6


async def _middleware_us(project: Project, url: str) -> float:
    engine = create_store_engine(url)
    try:
        upgrade(engine)
        store = ResilienceStore(engine)
        resilience: Resilience = resilience_for(
            project, store, "bench", shared_rows=store.is_postgres
        )
        guarded = resilience.guard({"erp": NoOp()})["erp"]
        bare = NoOp()
        await _per_call_us(guarded, MICRO_CONCURRENCY * 10)  # warm up: lease, first sync
        added = []
        for _ in range(MICRO_PASSES):
            plain = await _per_call_us(bare, MICRO_CALLS)
            added.append(await _per_call_us(guarded, MICRO_CALLS) - plain)
        await resilience.flush()
        return statistics.median(added)
    finally:
        engine.dispose()


def middleware_us(kind: str, folder: Path, project: Path) -> float:
    """What the guard adds per call, measured in this process (see the module docstring)."""
    loaded = load_project(project)
    erp = loaded.systems["erp"]
    # A budget that grants at once: the cost of taking a token, not a wait for one.
    unlimited = Quota(rate_per_s=1e9, burst=1_000_000, concurrency=MICRO_CONCURRENCY)
    loaded.systems["erp"] = erp.model_copy(update={"quota": unlimited})
    progress(f"[bold]{kind}[/]: middleware alone, {MICRO_PASSES} x {MICRO_CALLS:,} calls")
    with fresh_database(kind, folder) as url:
        return run_async(_middleware_us(loaded, url))


def measure(
    kind: str, folder: Path, projects: dict[str, Path], noop: SimProcess, events: int, n: int
) -> dict[str, float]:
    figures: dict[str, float] = {}
    # Alternate which variant goes first, so that drift over the run favours neither.
    order = ("on", "off") if n % 2 else ("off", "on")
    for variant in order:
        progress(f"[bold]{kind}[/]: {events:,} events, middleware {variant}")
        with fresh_database(kind, folder) as url:
            figures[f"{variant}_eps"] = delivered_eps(
                projects[variant], url, noop, events, f"{kind}-{variant}-{n}"
            )
    figures["overhead_pct"] = (1 - figures["on_eps"] / figures["off_eps"]) * 100
    figures["middleware_us"] = middleware_us(kind, folder, projects["on"])
    figures["cost_pct"] = figures["middleware_us"] * figures["off_eps"] / 1e6 * 100
    return figures


def summarise(kind: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    medians = {f.key: statistics.median(run[f.key] for run in runs) for f in FIGURES}
    # The ratios of the medians, not the medians of the ratios: one figure each.
    medians["overhead_pct"] = (1 - medians["on_eps"] / medians["off_eps"]) * 100
    medians["cost_pct"] = medians["middleware_us"] * medians["off_eps"] / 1e6 * 100
    return with_verdicts(kind, TARGETS, medians, runs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--events", type=positive, help="events per measurement")
    parser.add_argument("--runs", type=positive, help="repeat and report medians")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    args = parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    runs = args.runs or (QUICK_RUNS if args.quick else FULL_RUNS)
    kinds = kinds_of(args)
    if postgres_missing(kinds):
        return 1
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="charter-bench-") as temp:
            folder = Path(temp)
            projects = {variant: project_variant(folder, variant) for variant in VARIANTS}
            with spawn("noop") as noop:
                for number in range(1, runs + 1):
                    progress(f"run {number} of {runs}")
                    for kind in kinds:
                        results[kind].append(measure(kind, folder, projects, noop, events, number))
    except RUN_FAILURES as exc:
        err.print(f"[red]bench failed:[/] {exc}")
        return 1
    summaries = {kind: summarise(kind, kind_runs) for kind, kind_runs in results.items()}
    for kind, summary in summaries.items():
        title = f"Resilience middleware on {kind} (median of {runs} runs)"
        out.print(figures_table(title, kind, FIGURES, TARGETS, summary))
    err.print(f"took {time.monotonic() - started:.1f} s")
    report_line({"quick": args.quick, "runs": runs, "events": events}, TARGETS, summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
