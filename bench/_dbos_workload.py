"""The engine benchmark's workload on DBOS, run by ``bench/engine.py`` in a child process.

A workflow of three no-op steps. After one workflow to warm up, ``instances``
workflows are started with ``DBOS.start_workflow`` in a loop as fast as it
returns, and timed until every handle has its result; then ``sequential``
workflows are started one at a time, each timed from ``start_workflow`` to its
``get_result``. DBOS runs with its defaults on the system database it is given
(SQLite or PostgreSQL).

Usage: ``python bench/_dbos_workload.py URL INSTANCES SEQUENTIAL``. Errors go
to stderr; the figures go to stdout as one JSON object on the last line.
The exit code is 1 when a workflow did not return what it was given.
"""

from __future__ import annotations

import json
import sys
import time

from dbos import DBOS, DBOSConfig

STEPS = 3


@DBOS.step()
def noop_step() -> None:
    """A step that does nothing; DBOS still checkpoints its (empty) output."""


@DBOS.workflow()
def noop_workflow(n: int) -> int:
    for _ in range(STEPS):
        noop_step()
    return n


def main(argv: list[str]) -> int:
    url, instances, sequential = argv[0], int(argv[1]), int(argv[2])
    # Defaults throughout, except that DBOS's INFO lines at launch would crowd the progress.
    config: DBOSConfig = {
        "name": "charter-bench",
        "system_database_url": url,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        # One workflow first, so that connections and threads exist before the clock starts.
        noop_workflow(-1)
        cpu_before, started = time.process_time(), time.perf_counter()
        handles = [DBOS.start_workflow(noop_workflow, n) for n in range(instances)]
        accepted = time.perf_counter()
        results = [handle.get_result() for handle in handles]
        done = time.perf_counter()
        cpu = time.process_time() - cpu_before
        if results != list(range(instances)):
            print("DBOS returned results that differ from the workflows' inputs", file=sys.stderr)
            return 1
        latencies = []
        for n in range(instances, instances + sequential):
            begin = time.perf_counter()
            if DBOS.start_workflow(noop_workflow, n).get_result() != n:
                print(f"DBOS workflow {n} returned another value", file=sys.stderr)
                return 1
            latencies.append(time.perf_counter() - begin)
    finally:
        DBOS.destroy()
    figures = {
        "starts_per_s": instances / (accepted - started),
        "instances_per_s": instances / (done - started),
        "cpu_pct": 100 * cpu / (done - started),
        "latencies": latencies,
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
