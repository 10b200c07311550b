"""Process engine throughput, latency and memory, against DBOS on the same workload.

The workload is a process of three no-op steps. On Charter it runs as a user
runs it: ``charter up`` on SQLite, ``charter server`` plus ``charter worker``
on PostgreSQL, each in a child process on a fresh database, with instances
started through the API. Four variants are measured:

- ``noop-task`` (the headline, the one the targets apply to): three ``task``
  steps, each a registered ``async`` handler that returns ``{}``, committed
  before it runs and again with its result. This is DBOS's workload: three
  no-op steps run in the engine's process, each checkpointed;
- ``noop``: three ``call`` steps, each a POST to the no-op target simulator,
  which answers ``200 {}`` at once, committed before its call and again with
  its result. It adds an HTTP round trip per step to a simulator in another
  process on the same cores, which DBOS's steps do not make (its ratios are
  reported as ``ratio_call_instances`` and ``ratio_call_p99``);
- ``noop`` again with batched starts: the same instances started through
  ``POST /v1/processes/{name}/instances/batch``, 50 per request over 4
  connections, which takes the API's per-request cost off the engine;
- ``noop-transform``: three ``transform`` steps, which the engine runs inside
  the start's own transaction: the engine alone, with no worker involved
  (left out by ``--quick`` unless ``--steps transform`` or ``all``).

DBOS 3.4.0 (a bench-only dependency: ``pip install -r bench/requirements.txt``)
runs a workflow of three no-op ``@DBOS.step`` functions in its own child
process (``bench/_dbos_workload.py``) on a fresh database of the same kind.

For each engine and database it measures:

- ``instances_per_s`` and ``steps_per_s``: instances (2,000; 300 with
  ``--quick``) started as fast as the engine takes them, ÷ the time from the
  first start until all of them have completed. On Charter the starts are
  ``POST /v1/processes/{name}/instances`` over 64 keep-alive connections and
  completion is ``GET /v1/processes`` counting them all ``completed``; on
  DBOS they are ``DBOS.start_workflow`` in a loop and completion is every
  handle's ``get_result``;
- ``starts_per_s``: the same instances ÷ the time until the last start was
  accepted (201 on Charter, a handle on DBOS);
- ``p50_ms`` / ``p99_ms``: 200 instances (50 with ``--quick``) one after
  another, each from its start until it is known completed: on Charter, the
  start and then ``GET /v1/processes/instances/{id}?wait=60s`` on the same
  connection, which the hub answers once the instance has ended; on DBOS,
  ``start_workflow`` and the handle's ``get_result``;
- ``cpu_pct``: CPU time of the engine's processes during the throughput phase
  ÷ its wall time, in % of one core;
- ``peak_rss_mb``: the largest summed resident set of the engine's processes
  (both ``charter server`` and ``charter worker`` on PostgreSQL), sampled
  every 50 ms through both phases;
- ``ratio_instances`` and ``ratio_p99``: Charter's median (task steps) ÷
  DBOS's. The targets: instances/s at least 40 times DBOS's on SQLite and 20
  times on PostgreSQL, and a p99 no worse than DBOS's (a ratio of at most 1).

Before the clock starts, each engine runs one instance to completion (which
also proves the set-up works). The latency phase runs on the same processes
and database, after the throughput phase.

Usage::

    python bench/engine.py [--quick] [--db sqlite|postgresql|both]
                           [--steps task|call|batch|transform|all] [--instances N]
                           [--sequential N] [--runs R]

Progress goes to stderr; stdout carries, per database, a table of task steps
against DBOS with the targets, and one of Charter's other processes that ran
(a row each, medians and ratios to DBOS), and, as its last line, one JSON
object: ``{"quick", "runs", "sizes", "dbos_version", "targets", "sqlite":
{"charter_task": {figure: median}, "charter": {...}, "charter_batch": {...},
"charter_transform": {...}, "dbos": {...},
"ratio_instances", "ratio_p99", "ratio_call_instances", "ratio_call_p99",
"ratio_batch_instances", "ratio_transform_instances", "ratio_transform_p99",
"met": {target: bool}, "runs": [...]}, "postgresql": {...}}``. The exit code
is 0 when the run completed, targets met or not; 1 when it could not
(instances stuck or failed, counts that disagree, a process that failed); 2
when DBOS is not installed. ``CHARTER_BENCH_PG`` overrides the PostgreSQL
admin URL (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from _harness import (
    RUN_FAILURES,
    BenchFailed,
    RssSampler,
    Target,
    bench_parser,
    check_postgres,
    copy_starter,
    err,
    exit_on_sigterm,
    fresh_database,
    kinds_of,
    out,
    positive,
    progress,
    run_async,
)
from _load import build_request, percentile, read_response, run_load
from charter.processes import HubProcess
from charter.sim import SimProcess, spawn

HOST = "127.0.0.1"
STEPS = 3
START_CONNECTIONS = 64
# Instances per request, and connections, when starts go to the batch route.
START_BATCH = 50
BATCH_CONNECTIONS = 4
POLL_S = 0.02
STALL_TIMEOUT_S = 60.0
DBOS_VERSION = "3.4.0"
DBOS_WORKLOAD = Path(__file__).with_name("_dbos_workload.py")
JSON_TYPE = {"content-type": "application/json"}

# Charter's two processes, by the kind of their steps, and the engines in a table's columns.
PROCESSES = {"call": "noop", "batch": "noop", "task": "noop-task", "transform": "noop-transform"}
ENGINES = {
    "charter_task": "Charter, task steps",
    "charter": "Charter, call steps",
    "charter_batch": "Charter, call steps, batched starts",
    "charter_transform": "Charter, transform steps",
    "dbos": f"DBOS {DBOS_VERSION}",
}

NOOP_SYSTEM = """\
kind: System
name: noop
role: record
owner: integration-platform
description: Answers every call 200 {} at once (charter sim run noop).
connector: {base_url: "${CHARTER_NOOP_URL}"}
"""

NOOP_PROCESS = """\
kind: Process
name: noop
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
description: Three calls that do nothing; each is committed before and after.
steps:
  - id: one
    call: {system: noop, path: /one}
  - id: two
    call: {system: noop, path: /two}
  - id: three
    call: {system: noop, path: /three}
