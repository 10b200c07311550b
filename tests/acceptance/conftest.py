"""Acceptance fixtures: Charter and the simulated systems as real processes on real ports.

Helpers here are imported by the acceptance modules; fixtures hand out
processes that are stopped by their own handles, never by name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql

from charter.hub import delivery_key
from charter.processes import HubProcess
from charter.sim import SimProcess, spawn
from charter.store.processes import PROCESSES_CHANNEL
from tests.conftest import DROP, PG_ADMIN, copy_starter

EVENTS = "/v1/systems/crm/events"
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PROBLEM_JSON = "application/problem+json"
INTEGRATION = "deal-to-erp-order"

T = TypeVar("T")


def deal(ce_id: str, amount: float = 10.0) -> dict[str, Any]:
    """A CRM ``deal.closed`` CloudEvent valid under the starter project."""
    return {
        "specversion": "1.0",
        "id": ce_id,
        "source": "crm.acceptance",
        "type": "deal.closed",
        "data": {
            "id": f"D-{ce_id}",
            "account": {"id": "A-1", "name": "Acme"},
            "amount": amount,
            "currency": "EUR",
            "stage": "closed_won",
        },
    }


def deals(count: int, prefix: str | None = None) -> list[dict[str, Any]]:
    """``count`` distinct deals whose ids no other test uses."""
    prefix = prefix or uuid.uuid4().hex[:8]
    return [deal(f"{prefix}-{n}") for n in range(count)]


def post_events(
    client: httpx.Client, events: list[dict[str, Any]], batch_size: int = 100
) -> list[str]:
    """Post ``events`` in batches; returns the hub event ids, in order, of 202 answers only."""
    ids: list[str] = []
    for start in range(0, len(events), batch_size):
        response = client.post(
            EVENTS,
            content=orjson.dumps(events[start : start + batch_size]),
            headers={"content-type": BATCH},
        )
        assert response.status_code == 202, response.text
        ids.extend(response.json()["ids"])
    return ids


def expected_keys(hub_ids: list[str]) -> set[str]:
    """The Idempotency-Keys the ERP must have applied, one per event."""
    return {delivery_key(hub_id, INTEGRATION) for hub_id in hub_ids}


def applied_keys(erp: SimProcess) -> list[str]:
    """The Idempotency-Keys the ERP applied, as its ``/admin/applied`` lists them."""
    response = httpx.get(f"{erp.url}/admin/applied", trust_env=False, timeout=10)
    response.raise_for_status()
    keys: list[str] = response.json()
    return keys


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check ``response`` is an RFC 9457 problem with ``status``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    for member in ("type", "title", "status", "detail"):
        assert body.get(member), f"problem without {member!r}: {body}"
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body


def wait_until(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.1
) -> T:
    """Call ``probe`` until ``done`` holds for its value; fail with the last value on timeout."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value):
        if time.monotonic() > deadline:
            pytest.fail(f"still not done after {timeout:g} s: {value}")
        time.sleep(interval)
        value = probe()
    return value


def settled(total: int) -> Callable[[dict[str, Any]], bool]:
    """A ``done`` for ``wait_until(hub.stats, ...)``: ``total`` deliveries, none pending."""

    def check(stats: dict[str, Any]) -> bool:
        d = stats["deliveries"]
        return bool(d["pending"] == 0 and d["delivered"] + d["dead"] == total)

    return check


