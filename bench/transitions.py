"""The process engine's own work per instance, without HTTP, threads or the event loop.

On a fresh SQLite database, in this process, for the three-task-step process of
``bench/engine.py`` (``noop-task``), each run:

1. plans ``--instances`` starts (``Planner.new_instance``: the state machine's
   first transition and its write) and commits them in groups of 500
   (``SqlProcessStore.write``), leased as `charter up` leases what it starts;
2. three times, applies each instance's task result (``machine.advance``, the
   state handed over as the runner hands it), plans the write of that
   transition (``Planner.write``) and commits the group, as a runner's tick does.

It prints the CPU time per instance of each phase (``time.process_time``),
medians of ``--runs``, and checks that every instance ended completed. CPU
time on a shared machine swings by tens of percent from one minute to the
next, so compare versions by instructions instead, which are the same from
one run to the next::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \\
        python bench/transitions.py --instances 300 --runs 1

The runs are made inside ``functools.reduce``, so that ``--toggle-collect``
counts them and not the interpreter's start-up; divide ``Collected`` by the
instances. The last line of stdout is one JSON object: ``{"instances",
"runs", "sqlite": {figure: median µs per instance}}``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from _harness import (
    RUN_FAILURES,
    BenchFailed,
    Figure,
    err,
    exit_on_sigterm,
    out,
    positive,
    progress,
    report_line,
)
from charter.engine import machine
from charter.engine.messages import RunTask, StepSucceeded
from charter.engine.persist import wait_rows
from charter.runtime import Hub
from charter.serve import settle_heap
from charter.store.processes import InstanceWrite, SqlProcessStore
from engine import TASK_PROCESS, write_project

PROCESS = "noop-task"
STEPS = TASK_PROCESS.count("task: {handler: noop}")
GROUP = 500
WORKER = "bench-worker"
FIGURES = [
    Figure("start_plan_us", "plan the starts", "µs/instance", 1),
    Figure("start_write_us", "commit the starts", "µs/instance", 1),
    Figure("advance_us", f"apply {STEPS} results", "µs/instance", 1),
    Figure("plan_us", f"plan {STEPS} writes", "µs/instance", 1),
    Figure("write_us", f"commit {STEPS} writes", "µs/instance", 1),
    Figure("total_us", "in all", "µs/instance", 1),
]


def groups(items: list[InstanceWrite]) -> list[list[InstanceWrite]]:
    return [items[at : at + GROUP] for at in range(0, len(items), GROUP)]


def commit(store: SqlProcessStore, group: list[InstanceWrite], what: str) -> float:
    """Commit ``group`` in one write, as a runner's group commit does; the CPU s it took."""
    t0 = time.process_time()
    outcomes = store.write(WORKER, group)
    spent = time.process_time() - t0
    if any(o.outcome != "ok" for o in outcomes):
        raise BenchFailed(f"{what} was not written: {outcomes[:3]}")
    return spent


def run_once(hub: Hub, tag: str, instances: int) -> dict[str, float]:
    """One run of ``instances`` instances from start to completion; CPU s per phase."""
    planner, store = hub.processes.planner, hub.processes.store
    spent = {f.key: 0.0 for f in FIGURES if f.key != "total_us"}
    started: list[InstanceWrite] = []
    for n in range(0, instances, GROUP):
        t0 = time.process_time()
        group = [
            planner.new_instance(PROCESS, f"{tag}-{k}", {"n": k}, time.time(), keep_lease=True)[0]
            for k in range(n, min(n + GROUP, instances))
        ]
        spent["start_plan_us"] += time.process_time() - t0
        spent["start_write_us"] += commit(store, group, "a start")
        started += group
    writes = started
    for _ in range(STEPS):
        following: list[InstanceWrite] = []
        for group in groups(writes):
            t0 = time.process_time()
            applied = []
            for write in group:
                record, (task,) = write.instance, write.effects
                assert isinstance(task, RunTask)
                now = time.time()
                waits = wait_rows(record.state)
                result = StepSucceeded(task.step, task.attempt, {}, now)
                definition = planner.definitions.get(record.process, record.version)
                transition = machine.advance(definition, record.state, result, owned=True)
                applied.append((record, transition, waits, now))
            t1 = time.process_time()
            planned = [
                planner.write(rec, tr, now, keep_lease=True, waits_before=waits)
                for rec, tr, waits, now in applied
            ]
            spent["advance_us"] += t1 - t0
            spent["plan_us"] += time.process_time() - t1
            spent["write_us"] += commit(store, planned, "a transition")
            following += planned
        writes = following
    unfinished = [w.instance.id for w in writes if w.instance.status != "completed"]
    if unfinished:
        raise BenchFailed(f"{len(unfinished)} instances did not complete, e.g. {unfinished[0]}")
    figures = {key: seconds / instances * 1e6 for key, seconds in spent.items()}
    figures["total_us"] = sum(figures.values())
    return figures


def table(summary: dict[str, float], runs: list[dict[str, float]]) -> Table:
    grid = Table(title=f"Engine work per instance on SQLite, median of {len(runs)} runs")
    grid.add_column("phase")
    grid.add_column("CPU", justify="right")
    grid.add_column("runs", justify="right")
    for figure in FIGURES:
        values = [run[figure.key] for run in runs]
        grid.add_row(
            figure.label,
            f"{summary[figure.key]:,.{figure.digits}f} {figure.unit}",
            f"{min(values):,.0f} .. {max(values):,.0f}",
        )
    return grid


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=positive, default=2_000)
    parser.add_argument("--runs", type=positive, default=5)
    args = parser.parse_args(argv)
    # The project's no-op system needs an address; nothing is called.
    os.environ.setdefault("CHARTER_NOOP_URL", "http://127.0.0.1:9")
    try:
        with tempfile.TemporaryDirectory(prefix="charter-bench-") as temp:
            project = write_project(Path(temp))
            hub = Hub.open(project, database=f"sqlite:///{temp}/charter.db")
            try:
                settle_heap()  # as `charter up` readies its heap
                progress(f"{args.runs} runs of {args.instances:,} instances")
                runs: list[dict[str, float]] = functools.reduce(
                    lambda done, n: [*done, run_once(hub, f"run{n}", args.instances)],
                    range(args.runs),
                    [],
                )
            finally:
                hub.close()
    except RUN_FAILURES as exc:
        err.print(f"[red]bench failed:[/] {exc}")
        return 1
    summary = {f.key: statistics.median(run[f.key] for run in runs) for f in FIGURES}
    out.print(table(summary, runs))
    report_line({"instances": args.instances, "runs": args.runs}, [], {"sqlite": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