"""

TASK_PROCESS = """\
kind: Process
name: noop-task
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
description: Three in-process task steps that do nothing; each is committed before and after.
steps:
  - id: one
    task: {handler: noop}
  - id: two
    task: {handler: noop}
  - id: three
    task: {handler: noop}
"""

TASKS_MODULE = """\
async def noop(data, context):
    return {}


HANDLERS = {"noop": noop}
"""

TRANSFORM_PROCESS = """\
kind: Process
name: noop-transform
version: 1
owner: integration-platform
tier: informational
slo: {objective: 99.0, latency: 1m}
description: Three transforms, which run inside the start's own transaction.
steps:
  - id: one
    transform: {one: {const: 1}}
  - id: two
    transform: {two: {const: 2}}
  - id: three
    transform: {three: {const: 3}}
"""

# Statuses an instance of these processes must never reach.
FAILED_STATUSES = ("failed", "compensating", "compensated", "cancelled", "terminated")


@dataclass(frozen=True)
class Sizes:
    instances: int
    sequential: int


# Quick stays under a minute for both databases and both engines, transform steps left out: DBOS on
# SQLite runs 13 to 76 workflows/s on the machine in docs/performance.md, as fast as the disk
# syncs at the moment, so 300 of them take up to 25 s.
QUICK = Sizes(instances=300, sequential=50)
FULL = Sizes(instances=2_000, sequential=200)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    digits: int = 0
    # The key of the ratio to DBOS that has a target, if any.
    ratio: str | None = None


FIGURES = [
    Figure("instances_per_s", "instances completed", "/s", ratio="ratio_instances"),
    Figure("steps_per_s", "steps completed", "/s"),
    Figure("starts_per_s", "starts accepted", "/s"),
    Figure("p50_ms", "start to completion p50", "ms", 1),
    Figure("p99_ms", "start to completion p99", "ms", 1, ratio="ratio_p99"),
    Figure("cpu_pct", "CPU, throughput phase", "% of a core"),
    Figure("peak_rss_mb", "peak RSS", "MiB", 1),
]

TARGETS = [
    Target("ratio_instances", True, 40, kinds=("sqlite",)),
    Target("ratio_instances", True, 20, kinds=("postgresql",)),
    Target("ratio_p99", False, 1.0),
]


def targets_for(kind: str) -> dict[str, Target]:
    return {t.key: t for t in TARGETS if kind in t.kinds}


# Charter


def write_project(folder: Path) -> Path:
    """The starter project plus the no-op system and the two no-op processes."""
    project = copy_starter(folder)
    (project / "systems" / "noop.yaml").write_text(NOOP_SYSTEM)
    processes = project / "processes"
    processes.mkdir(exist_ok=True)
    (processes / "noop.yaml").write_text(NOOP_PROCESS)
    (processes / "noop-transform.yaml").write_text(TRANSFORM_PROCESS)
    (processes / "noop-task.yaml").write_text(TASK_PROCESS)
    (project / "tasks.py").write_text(TASKS_MODULE)
    return project


@contextlib.contextmanager
def charter(kind: str, project: Path, url: str, noop: SimProcess) -> Iterator[list[HubProcess]]:
    """Charter's processes on ``url``, the one serving the API first.

    ``charter up`` on SQLite (one process per file); ``charter server`` and
    ``charter worker`` on PostgreSQL.
    """
    env = {"CHARTER_NOOP_URL": noop.url}
    commands = ["up"] if kind == "sqlite" else ["server", "worker"]
    with contextlib.ExitStack() as stack:
        hubs: list[HubProcess] = []
        try:
            for command in commands:
                hub = HubProcess(project, command=command, database=url, env=env)
                stack.callback(hub.close)
                hubs.append(hub.start())
            yield hubs
        except BaseException:
            for hub in hubs:
                err.print(f"[bold]charter {hub.command}[/] log:\n{hub.log_tail()}")
            raise


def start_request(port: int, process: str, key: str, n: int) -> bytes:
    body = orjson.dumps({"business_key": key, "input": {"n": n}})
    return build_request("POST", HOST, port, f"/v1/processes/{process}/instances", body, JSON_TYPE)


def start_batch_request(port: int, process: str, keys: list[tuple[str, int]]) -> bytes:
    body = orjson.dumps({"instances": [{"business_key": k, "input": {"n": n}} for k, n in keys]})
    path = f"/v1/processes/{process}/instances/batch"
    return build_request("POST", HOST, port, path, body, JSON_TYPE)


def instance_counts(api: HubProcess) -> dict[str, int]:
    response = api.client.get("/v1/processes")
    response.raise_for_status()
    counts: dict[str, int] = response.json()["instances"]
    return counts


def wait_completed(api: HubProcess, expected: int) -> float:
    """Wait until ``GET /v1/processes`` counts ``expected`` instances, all completed; when.

    Fails when an instance failed, when there are more instances than
    expected, or when the completed count does not move for a minute.
    """
    last, moved = -1, time.monotonic()
    while True:
        counts = instance_counts(api)
        done = time.perf_counter()
        completed = counts.get("completed", 0)
        failed = {status: counts[status] for status in FAILED_STATUSES if counts.get(status)}
        if failed:
            raise BenchFailed(f"instances ended {failed}: {counts}")
        if sum(counts.values()) > expected:
            raise BenchFailed(f"the hub holds more instances than were started: {counts}")
        if completed == expected:
            return done
        if completed != last:
            last, moved = completed, time.monotonic()
        elif time.monotonic() - moved > STALL_TIMEOUT_S:
            raise BenchFailed(
                f"{completed} of {expected} instances completed and none more for "
                f"{STALL_TIMEOUT_S:g} s: {counts}"
            )
        time.sleep(POLL_S)


async def sequential_latencies(port: int, process: str, run: str, count: int) -> list[float]:
    """Start ``count`` instances one at a time on one connection, each timed until the hub
    answers it completed: the start request, then ``GET /v1/processes/instances/{id}`` with
    ``wait``, which the hub answers when the instance has ended (as DBOS's ``get_result``)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    latencies: list[float] = []
    try:
        for n in range(count):
            begin = time.perf_counter()
            writer.write(start_request(port, process, f"{run}-seq-{n}", n))
            status, body = await read_response(reader)
            if status != 201:
                raise BenchFailed(f"a start was answered {status}: {body[:300]!r}")
            ident = orjson.loads(body)["id"]
            wait = f"/v1/processes/instances/{ident}?wait={STALL_TIMEOUT_S:g}s"
            writer.write(build_request("GET", HOST, port, wait))
            status, body = await read_response(reader)
            if status != 200:
                raise BenchFailed(f"GET instance {ident} was answered {status}: {body[:300]!r}")
            state = orjson.loads(body)["status"]
            if state != "completed":
                raise BenchFailed(
                    f"instance {ident} is {state} after waiting {STALL_TIMEOUT_S:g} s: "
                    f"{body[:500]!r}"
                )
            latencies.append(time.perf_counter() - begin)
    finally:
        writer.close()
    return latencies


def measure_charter(
    kind: str, project: Path, url: str, noop: SimProcess, sizes: Sizes, steps: str
) -> dict[str, float]:
    """Throughput, then latency, of one no-op process on one Charter deployment."""
    process = PROCESSES[steps]
    run = uuid.uuid4().hex[:8]
    calls = STEPS if steps in ("call", "batch") else 0
    with charter(kind, project, url, noop) as hubs, RssSampler(*(h.pid for h in hubs)) as rss:
        api = hubs[0]
        keys = [(f"{run}-{n}", n) for n in range(sizes.instances)]
        if steps == "batch":
            requests = [
                start_batch_request(api.port, process, keys[at : at + START_BATCH])
                for at in range(0, len(keys), START_BATCH)
            ]
            connections = min(BATCH_CONNECTIONS, len(requests))
            how = f"in batches of {START_BATCH} over {connections} connections"
        else:
            requests = [start_request(api.port, process, key, n) for key, n in keys]
            connections = START_CONNECTIONS
            how = f"over {connections} connections"
        run_async(sequential_latencies(api.port, process, f"{run}-warm-up", 1))
        noop_before = noop.report()["received"]
        progress(f"  {sizes.instances:,} instances {how}")
        cpu_before = rss.cpu_seconds()
        result = run_async(run_load(HOST, api.port, requests, connections=connections, expect=201))
        refused = {status: n for status, n in result.statuses.items() if status != 201}
        if refused:
            raise BenchFailed(f"starts were refused {refused}: {result.failures}")
        done = wait_completed(api, 1 + sizes.instances)
        cpu = rss.cpu_seconds() - cpu_before
        elapsed = done - result.started
        received = noop.report()["received"] - noop_before
        if received < calls * sizes.instances:
            raise BenchFailed(
                f"the instances completed, but the no-op target got {received} calls "
                f"< {calls * sizes.instances}"
            )
        progress(f"  started in {result.elapsed:.1f} s, all completed after {elapsed:.1f} s")
        progress(f"  {sizes.sequential} instances one at a time")
        latencies = run_async(sequential_latencies(api.port, process, run, sizes.sequential))
    return {
        "instances_per_s": sizes.instances / elapsed,
        "steps_per_s": STEPS * sizes.instances / elapsed,
        "starts_per_s": sizes.instances / result.elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpu_pct": 100 * cpu / elapsed,
        "peak_rss_mb": rss.peak / 2**20,
    }


# DBOS


def measure_dbos(url: str, sizes: Sizes) -> dict[str, float]:
    """The same workload on DBOS in a child process (``bench/_dbos_workload.py``)."""
    progress(f"  {sizes.instances:,} workflows, then {sizes.sequential} one at a time")
    args = [sys.executable, str(DBOS_WORKLOAD), url, str(sizes.instances), str(sizes.sequential)]
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
        try:
            with RssSampler(child.pid) as rss:
                stdout, _ = child.communicate(timeout=60 + sizes.instances)
        except BaseException:
            child.kill()
            child.wait()
            raise
        if child.returncode != 0 or not stdout.strip():
            log.seek(0)
            tail = "\n".join(log.read().decode("utf-8", "replace").splitlines()[-30:])
            raise BenchFailed(f"the DBOS workload exited {child.returncode}:\n{tail}")
    report: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    latencies: list[float] = report["latencies"]
    instances_per_s = float(report["instances_per_s"])
    progress(f"  {instances_per_s:,.1f} workflows/s")
    return {
        "instances_per_s": instances_per_s,
        "steps_per_s": STEPS * instances_per_s,
        "starts_per_s": float(report["starts_per_s"]),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpu_pct": float(report["cpu_pct"]),
        "peak_rss_mb": rss.peak / 2**20,
    }


def measure(
    kind: str, folder: Path, project: Path, noop: SimProcess, sizes: Sizes, steps: list[str]
) -> dict[str, dict[str, float]]:
    """Every engine on ``kind``, each on its own fresh database."""
    figures: dict[str, dict[str, float]] = {}
    for variant in steps:
        engine = {"call": "charter", "batch": "charter_batch", "task": "charter_task"}.get(
            variant, "charter_transform"
        )
        progress(f"[bold]{kind}[/]: {ENGINES[engine]}")
        with fresh_database(kind, folder) as url:
            figures[engine] = measure_charter(kind, project, url, noop, sizes, variant)
    progress(f"[bold]{kind}[/]: {ENGINES['dbos']}")
    with fresh_database(kind, folder) as url:
        figures["dbos"] = measure_dbos(url, sizes)
    return figures


# Report


def ratios(run: dict[str, dict[str, float]]) -> dict[str, float]:
    dbos = run["dbos"]
    found: dict[str, float] = {}
    if "charter_task" in run:
        found["ratio_instances"] = run["charter_task"]["instances_per_s"] / dbos["instances_per_s"]
        found["ratio_p99"] = run["charter_task"]["p99_ms"] / dbos["p99_ms"]
    if "charter" in run:
        found["ratio_call_instances"] = run["charter"]["instances_per_s"] / dbos["instances_per_s"]
        found["ratio_call_p99"] = run["charter"]["p99_ms"] / dbos["p99_ms"]
    if "charter_batch" in run:
        found["ratio_batch_instances"] = (
            run["charter_batch"]["instances_per_s"] / dbos["instances_per_s"]
        )
    if "charter_transform" in run:
        found["ratio_transform_instances"] = (
            run["charter_transform"]["instances_per_s"] / dbos["instances_per_s"]
        )
        found["ratio_transform_p99"] = run["charter_transform"]["p99_ms"] / dbos["p99_ms"]
    return found


def summarise(kind: str, runs: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians per engine, the ratios of those medians, whether targets are met, every run.

    The ratios are of the medians, not medians of per-run ratios: the engines run one after
    the other, so one run's Charter and DBOS figures do not share the machine's moment anyway.
    """
    medians = {
        engine: {f.key: statistics.median(run[engine][f.key] for run in runs) for f in FIGURES}
        for engine in runs[0]
    }
    summary: dict[str, Any] = {
        engine: {k: round(v, 3) for k, v in figures.items()} for engine, figures in medians.items()
    }
    summary |= {k: round(v, 3) for k, v in ratios(medians).items()}
    summary["met"] = {
        key: target.met(summary[key]) for key, target in targets_for(kind).items() if key in summary
    }
    summary["runs"] = [
        {engine: {k: round(v, 3) for k, v in figures.items()} for engine, figures in run.items()}
        | {k: round(v, 3) for k, v in ratios(run).items()}
        for run in runs
    ]
    return summary


def cell(summary: dict[str, Any], engine: str, figure: Figure) -> str:
    if engine not in summary:
        return ""
    value = summary[engine][figure.key]
    text = f"{value:,.{figure.digits}f}"
    values = [run[engine][figure.key] for run in summary["runs"]]
    if len(values) > 1:
        text += f" ({min(values):,.{figure.digits}f} .. {max(values):,.{figure.digits}f})"
    return text


def table(kind: str, summary: dict[str, Any], runs: int) -> Table:
    """Task steps against DBOS, figure by figure, with the targets."""
    title = f"Process engine on {kind}" + (f" (median of {runs} runs, range)" if runs > 1 else "")
    grid = Table(title=title, title_justify="left")
    grid.add_column("figure")
    grid.add_column("unit")
    engines = [e for e in ("charter_task", "dbos") if e in summary]
    for engine in engines:
        grid.add_column(ENGINES[engine], justify="right")
    grid.add_column("Charter ÷ DBOS", justify="right")
    grid.add_column("target", justify="right")
    grid.add_column("met")
    targets = targets_for(kind)
    for figure in FIGURES:
        cells = [figure.label, figure.unit] + [cell(summary, e, figure) for e in engines]
        if "charter_task" in summary:
            ratio = summary["charter_task"][figure.key] / summary["dbos"][figure.key]
            cells.append(f"{ratio:,.2f}x")
        else:
            cells.append("")
        target = targets.get(figure.ratio) if figure.ratio else None
        if target is None or figure.ratio not in summary["met"]:
            cells += ["", ""]
        else:
            met = summary["met"][figure.ratio]
            cells += [f"{target}x", "[green]yes[/]" if met else "[red]no[/]"]
        grid.add_row(*cells)
    return grid


def variants_table(kind: str, summary: dict[str, Any]) -> Table | None:
    """Charter's other processes, one row each, their medians beside DBOS's; None if none ran."""
    variants = [e for e in ("charter", "charter_batch", "charter_transform") if e in summary]
    if not variants:
        return None
    dbos = summary["dbos"]
    grid = Table(title=f"Other processes on {kind} (medians)", title_justify="left")
    grid.add_column("process")
    for heading in ("instances/s", "÷ DBOS", "p50 ms", "p99 ms", "p99 ÷ DBOS", "CPU %", "RSS MiB"):
        grid.add_column(heading, justify="right")
    for engine in [*variants, "dbos"]:
        figures = summary[engine]
        ratios = engine != "dbos"
        grid.add_row(
            ENGINES[engine],
            f"{figures['instances_per_s']:,.0f}",
            f"{figures['instances_per_s'] / dbos['instances_per_s']:,.2f}x" if ratios else "",
            f"{figures['p50_ms']:,.1f}",
            f"{figures['p99_ms']:,.1f}",
            f"{figures['p99_ms'] / dbos['p99_ms']:,.2f}x" if ratios else "",
            f"{figures['cpu_pct']:,.0f}",
            f"{figures['peak_rss_mb']:,.1f}",
        )
    return grid


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--steps",
        choices=("task", "call", "batch", "transform", "all"),
        help="Charter's process: task steps (the targets' figure), call steps started one per "
        "request, the same started in batches, transform steps, or all (the default; all but "
        "transform with --quick)",
    )
    parser.add_argument("--instances", type=positive, help="instances in the throughput phase")
    parser.add_argument("--sequential", type=positive, help="instances in the latency phase")
    parser.add_argument("--runs", type=positive, default=1, help="repeat and report medians")
    return parser.parse_args(argv)


def dbos_version() -> str | None:
    """The installed DBOS version, or None when it is not installed."""
    if importlib.util.find_spec("dbos") is None:
        return None
    return importlib.metadata.version("dbos")


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        instances=args.instances or base.instances,
        sequential=args.sequential or base.sequential,
    )
    kinds = kinds_of(args)
    chosen = args.steps or ("quick" if args.quick else "all")
    steps = {"all": ["task", "call", "batch", "transform"], "quick": ["task", "call", "batch"]}.get(
        chosen, [chosen]
    )
    version = dbos_version()
    if version is None:
        err.print(
            f"[red]bench failed:[/] DBOS is not installed: pip install dbos=={DBOS_VERSION} "
            "(bench-only; pip install -r bench/requirements.txt)",
            soft_wrap=True,
        )
        return 2
    if version != DBOS_VERSION:
        err.print(
            f"[yellow]note:[/] DBOS {version} is installed; the figures are for {DBOS_VERSION}"
        )
    if "postgresql" in kinds and (problem := check_postgres()) is not None:
        err.print(f"[red]bench failed:[/] {problem}")
        return 1
    results: dict[str, list[dict[str, dict[str, float]]]] = {kind: [] for kind in kinds}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="charter-bench-") as temp:
            folder = Path(temp)
            project = write_project(folder / "project")
            with spawn("noop") as noop:
                for number in range(1, args.runs + 1):
                    if args.runs > 1:
                        progress(f"run {number} of {args.runs}")
                    for kind in kinds:
                        results[kind].append(measure(kind, folder, project, noop, sizes, steps))
    except RUN_FAILURES as exc:
        err.print(f"[red]bench failed:[/] {exc}")
        return 1
    summaries = {kind: summarise(kind, runs) for kind, runs in results.items()}
    for kind, summary in summaries.items():
        out.print(table(kind, summary, args.runs))
        if (variants := variants_table(kind, summary)) is not None:
            out.print(variants)
    err.print(f"took {time.monotonic() - started:.1f} s")
    report = {
        "quick": args.quick,
        "runs": args.runs,
        "sizes": {
            "instances": sizes.instances,
            "sequential": sizes.sequential,
            "steps_per_instance": STEPS,
            "start_connections": START_CONNECTIONS,
        },
        "dbos_version": version,
        "targets": {
            key: {kind: str(t) for t in TARGETS if t.key == key for kind in t.kinds}
            for key in dict.fromkeys(t.key for t in TARGETS)
        },
        **summaries,
    }
    sys.stdout.flush()
    print(json.dumps(report, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