@contextmanager
def pg_database(template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database made from ``template``, dropped afterwards."""
    name = f"charter_acc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(DROP.format(sql.Identifier(name)))


@contextmanager
def running_hub(
    project: Path,
    erp: SimProcess,
    *,
    database: str | None = None,
    command: str = "up",
) -> Iterator[HubProcess]:
    """``charter <command>`` on ``project`` delivering to ``erp``; stopped by its handle."""
    hub = HubProcess(project, command=command, env={"CHARTER_ERP_URL": erp.url}, database=database)
    try:
        hub.start()
        yield hub
    finally:
        hub.close()


@pytest.fixture(scope="module")
def erp_process() -> Iterator[SimProcess]:
    """One simulated ERP per test module and test process."""
    with spawn("erp") as erp:
        yield erp


@pytest.fixture
def erp(erp_process: SimProcess) -> SimProcess:
    """The module's ERP with no orders, no counters and no faults."""
    erp_process.clear_faults()
    httpx.post(f"{erp_process.url}/admin/reset", trust_env=False, timeout=10).raise_for_status()
    return erp_process


# Processes -----------------------------------------------------------------------------

# What the process tests add to the starter project: a warehouse that announces
# shipments, and processes that call the ERP, wait, sleep and hold.
PROCESS_FILES = {
    "systems/warehouse.yaml": """\
kind: System
name: warehouse
role: record
owner: finance-ops
description: Ships orders and announces each parcel that leaves.
events:
  shipment.dispatched:
    key: order_ref
    schema:
      $schema: https://json-schema.org/draft/2020-12/schema
      type: object
      required: [order_ref, carrier]
      properties:
        order_ref: {type: string, minLength: 1}
        carrier: {type: string}
""",
    "processes/fulfil-order.yaml": """\
kind: Process
name: fulfil-order
version: 1
owner: finance-ops
tier: revenue-critical
slo: {objective: 99, latency: 1h}
retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s}
steps:
  - id: create_order
    call:
      system: erp
      path: /orders
      body:
        external_ref: {from: input.id}
        total: {from: input.total}
    compensate:
      call: {system: erp, path: "/orders/{steps.create_order.id}/cancel"}
  - id: approval
    approve: {prompt: "Release the order for shipping?"}
  - id: dispatched
    wait:
      event: {system: warehouse, type: shipment.dispatched}
      match: {field: order_ref, equals: input.id}
  - id: delivered
    wait: {signal: delivered}
""",
    "processes/deal-onboarding.yaml": """\
kind: Process
name: deal-onboarding
version: 1
owner: sales-ops
tier: revenue-critical
slo: {objective: 99, latency: 1h}
triggers:
  - event: {system: crm, type: deal.closed, key: id}
steps:
  - id: create_order
    call:
      system: erp
      path: /orders
      body:
        external_ref: {from: input.id}
        total: {from: input.amount}
  - id: dispatched
    wait:
      event: {system: warehouse, type: shipment.dispatched}
      match: {field: order_ref, equals: input.id}
""",
    "processes/held-order.yaml": """\
kind: Process
name: held-order
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
on_failure: hold
retry: {max_attempts: 1}
steps:
  - id: create_order
    call:
      system: erp
      path: /orders
      body:
        external_ref: {from: input.id}
        total: {from: input.total}
  - id: tell_finance
    escalate: {message: an order held after a failure was created}
""",
    "processes/nap-then-order.yaml": """\
kind: Process
name: nap-then-order
version: 1
owner: finance-ops
tier: operational
slo: {objective: 99, latency: 1h}
steps:
  - id: nap
    sleep: {for: 5s}
  - id: create_order
    call:
      system: erp
      path: /orders
      body:
        external_ref: {from: input.id}
        total: {from: input.total}
""",
}


def process_project(directory: Path) -> Path:
    """The starter project with a warehouse system and the processes of ``PROCESS_FILES``."""
    project = copy_starter(directory)
    for name, text in PROCESS_FILES.items():
        path = project / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    return project


def charter_processes(
    project: Path, erp: SimProcess, database: str | None = None
) -> list[HubProcess]:
    """Handles, not started yet, of every Charter process of a deployment; the first serves
    the API. Without ``database``: ``charter up`` on the project's SQLite file; with it:
    ``charter server`` and ``charter worker`` sharing that PostgreSQL database."""
    env = {"CHARTER_ERP_URL": erp.url}
    if database is None:
        return [HubProcess(project, env=env)]
    return [
        HubProcess(project, command="server", env=env, database=database),
        HubProcess(project, command="worker", env=env, database=database),
    ]


def wait_until_listening(database: str, since: float, timeout: float = 30.0) -> None:
    """Wait until a ``charter worker`` started after ``since`` listens for process work on
    PostgreSQL ``database``; by then it has its signal handlers in place."""
    with psycopg.connect(database, autocommit=True) as conn:

        def listening() -> int:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query = %s AND backend_start >= to_timestamp(%s)",
                (f"LISTEN {PROCESSES_CHANNEL}", since),
            ).fetchone()
            return int(row[0]) if row else 0

        wait_until(listening, lambda n: n >= 1, timeout)


def start_processes(
    stack: ExitStack, processes: list[HubProcess], database: str | None = None
) -> HubProcess:
    """Start every process of a deployment (see `charter_processes`) and return the API's
    once all serve: the API answers, and a worker on ``database`` listens. Each process is
    stopped when ``stack`` closes."""
    since = time.time()
    for process in reversed(processes):  # the worker first: it waits for no port
        stack.callback(process.close)
        process.start()
    if len(processes) > 1 and database is not None:
        wait_until_listening(database, since)
    return processes[0]


@contextmanager
def process_hub(
    project: Path, erp: SimProcess, database: str | None = None
) -> Iterator[HubProcess]:
    """Every process of a deployment (see `charter_processes`) serving; yields the API's."""
    with ExitStack() as stack:
        yield start_processes(stack, charter_processes(project, erp, database), database)


