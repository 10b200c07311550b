"""Acceptance fixtures: Charter and the simulated systems as real processes on real ports.

Helpers here are imported by the acceptance modules; fixtures hand out
processes that are stopped by their own handles, never by name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from tests.conftest import DROP, PG_ADMIN

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
