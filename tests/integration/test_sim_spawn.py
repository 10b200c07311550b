"""Simulators served by uvicorn in child processes, reached over real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from charter.sim import SimProcess, free_port, spawn


def assert_gone(sim: SimProcess) -> None:
    assert not sim.running
    with pytest.raises(ProcessLookupError):
        os.kill(sim.pid, 0)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", sim.port), timeout=1):
        pass


def test_a_spawned_erp_stores_orders_once_and_stops() -> None:
    port = free_port()
    with spawn("erp", port=port) as erp:
        assert (erp.name, erp.port, erp.url) == ("erp", port, f"http://127.0.0.1:{port}")
        with httpx.Client(base_url=erp.url, trust_env=False) as client:
            order = {"external_ref": "D-000001", "total": 10}
            for _ in range(2):
                answer = client.post("/orders", json=order, headers={"Idempotency-Key": "k1"})
                assert answer.status_code == 201
            assert answer.headers["idempotent-replayed"] == "true"
            assert erp.fault(outage=True)["outage"] is True
            assert client.post("/orders", json=order).status_code == 503
            erp.clear_faults()
        report = erp.report()
        assert (report["received"], report["applied"], report["duplicates"]) == (3, 1, 1)
        assert (report["faulted"], report["applied_more_than_once"]) == (1, 0)
    assert_gone(erp)


def test_a_spawned_noop_counts_what_it_accepts() -> None:
    noop = spawn("noop")
    try:
        with httpx.Client(base_url=noop.url, trust_env=False) as client:
            assert client.post("/anything", json={"a": 1}).json() == {}
            assert client.put("/deep/path", content=b"x" * 100_000).status_code == 200
        assert noop.report() == {"received": 2}
    finally:
        noop.stop()
    assert_gone(noop)
    noop.stop()  # stopping twice is harmless


def test_a_spawned_crm_pushes_its_events_to_the_hub_url() -> None:
    # The no-op target stands in for the hub: it acknowledges every batch.
    with spawn("noop") as hub, spawn("crm", hub_url=hub.url) as crm:
        with httpx.Client(base_url=crm.url, trust_env=False) as client:
            started = client.post("/admin/generate", json={"count": 120, "batch_size": 50})
            assert started.status_code == 202
        deadline = time.monotonic() + 5
        while (report := crm.report())["running"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (report["acknowledged"], report["pending"], report["retries"]) == (120, 0, 0)
        assert hub.report() == {"received": 3}


def test_a_spawned_payment_gateway_captures_once_and_declines_13_cents() -> None:
    with (
        spawn("payments") as payments,
        httpx.Client(base_url=payments.url, trust_env=False) as client,
    ):
        payment = {"order_ref": "D-1", "amount": 10, "currency": "EUR"}
        for _ in range(2):
            answer = client.post("/payments", json=payment, headers={"Idempotency-Key": "k1"})
            assert (answer.status_code, answer.json()["id"]) == (201, "PAY-000001")
        declined = {**payment, "amount": 10.13}
        answer = client.post("/payments", json=declined, headers={"Idempotency-Key": "k2"})
        assert answer.status_code == 402
        assert answer.json()["type"].endswith("/card-declined")
        refunded = client.post("/payments/PAY-000001/refund", headers={"Idempotency-Key": "r1"})
        assert refunded.json() == {"id": "PAY-000001", "status": "refunded"}
        payments.fault(outage=True)
        assert (
            client.post("/payments", json=payment, headers={"Idempotency-Key": "k3"}).status_code
            == 503
        )
        report = payments.report()
        assert (report["applied"], report["duplicates"], report["declined"]) == (2, 1, 1)
        assert (report["refunded"], report["faulted"]) == (1, 1)


def test_a_spawned_warehouse_pushes_dispatched_shipments_to_the_hub_url() -> None:
    # The no-op target stands in for the hub: it acknowledges every event.
    with spawn("noop") as hub, spawn("warehouse", hub_url=hub.url) as warehouse:
        warehouse.fault(dispatch_delay_s=0)
        with httpx.Client(base_url=warehouse.url, trust_env=False) as client:
            for n in range(3):
                answer = client.post(
                    "/shipments", json={"order_ref": f"D-{n}"}, headers={"Idempotency-Key": f"k{n}"}
                )
                assert answer.status_code == 202
        deadline = time.monotonic() + 5
        while (report := warehouse.report())[
            "pushed_acknowledged"
        ] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (report["dispatched"], report["pushed_acknowledged"], report["push_retries"]) == (
            3,
            3,
            0,
        )
        assert hub.report() == {"received": 3}


def test_a_spawned_portal_shows_the_latest_status() -> None:
    with spawn("portal") as portal, httpx.Client(base_url=portal.url, trust_env=False) as client:
        for key, status in (("k1", "confirmed"), ("k2", "shipped"), ("k1", "confirmed")):
            answer = client.put(
                "/orders/D-1/status", json={"status": status}, headers={"Idempotency-Key": key}
            )
            assert answer.status_code == 200
        assert client.get("/orders/D-1").json()["status"] == "shipped"
        report = portal.report()
        assert (report["applied"], report["duplicates"], report["orders"]) == (2, 1, 1)


def test_a_spawned_analytics_system_counts_events_by_type() -> None:
    with (
        spawn("analytics") as analytics,
        httpx.Client(base_url=analytics.url, trust_env=False) as client,
    ):
        for key, kind in (("k1", "order.placed"), ("k2", "order.paid"), ("k1", "order.placed")):
            answer = client.post("/events", json={"type": kind}, headers={"Idempotency-Key": key})
            assert answer.status_code == 202
        report = analytics.report()
        assert report["by_type"] == {"order.placed": 1, "order.paid": 1}
        assert (report["applied"], report["duplicates"]) == (2, 1)


def test_an_unknown_simulator_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown simulator 'billing'"):
        spawn("billing")
    done = subprocess.run(
        [sys.executable, "-m", "charter.sim", "billing", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "unknown simulator 'billing'" in done.stderr


def test_a_simulator_that_cannot_start_is_reported_with_its_output() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="exited with code"):
            spawn("noop", port=taken.getsockname()[1])
