"""Delivery to the simulated ERP over real sockets: exactly once, through outages and limits."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.processes import HubProcess
from charter.sim import SimProcess
from charter.store import DeliveryStatus, SqlStore
from tests.acceptance.conftest import (
    applied_keys,
    deals,
    expected_keys,
    post_events,
    running_hub,
    settled,
    wait_until,
)
from tests.conftest import copy_starter

SETTLE_S = 60.0


@contextmanager
def opened_store(url: str) -> Iterator[SqlStore]:
    store = SqlStore.from_url(url)
    try:
        yield store
    finally:
        store.close()


def assert_applied_once(erp: SimProcess, hub_ids: list[str]) -> dict[str, Any]:
    """The ERP applied one order per event and none twice; returns its report."""
    report = erp.report()
    assert report["applied"] == len(hub_ids), report
    assert report["applied_more_than_once"] == 0, report
    assert sorted(applied_keys(erp)) == sorted(expected_keys(hub_ids))
    return report


def test_events_are_applied_by_the_erp_exactly_once(
    project_dir: Path, db_url: str, erp: SimProcess
) -> None:
    events = deals(200)
    with running_hub(project_dir, erp, database=db_url) as hub:
        with httpx.Client(base_url=hub.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, events)
        stats = wait_until(hub.stats, settled(200), SETTLE_S)
    assert stats["received"] == 200
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (200, 0)
    assert stats["latency_ms"]["p50"] is not None
    report = assert_applied_once(erp, ids)
    assert report["duplicates"] == 0, report
    # The ERP holds the order the mappings promise: CRM deal -> canonical order -> ERP order.
    deal = events[7]
    orders = httpx.get(
        f"{erp.url}/orders",
        params={"external_ref": deal["data"]["id"]},
        trust_env=False,
        timeout=10,
    ).json()
    assert len(orders) == 1
    assert orders[0]["total"] == deal["data"]["amount"]
    assert orders[0]["currency"] == "EUR"
    assert orders[0]["customer"] == {"ref": "A-1", "name": "Acme"}
    assert orders[0]["status"] == "open"


def test_an_erp_outage_is_retried_until_everything_is_delivered(
    project_dir: Path, erp: SimProcess
) -> None:
    erp.fault(outage=True)
    with running_hub(project_dir, erp) as hub:
        with httpx.Client(base_url=hub.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, deals(60))
        outage_started = time.monotonic()
        wait_until(erp.report, lambda r: r["faulted"] >= 60, 10)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - outage_started)))
        during = hub.stats()
        erp.clear_faults()
        stats = wait_until(hub.stats, settled(60), SETTLE_S)
    assert during["deliveries"]["delivered"] == 0, during
    assert stats["deliveries"]["dead"] == 0, stats
    assert stats["deliveries"]["delivered"] == 60, stats
    assert stats["deliveries"]["retried"] > 0, stats
    assert stats["deliveries"]["attempts"] > 60, stats
    assert_applied_once(erp, ids)


def test_erp_rate_limits_are_honoured_and_everything_is_delivered(
    project_dir: Path, tmp_path: Path, erp: SimProcess
) -> None:
    retry_after = 0.5
    erp.fault(rate_limit_per_s=50, retry_after_s=retry_after)
    url = f"sqlite:///{tmp_path / 'charter.db'}"
    with running_hub(project_dir, erp, database=url) as hub:
        with httpx.Client(base_url=hub.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, deals(150), batch_size=150)
        stats = wait_until(hub.stats, settled(150), SETTLE_S)
    report = assert_applied_once(erp, ids)
    assert report["faulted"] > 0, "the ERP never answered 429"
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (150, 0)
    assert stats["deliveries"]["retried"] > 0, stats
    # After a 429 the next attempt waits for Retry-After even when the backoff
    # (at most 0.2 s after attempt 1, 0.4 s after attempt 2) would be shorter.
    gaps = []
    with opened_store(url) as store:
        for row in store.list_deliveries(limit=1000):
            log = store.delivery_attempts(row["id"])
            for earlier, later in itertools.pairwise(log):
                if earlier["status_code"] == 429 and earlier["number"] <= 2:
                    ended = earlier["started_at"] + earlier["latency_ms"] / 1000
                    gaps.append(later["started_at"] - ended)
    assert gaps, "no delivery was retried after a 429"
    assert min(gaps) >= retry_after - 0.01, sorted(gaps)[:5]


def test_random_erp_errors_are_retried_and_applied_exactly_once(
    project_dir: Path, erp: SimProcess
) -> None:
    erp.fault(error_rate=0.3)
    with running_hub(project_dir, erp) as hub:
        with httpx.Client(base_url=hub.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, deals(100))
        stats = wait_until(hub.stats, settled(100), SETTLE_S)
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (100, 0)
    assert stats["deliveries"]["retried"] > 0, stats
    report = assert_applied_once(erp, ids)
    assert report["faulted"] > 0, report


# -- dead letters -----------------------------------------------------------------


def project_with_bad_total(directory: Path) -> Path:
    """The starter project whose ERP mapping sends a string ``total``, which the ERP refuses."""
    project = copy_starter(directory)
    mapping = project / "mappings" / "order-to-erp.yaml"
    text = mapping.read_text()
    assert "  total: {from: total}\n" in text
    mapping.write_text(text.replace("  total: {from: total}\n", '  total: {const: "oops"}\n'))
    return project


@dataclass(frozen=True)
class DeadLetters:
    hub: HubProcess
    database: str
    ids: list[str]
    stats: dict[str, Any]
    erp_report: dict[str, Any]


@pytest.fixture(scope="class")
def dead(
    erp_process: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeadLetters]:
    """A hub whose three deliveries the ERP refused, kept running for the class's tests."""
    erp_process.clear_faults()
    httpx.post(f"{erp_process.url}/admin/reset", trust_env=False).raise_for_status()
    root = tmp_path_factory.mktemp("dead")
    project = project_with_bad_total(root / "project")
    database = f"sqlite:///{root / 'charter.db'}"
    with running_hub(project, erp_process, database=database) as hub:
        with httpx.Client(base_url=hub.url, trust_env=False, timeout=30) as api:
            ids = post_events(api, deals(3))
        stats = wait_until(hub.stats, settled(3), SETTLE_S)
        yield DeadLetters(hub, database, ids, stats, erp_process.report())


