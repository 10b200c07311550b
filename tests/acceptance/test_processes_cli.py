"""``charter process ...`` in a subprocess, as an operator runs it against a running hub.

The CLI works on the project of a running ``charter up`` and finds its SQLite
file by itself; one test points it with ``--database`` at the PostgreSQL
database of a ``charter server`` and ``charter worker`` pair. The tests read
the hub's API only to wait for its worker; what they check is what the CLI
prints and does. Commands that do not depend on each other run side by side,
to keep the module quick.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from charter.sim import SimProcess
from tests.acceptance.conftest import (
    ProcessDeployment,
    applied_keys,
    await_instance,
    erp_order,
    history,
    new_key,
    search,
    status_is,
    step_is,
)
from tests.acceptance.test_cli import assert_no_traceback, charter, one_line_error, table_rows

Command = tuple[str, ...]

# The API and CLI tests of processes share their deployments: keep them in one test process.
pytestmark = pytest.mark.xdist_group("processes")


@dataclass
class Cli:
    """``charter`` pointed at a running deployment's project and database."""

    deployment: ProcessDeployment

    @property
    def api(self) -> httpx.Client:
        return self.deployment.api

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``charter ARGS -p PROJECT [--database URL]``."""
        where = ["-p", str(self.deployment.project)]
        if self.deployment.database is not None:
            where += ["--database", self.deployment.database]
        return charter(*args, *where)

    def ok(self, *commands: Command) -> list[str]:
        """Run ``commands`` side by side; each must succeed. Returns what each printed."""
        return self._each(self._ok, commands)

    def fails(self, *commands: Command) -> list[str]:
        """Run ``commands`` side by side; each must fail with exit 1 and one line of error.
        Returns the lines."""
        return self._each(self._fails, commands)

    def start(self, process: str, key: str, total: float = 10.0) -> str:
        """``charter process start``, which must start a new instance; returns its id."""
        payload = orjson.dumps({"id": key, "total": total}).decode()
        [printed] = self.ok(("process", "start", process, "--key", key, "--input", payload))
        assert printed.startswith(f"started {process} {key}: "), printed
        return printed.rsplit(" ", 1)[-1]

    def _ok(self, command: Command) -> str:
        done = self.run(*command)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_no_traceback(done)
        return done.stdout.strip()

    def _fails(self, command: Command) -> str:
        done = self.run(*command)
        line = one_line_error(done)
        assert done.returncode == 1, done.stderr
        assert line.startswith("error: "), line
        return line

    @staticmethod
    def _each(run: Callable[[Command], str], commands: tuple[Command, ...]) -> list[str]:
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(run, commands))


@pytest.fixture
def cli(processes_sqlite: ProcessDeployment) -> Cli:
    """The CLI on the shared ``charter up`` deployment."""
    return Cli(processes_sqlite)


@pytest.fixture
def erp(shared_erp: SimProcess) -> SimProcess:
    """The ERP the shared deployments call, reset for this test."""
    return shared_erp


def start_by_api(api: httpx.Client, process: str, key: str, total: float = 10.0) -> str:
    """Start an instance through the API (the CLI's own start is tested on its own)."""
    response = api.post(
        f"/v1/processes/{process}/instances",
        json={"business_key": key, "input": {"id": key, "total": total}},
    )
    assert response.status_code == 201, response.text
    ident: str = response.json()["id"]
    return ident


def together(*runs: Callable[[], list[str]]) -> list[list[str]]:
    """Run ``Cli.ok`` and ``Cli.fails`` calls side by side; returns their results in order."""
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = [pool.submit(run) for run in runs]
        return [f.result() for f in futures]


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def steps_of(shown: str) -> dict[str, list[str]]:
    """The steps table of ``charter process show``: step -> [step, status, attempts,
    duration, output or error]."""
    return {r[0]: r for r in table_rows(shown) if len(r) == 5}


def timeline_of(shown: str) -> list[list[str]]:
    """The timeline table of ``charter process show``: [at, step, what, detail] rows."""
    return [r for r in table_rows(shown) if len(r) == 4]


def test_start_twice_for_one_business_key_says_already_running(cli: Cli, erp: SimProcess) -> None:
    key = new_key()
    ident = cli.start("fulfil-order", key)
    [again], [unknown, bad, listed] = together(
        lambda: cli.ok(("process", "start", "fulfil-order", "--key", key, "--input", "{}")),
        lambda: cli.fails(
            ("process", "start", "no-such-process", "--key", key),
            ("process", "start", "fulfil-order", "--key", key, "--input", '{"id":'),
            ("process", "start", "fulfil-order", "--key", key, "--input", "[1]"),
        ),
    )
    assert again == f"already running fulfil-order {key}: {ident}"
    assert "'no-such-process'" in unknown and "fulfil-order" in unknown
    assert "--input is not valid JSON" in bad
    assert "--input must be a JSON object" in listed
    found = await_instance(cli.api, ident, step_is("approval", "waiting"))
    assert found["context"]["input"] == {"id": key, "total": 10.0}
    assert [k for k in applied_keys(erp) if k.startswith(ident)] == [f"{ident}:create_order"]


def test_start_from_a_json_lines_file_starts_one_instance_per_new_key(
    cli: Cli, erp: SimProcess, tmp_path: Path
) -> None:
    running = new_key()
    cli.start("fulfil-order", running)
    fresh = [new_key(), new_key()]
    lines = tmp_path / "orders.jsonl"
    lines.write_text(
        "\n".join(
            orjson.dumps({"business_key": k, "input": {"id": k, "total": 3.0}}).decode()
            for k in [running, *fresh]
        )
        + "\n\n"
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"business_key": "a"}\n{"business_key": 7}\n')
    [started], [both, neither, bad, missing] = together(
        lambda: cli.ok(("process", "start", "fulfil-order", "--from", str(lines))),
        lambda: cli.fails(
            ("process", "start", "fulfil-order", "--key", "k", "--from", str(lines)),
            ("process", "start", "fulfil-order"),
            ("process", "start", "fulfil-order", "--from", str(broken)),
            ("process", "start", "fulfil-order", "--from", str(tmp_path / "none.jsonl")),
        ),
    )
    assert started == "started 2 fulfil-order instances; 1 were already running"
    assert "either --key" in both and "either --key" in neither
    assert f"{broken}:2:" in bad and "business_key a string" in bad
    assert "cannot read" in missing
    for key in fresh:
        [row] = search(cli.api, business_key=key)
        found = await_instance(cli.api, row["id"], step_is("approval", "waiting"))
        assert found["context"]["input"] == {"id": key, "total": 3.0}


def test_approve_event_and_signal_drive_an_order_and_show_prints_its_timeline(
    cli: Cli, erp: SimProcess
) -> None:
    key = new_key()
    ident = start_by_api(cli.api, "fulfil-order", key, total=42.0)
    await_instance(cli.api, ident, step_is("approval", "waiting"))
    approved = cli.ok(
        ("process", "approve", ident, "approval", "--by", "alice", "--comment", "credit ok")
    )
    assert approved == [f"approve queued for {ident}"]
    await_instance(cli.api, ident, step_is("dispatched", "waiting"))
    shipped = orjson.dumps({"order_ref": key, "carrier": "UPS"}).decode()
    [refusal], [queued] = together(
        lambda: cli.fails(("process", "approve", ident, "approval", "--by", "alice")),
        lambda: cli.ok(("process", "event", ident, "--data", shipped)),
    )
    assert "not waiting for a decision" in refusal
    assert queued == f"event queued for {ident}"
    await_instance(cli.api, ident, step_is("delivered", "waiting"))
    cli.ok(("process", "signal", ident, "delivered", "--data", '{"signed_by": "bob"}'))
    await_instance(cli.api, ident, status_is("completed"))

    [shown] = cli.ok(("process", "show", ident))
    assert shown.splitlines()[0].split() == ["fulfil-order", "v1", "key", key, "completed"]
    steps = steps_of(shown)
    assert list(steps) == ["create_order", "approval", "dispatched", "delivered"]
    assert [r[1] for r in steps.values()] == ["completed"] * 4
    assert steps["create_order"][2] == "1"  # attempts
    assert all(r[3].endswith(" ms") for r in steps.values())  # durations
    order = orjson.loads(steps["create_order"][4])
    assert order == {"id": order["id"], "external_ref": key, "status": "open"}
    assert orjson.loads(steps["approval"][4]) == {
        "approved": True,
        "by": "alice",
        "comment": "credit ok",
    }
    assert orjson.loads(steps["dispatched"][4]) == {"order_ref": key, "carrier": "UPS"}
    assert orjson.loads(steps["delivered"][4]) == {"signed_by": "bob"}
    timeline = timeline_of(shown)
    assert [(r[1], r[2]) for r in timeline] == [
        ("", "started"),
        ("create_order", "started"),
        ("create_order", "attempt"),
        ("create_order", "completed"),
        ("approval", "started"),
        ("approval", "approved"),
        ("approval", "completed"),
        ("dispatched", "started"),
        ("dispatched", "completed"),
        ("delivered", "started"),
        ("delivered", "completed"),
        ("", "completed"),
    ]
    approval = next(r for r in timeline if r[2] == "approved")
    assert orjson.loads(approval[3]) == {"by": "alice", "comment": "credit ok"}
    assert erp_order(erp, order["id"])["total"] == 42.0


def test_reject_and_cancel_compensate_the_erp_order_and_terminate_does_not(
    cli: Cli, erp: SimProcess
) -> None:
    rejected, cancelled, terminated = (
        start_by_api(cli.api, "fulfil-order", new_key()) for _ in range(3)
    )
    for ident in (rejected, cancelled, terminated):
        await_instance(cli.api, ident, step_is("approval", "waiting"))
    reject = ("process", "approve", rejected, "approval", "--reject", "--by", "carol")
    cli.ok(
        (*reject, "--comment", "no"),
        ("process", "cancel", cancelled, "--by", "dave", "--reason", "withdrawn"),
        ("process", "terminate", terminated, "--by", "erin", "--reason", "twice"),
    )

    undone = await_instance(cli.api, rejected, status_is("compensated"))
    assert history(undone, "rejected", "approval")[0]["by"] == "carol"
    assert undone["reason"] == "step approval failed: rejected by carol: no"
    withdrawn = await_instance(cli.api, cancelled, status_is("cancelled"))
    assert withdrawn["reason"] == "cancelled by dave: withdrawn"
    ended = await_instance(cli.api, terminated, status_is("terminated"))
    assert ended["reason"] == "terminated by erin: twice"
    for found, status in ((undone, "cancelled"), (withdrawn, "cancelled"), (ended, "open")):
        order = found["context"]["steps"]["create_order"]["id"]
        assert erp_order(erp, order)["status"] == status
    applied = applied_keys(erp)
    assert f"{rejected}:create_order:compensate" in applied
    assert f"{cancelled}:create_order:compensate" in applied
    assert f"{terminated}:create_order:compensate" not in applied

    [again] = cli.fails(("process", "cancel", cancelled))
    assert "already ended (cancelled)" in again


def test_a_held_instance_is_retried_from_its_failed_step_or_skips_it(
    cli: Cli, erp: SimProcess
) -> None:
    api = cli.api
    erp.fault(outage=True)
    retried, skipped = (start_by_api(api, "held-order", new_key()) for _ in range(2))
    for ident in (retried, skipped):
        await_instance(api, ident, status_is("failed"))
    [refusal], [shown] = together(
        lambda: cli.fails(("process", "skip", skipped, "tell_finance")),
        lambda: cli.ok(("process", "show", retried)),
    )
    assert "only a failed step" in refusal
    assert "failed" in shown.splitlines()[0].split()
    failed = steps_of(shown)["create_order"]
    assert failed[1:3] == ["failed", "1"]
    assert "erp answered 503" in failed[4]
    erp.clear_faults()

    retry, skip = cli.ok(
        ("process", "retry", retried, "--by", "fred"),
        ("process", "skip", skipped, "create_order", "--by", "gina"),
    )
    assert (retry, skip) == (f"retry queued for {retried}", f"skip queued for {skipped}")
    done = await_instance(api, retried, status_is("completed"))
    assert history(done, "retry")[0]["by"] == "fred"
    passed = await_instance(api, skipped, status_is("completed"))
    assert history(passed, "skipped", "create_order")[0]["by"] == "gina"
    applied = applied_keys(erp)
    assert applied.count(f"{retried}:create_order") == 1
    assert not [k for k in applied if k.startswith(skipped)]


def test_list_finds_instances_by_process_status_business_key_and_time(
    cli: Cli, erp: SimProcess
) -> None:
    api = cli.api
    before, within, after = new_key(), new_key(), new_key()
    marks, idents = [], []
    for process, key in (("fulfil-order", before), ("held-order", within), ("held-order", after)):
        marks.append(time.time())
        time.sleep(0.05)
        idents.append(start_by_api(api, process, key))
        time.sleep(0.05)
    await_instance(api, idents[0], step_is("approval", "waiting"))
    for ident in idents[1:]:
        await_instance(api, ident, status_is("completed"))

    by_key = ("--process", "held-order", "--status", "completed", "--key", within)
    window = ("--since", iso(marks[1]), "--until", iso(marks[2]))
    (found, in_window), [bad] = together(
        lambda: cli.ok(("process", "list", *by_key), ("process", "list", *window)),
        lambda: cli.fails(("process", "list", "--since", "yesterday")),
    )
    assert found.splitlines()[0].startswith("1 instance(s)")
    [row] = table_rows(found)
    assert row[:5] == [idents[1], "held-order", "1", within, "completed"]
    assert [r[0] for r in table_rows(in_window)] == [idents[1]]
    assert "write times as" in bad


def test_show_waits_for_an_instance_to_end(cli: Cli, erp: SimProcess) -> None:
    ident = cli.start("fulfil-order", new_key())
    await_instance(cli.api, ident, step_is("approval", "waiting"))
    [still] = cli.ok(("process", "show", ident, "--wait", "300ms"))
    assert still.splitlines()[0].split()[4] == "waiting"

    with ThreadPoolExecutor(1) as pool:
        shown = pool.submit(cli.ok, ("process", "show", ident, "--wait", "30s"))
        time.sleep(1.0)
        assert not shown.done(), "shown before the instance ended"
        cli.ok(("process", "cancel", ident, "--by", "ivy", "--reason", "duplicate"))
        [ended] = shown.result(timeout=60)
    assert ended.splitlines()[0].split()[4] == "cancelled"
    assert ended.splitlines()[0].endswith("(cancelled by ivy: duplicate)")

    [bad] = cli.fails(("process", "show", ident, "--wait", "soon"))
    assert "wait='soon' is not a duration" in bad


def test_unknown_instances_and_bad_json_fail_in_one_line(cli: Cli, erp: SimProcess) -> None:
    nobody = str(uuid.uuid4())
    show, cancel, signal = cli.fails(
        ("process", "show", nobody),
        ("process", "cancel", nobody),
        ("process", "signal", nobody, "delivered", "--data", "{"),
    )
    assert f"no process instance '{nobody}'" in show
    assert f"no process instance '{nobody}'" in cancel
    assert "--data is not valid JSON" in signal


@pytest.mark.postgres
def test_the_cli_operates_instances_in_a_postgresql_database(
    processes_pg: ProcessDeployment, erp: SimProcess
) -> None:
    cli = Cli(processes_pg)
    key = new_key()
    ident = cli.start("fulfil-order", key)
    await_instance(cli.api, ident, step_is("approval", "waiting"))
    cli.ok(("process", "cancel", ident, "--by", "dave", "--reason", "withdrawn"))
    found = await_instance(cli.api, ident, status_is("cancelled"))
    order = found["context"]["steps"]["create_order"]["id"]
    assert erp_order(erp, order)["status"] == "cancelled"
    [shown] = cli.ok(("process", "show", ident))
    header = shown.splitlines()[0]
    assert header.split()[:5] == ["fulfil-order", "v1", "key", key, "cancelled"]
    assert header.endswith("(cancelled by dave: withdrawn)")
    assert ["create_order", "compensated"] == steps_of(shown)["create_order"][:2]
