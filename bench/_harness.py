"""What the benchmarks share: consoles, fresh databases, the starter project, resource sampling,
figure tables and the JSON report line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import psutil
import psycopg
import uvloop
from psycopg import sql
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from _load import ProtocolError

PG_ADMIN = os.environ.get("CHARTER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
KINDS = ("sqlite", "postgresql")
SAMPLE_INTERVAL_S = 0.05

T = TypeVar("T")
# Wide enough for the tables when stdout is a file or a pipe (Rich would assume 80).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False)

STARTED = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the bench started."""
    err.print(f"{time.monotonic() - STARTED:6.1f} s  {message}")


def exit_on_sigterm() -> None:
    """Make SIGTERM end the bench as Ctrl-C does: its ``finally`` blocks and context managers
    run, so the processes it started are stopped and its databases and folders removed
    (Python's default for SIGTERM ends at once, leaving them behind)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class BenchFailed(Exception):
    """The run could not complete; the message says what went wrong."""


# What ends a run with exit code 1 and a message instead of a traceback.
RUN_FAILURES: tuple[type[BaseException], ...] = (
    BenchFailed,
    ProtocolError,
    RuntimeError,
    OSError,
    EOFError,
    psycopg.Error,
    psutil.Error,
    httpx.HTTPError,
)


@dataclass(frozen=True)
class Target:
    """A figure's target on some database kinds: at least or at most ``value``."""

    key: str
    at_least: bool
    value: float
    kinds: tuple[str, ...] = KINDS

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.at_least else measured <= self.value

    def __str__(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.value:,g}"


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


class RssSampler:
    """Samples the summed resident set of some processes every 50 ms in a thread; keeps the peak.

    Sampling stops when any of the processes is gone.
    """

    def __init__(self, *pids: int) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, sum(p.memory_info().rss for p in self.processes))
            except psutil.Error:
                return
            self._stop.wait(SAMPLE_INTERVAL_S)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the processes so far."""
        total = 0.0
        for process in self.processes:
            times = process.cpu_times()
            total += times.user + times.system
        return total

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def check_postgres() -> str | None:
    """None when PostgreSQL answers at the admin URL, else what to tell the user."""
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=5).close()
    except psycopg.Error as exc:
        shown = make_url(PG_ADMIN).render_as_string(hide_password=True)
        return (
            f"PostgreSQL does not answer at {shown}: {exc}\n"
            "start it ('make services'), point CHARTER_BENCH_PG at another admin URL, "
            "or run with --db sqlite"
        )
    return None


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of a new, empty database of ``kind``; a PostgreSQL one is dropped afterwards."""
    name = f"charter_bench_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        yield f"sqlite:///{folder / (name + '.db')}"
        return
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def copy_starter(folder: Path) -> Path:
    """The starter project (what ``charter init`` writes) in ``folder``."""
    template = importlib.resources.files("charter") / "templates" / "starter"
    with importlib.resources.as_file(template) as source:
        shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class Figure:
    """One figure a bench reports: its key in the JSON report, its label and unit in the table."""

    key: str
    label: str
    unit: str
    digits: int = 0


def summarise(
    kind: str, figures: Sequence[Figure], targets: Iterable[Target], runs: list[dict[str, float]]
) -> dict[str, Any]:
    """Medians of each figure over ``runs``, whether each target is met, and the runs."""
    medians = {f.key: statistics.median(run[f.key] for run in runs) for f in figures}
    return with_verdicts(kind, targets, medians, runs)


def with_verdicts(
    kind: str,
    targets: Iterable[Target],
    figures: Mapping[str, float],
    runs: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """``figures`` rounded, with ``met`` per target of ``kind`` (and the runs, if several)."""
    met = {t.key: t.met(figures[t.key]) for t in targets if kind in t.kinds}
    summary: dict[str, Any] = {k: round(v, 3) for k, v in figures.items()} | {"met": met}
    if runs is not None:
        summary["runs"] = [{k: round(v, 3) for k, v in run.items()} for run in runs]
    return summary


def figures_table(
    title: str, kind: str, figures: Sequence[Figure], targets: Iterable[Target], summary: Any
) -> Table:
    """The figures of one database kind, with min .. max when there were several runs."""
    runs = summary.get("runs") or []
    spread = len(runs) > 1
    grid = Table(title=title, title_justify="left")
    grid.add_column("figure")
    grid.add_column("value", justify="right")
    grid.add_column("unit")
    if spread:
        grid.add_column("min .. max", justify="right")
    grid.add_column("target", justify="right")
    grid.add_column("met")
    by_key = {t.key: t for t in targets if kind in t.kinds}
    for figure in figures:
        cells = [figure.label, f"{summary[figure.key]:,.{figure.digits}f}", figure.unit]
        if spread:
            values = [run[figure.key] for run in runs]
            cells.append(f"{min(values):,.{figure.digits}f} .. {max(values):,.{figure.digits}f}")
        target = by_key.get(figure.key)
        if target is None:
            cells += ["", ""]
        else:
            met = summary["met"][figure.key]
            cells += [str(target), "[green]yes[/]" if met else "[red]no[/]"]
        grid.add_row(*cells)
    return grid


def postgres_missing(kinds: Iterable[str]) -> bool:
    """True (and says why on stderr) when PostgreSQL is asked for and not reachable."""
    if "postgresql" in kinds and (problem := check_postgres()) is not None:
        err.print(f"[red]bench failed:[/] {problem}")
        return True
    return False


def report_line(
    head: Mapping[str, Any], targets: Iterable[Target], summaries: Mapping[str, Any]
) -> None:
    """The last line of stdout: one JSON object of ``head``, the targets and the summaries."""
    targets_json = {t.key: {"target": str(t), "kinds": list(t.kinds)} for t in targets}
    report = {**head, "targets": targets_json, **summaries}
    sys.stdout.flush()
    print(json.dumps(report, ensure_ascii=False), flush=True)


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A bench's argument parser with the options every bench has: ``--quick`` and ``--db``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; under a minute")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    return parser


def kinds_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The database kinds ``--db`` asks for."""
    return KINDS if args.db == "both" else (args.db,)