@pytest.mark.xdist_group("dead-letters")
class TestATargetRejectionIsDeadLetteredAtOnce:
    def test_each_delivery_is_dead_after_one_attempt_with_the_reason(
        self, dead: DeadLetters
    ) -> None:
        assert (dead.stats["deliveries"]["dead"], dead.stats["deliveries"]["delivered"]) == (3, 0)
        assert dead.stats["deliveries"]["attempts"] == 3
        assert (dead.erp_report["received"], dead.erp_report["rejected"]) == (3, 3)
        assert dead.erp_report["applied"] == 0
        with opened_store(dead.database) as store:
            rows = store.list_deliveries(DeliveryStatus.DEAD)
            assert sorted(r["event_id"] for r in rows) == sorted(dead.ids)
            for row in rows:
                assert (row["attempts"], row["last_status"]) == (1, 422)
                assert "not retryable" in row["last_error"]
                assert "'total' must be a number, got 'oops'" in row["last_error"]
                [attempt] = store.delivery_attempts(row["id"])
                assert (attempt["outcome"], attempt["status_code"]) == ("dead", 422)

    def test_nothing_is_retried_later(self, dead: DeadLetters) -> None:
        time.sleep(1.0)
        assert dead.hub.stats()["deliveries"] == dead.stats["deliveries"]

    def test_the_api_lists_dead_deliveries(self, dead: DeadLetters) -> None:
        response = dead.hub.client.get("/v1/deliveries", params={"status": "dead"})
        assert response.status_code == 200, response.text
        listed = response.json()["deliveries"]
        assert sorted(d["event_id"] for d in listed) == sorted(dead.ids)
        assert {(d["status"], d["attempts"], d["last_status"]) for d in listed} == {
            ("dead", 1, 422)
        }

    def test_the_api_shows_a_dead_delivery_with_its_attempts(self, dead: DeadLetters) -> None:
        with opened_store(dead.database) as store:
            delivery_id = store.list_deliveries(DeliveryStatus.DEAD)[0]["id"]
        response = dead.hub.client.get(f"/v1/deliveries/{delivery_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["last_status"]) == ("dead", 422)
        assert "'total' must be a number" in body["last_error"]
        [attempt] = body["attempts_log"]
        assert (attempt["number"], attempt["status_code"], attempt["outcome"]) == (1, 422, "dead")

    def test_an_unknown_delivery_is_a_problem(self, dead: DeadLetters) -> None:
        response = dead.hub.client.get("/v1/deliveries/999999")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "999999" in response.json()["detail"]

    def test_an_unknown_status_filter_is_a_problem(self, dead: DeadLetters) -> None:
        response = dead.hub.client.get("/v1/deliveries", params={"status": "bogus"})
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert "status" in response.json()["detail"]


# -- shutdown ---------------------------------------------------------------------


def test_sigterm_drains_in_flight_calls_and_a_restart_delivers_the_rest(
    project_dir: Path, db_url: str, erp: SimProcess
) -> None:
    erp.fault(latency_ms=500)
    hub = HubProcess(project_dir, env={"CHARTER_ERP_URL": erp.url}, database=db_url)
    try:
        hub.start()
        ids = post_events(hub.client, deals(300))
        wait_until(erp.report, lambda r: r["received"] > 0, 10, interval=0.02)
        assert hub.stop() == 0, hub.log_tail()
        after_stop = erp.report()
        with opened_store(db_url) as store:
            rows = store.list_deliveries(limit=1000)
            counts = store.delivery_counts()
        assert len(rows) == 300
        assert [r["id"] for r in rows if r["lease_owner"] is not None] == []
        assert counts.pending > 0, "everything was delivered before the stop; nothing to resume"
        # Calls in flight at the signal were finished and recorded, not abandoned.
        assert counts.delivered == after_stop["applied"], (counts, after_stop)
        erp.clear_faults()
        hub.start()
        stats = wait_until(hub.stats, settled(300), SETTLE_S)
    finally:
        hub.close()
    assert (stats["deliveries"]["delivered"], stats["deliveries"]["dead"]) == (300, 0)
    report = assert_applied_once(erp, ids)
    assert report["duplicates"] == 0, "a delivery finished before the stop was sent again"