@dataclass(frozen=True)
class ProcessDeployment:
    """A running deployment of the process test project: its API, folder and database
    (None: the project's own SQLite file)."""

    hub: HubProcess
    project: Path
    database: str | None

    @property
    def api(self) -> httpx.Client:
        return self.hub.client


@pytest.fixture(scope="session")
def shared_erp_process() -> Iterator[SimProcess]:
    """The simulated ERP the shared process deployments call, one per test process."""
    with spawn("erp") as erp:
        yield erp


@pytest.fixture
def shared_erp(shared_erp_process: SimProcess) -> SimProcess:
    """The shared deployments' ERP with no orders, no counters and no faults."""
    shared_erp_process.clear_faults()
    httpx.post(
        f"{shared_erp_process.url}/admin/reset", trust_env=False, timeout=10
    ).raise_for_status()
    return shared_erp_process


@pytest.fixture(scope="session")
def processes_sqlite(
    shared_erp_process: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessDeployment]:
    """``charter up`` on the process test project's SQLite file, shared by the test process's
    API and CLI tests of processes (each uses business keys of its own)."""
    project = process_project(tmp_path_factory.mktemp("processes-sqlite") / "project")
    with process_hub(project, shared_erp_process) as hub:
        yield ProcessDeployment(hub, project, None)


@pytest.fixture(scope="session")
def processes_pg(
    shared_erp_process: SimProcess, tmp_path_factory: pytest.TempPathFactory, pg_template: str
) -> Iterator[ProcessDeployment]:
    """``charter server`` and ``charter worker`` on a fresh PostgreSQL database, shared like
    `processes_sqlite`."""
    project = process_project(tmp_path_factory.mktemp("processes-pg") / "project")
    with (
        pg_database(pg_template) as database,
        process_hub(project, shared_erp_process, database) as hub,
    ):
        yield ProcessDeployment(hub, project, database)


def new_key() -> str:
    """A business key no other test uses."""
    return f"K-{uuid.uuid4().hex[:10]}"


def shipment(ce_id: str, order_ref: str, carrier: str = "DHL") -> dict[str, Any]:
    """A warehouse ``shipment.dispatched`` CloudEvent for the order ``order_ref``."""
    return {
        "specversion": "1.0",
        "id": ce_id,
        "source": "warehouse.acceptance",
        "type": "shipment.dispatched",
        "data": {"order_ref": order_ref, "carrier": carrier},
    }


def post_event(client: httpx.Client, system: str, event: dict[str, Any]) -> str:
    """Post one CloudEvent to ``system``; returns its hub event id (the answer must be 202)."""
    response = client.post(
        f"/v1/systems/{system}/events",
        content=orjson.dumps(event),
        headers={"content-type": SINGLE},
    )
    assert response.status_code == 202, response.text
    [hub_id] = response.json()["ids"]
    return str(hub_id)


def instance(client: httpx.Client, ident: str) -> dict[str, Any]:
    """``GET /v1/processes/instances/{ident}``: state, steps and timeline."""
    response = client.get(f"/v1/processes/instances/{ident}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def await_instance(
    client: httpx.Client,
    ident: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll the instance until ``done`` holds for it; return it."""
    return wait_until(lambda: instance(client, ident), done, timeout, 0.05)


def status_is(*statuses: str) -> Callable[[dict[str, Any]], bool]:
    """A ``done`` for `await_instance`: the instance is in one of ``statuses``."""
    return lambda found: found["status"] in statuses


def step_is(step: str, status: str) -> Callable[[dict[str, Any]], bool]:
    """A ``done`` for `await_instance`: ``step`` of the instance is in ``status``."""
    return lambda found: found["steps"].get(step, {}).get("status") == status


def history(found: dict[str, Any], what: str, step: str | None = None) -> list[dict[str, Any]]:
    """The timeline entries of an instance that record ``what`` (of ``step``, or of the
    instance itself when ``step`` is None)."""
    return [h for h in found["timeline"] if h["what"] == what and h.get("step") == step]


def search(client: httpx.Client, **filters: Any) -> list[dict[str, Any]]:
    """``GET /v1/processes/instances`` with ``filters``: the instances found, newest first."""
    response = client.get("/v1/processes/instances", params={"limit": 1000, **filters})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["instances"]
    return rows


def erp_order(erp: SimProcess, number: str) -> dict[str, Any]:
    """The ERP's order ``number`` as ``GET /orders/{number}`` shows it."""
    response = httpx.get(f"{erp.url}/orders/{number}", trust_env=False, timeout=10)
    response.raise_for_status()
    order: dict[str, Any] = response.json()
    return order
