"""Process instances through the REST API on a real port, as a program would drive them.

Every test runs on two deployments, shared with the CLI tests: ``charter up`` on
its SQLite file, and ``charter server`` with a separate ``charter worker`` on
PostgreSQL. Each test uses business keys no other test uses, and the simulated
ERP shows which effects were applied under which Idempotency-Key.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from charter.sim import SimProcess
from tests.acceptance.conftest import (
    ProcessDeployment,
    applied_keys,
    await_instance,
    deal,
    erp_order,
    history,
    instance,
    new_key,
    post_event,
    problem_of,
    search,
    shipment,
    status_is,
    step_is,
)

START = "/v1/processes/{}/instances"

# The API and CLI tests of processes share their deployments: keep them in one test process.
pytestmark = pytest.mark.xdist_group("processes")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def deployment(request: pytest.FixtureRequest) -> ProcessDeployment:
    """The shared deployment on each database."""
    name = "processes_sqlite" if request.param == "sqlite" else "processes_pg"
    found: ProcessDeployment = request.getfixturevalue(name)
    return found


@pytest.fixture
def api(deployment: ProcessDeployment) -> httpx.Client:
    return deployment.api


@pytest.fixture
def erp(shared_erp: SimProcess) -> SimProcess:
    """The ERP the shared deployments call, reset for this test."""
    return shared_erp


def start(api: httpx.Client, process: str, key: str, total: float = 10.0) -> str:
    """Start ``process`` for ``key`` with input ``{id: key, total}``; it must be new (201)."""
    response = api.post(
        START.format(process), json={"business_key": key, "input": {"id": key, "total": total}}
    )
    assert response.status_code == 201, response.text
    assert response.json()["created"] is True
    ident: str = response.json()["id"]
    return ident


def operate(api: httpx.Client, ident: str, operation: str, **body: Any) -> httpx.Response:
    return api.post(f"/v1/processes/instances/{ident}/{operation}", json=body)


def queued(api: httpx.Client, ident: str, operation: str, **body: Any) -> None:
    """Send an operation that applies: it is accepted (202) for the instance's worker."""
    response = operate(api, ident, operation, **body)
    assert response.status_code == 202, response.text
    assert response.json() == {"instance": ident, "queued": operation}


def refused(api: httpx.Client, ident: str, operation: str, **body: Any) -> str:
    """Send an operation that does not apply now: 409 problem+json; returns its detail."""
    detail: str = problem_of(operate(api, ident, operation, **body), 409)["detail"]
    return detail


def applied_for(erp: SimProcess, ident: str) -> list[str]:
    """The Idempotency-Keys the ERP applied for calls of instance ``ident``."""
    return [k for k in applied_keys(erp) if k.startswith(ident + ":")]


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


# Starting and finding instances --------------------------------------------------------


def test_the_same_process_and_business_key_never_start_two_instances(
    api: httpx.Client, erp: SimProcess
) -> None:
    key = new_key()
    body = {"business_key": key, "input": {"id": key, "total": 12.5}}
    first = api.post(START.format("fulfil-order"), json=body)
    assert first.status_code == 201, first.text
    ident = first.json()["id"]
    assert first.json() == {"id": ident, "created": True}
    again = api.post(
        START.format("fulfil-order"), json={**body, "input": {"id": key, "total": 99.0}}
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"id": ident, "created": False}

    # Eight clients starting the same key at once get one instance between them.
    racing = new_key()
    race = {"business_key": racing, "input": {"id": racing, "total": 1.0}}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: api.post(START.format("fulfil-order"), json=race), range(8))
        )
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text for a in answers]
    [raced] = {a.json()["id"] for a in answers}

    for one, expected_total in ((ident, 12.5), (raced, 1.0)):
        found = await_instance(api, one, step_is("approval", "waiting"))
        assert found["context"]["input"]["total"] == expected_total  # the first start's input
        assert applied_for(erp, one) == [f"{one}:create_order"]
    assert [r["id"] for r in search(api, business_key=key)] == [ident]
    assert [r["id"] for r in search(api, business_key=racing)] == [raced]


def test_a_batch_starts_each_new_business_key_once_and_reports_the_rest(
    api: httpx.Client, erp: SimProcess
) -> None:
    running = new_key()
    existing = start(api, "fulfil-order", running)
    fresh = [new_key() for _ in range(3)]
    batch = [running, *fresh, fresh[0]]  # one already running, one twice in the batch
    response = api.post(
        START.format("fulfil-order") + "/batch",
        json={"instances": [{"business_key": k, "input": {"id": k, "total": 5.0}} for k in batch]},
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["created"] == 3
    rows = answer["instances"]
    assert [r["business_key"] for r in rows] == batch
    assert [r["created"] for r in rows] == [False, True, True, True, False]
    assert rows[0]["id"] == existing and rows[4]["id"] == rows[1]["id"]
    for row in rows[1:4]:
        found = await_instance(api, row["id"], step_is("approval", "waiting"))
        assert found["business_key"] == row["business_key"]
        assert applied_for(erp, row["id"]) == [f"{row['id']}:create_order"]

    again = api.post(
        START.format("fulfil-order") + "/batch",
        json={"instances": [{"business_key": k} for k in fresh]},
    )
    assert again.status_code == 200, again.text
    assert again.json()["created"] == 0
    for body in ({"instances": []}, {"instances": [{"business_key": ""}]}, {}):
        problem_of(api.post(START.format("fulfil-order") + "/batch", json=body), 422)
    too_many = {"instances": [{"business_key": f"k{n}"} for n in range(1001)]}
    problem_of(api.post(START.format("fulfil-order") + "/batch", json=too_many), 422)
    unknown = api.post(
        START.format("no-such-process") + "/batch", json={"instances": [{"business_key": "k"}]}
    )
    assert "'no-such-process'" in problem_of(unknown, 404)["detail"]


def test_starting_an_unknown_process_or_without_a_key_is_a_problem(api: httpx.Client) -> None:
    unknown = problem_of(
        api.post(START.format("no-such-process"), json={"business_key": new_key()}), 404
    )
    assert "'no-such-process'" in unknown["detail"]
    assert "fulfil-order" in unknown["fix"]
    for body in ({"input": {}}, {"business_key": ""}, {"business_key": "k", "extra": 1}):
        problem_of(api.post(START.format("fulfil-order"), json=body), 422)
    broken = {"content-type": "application/json"}
    problem_of(api.post(START.format("fulfil-order"), content=b"{", headers=broken), 422)


def test_instances_are_found_by_process_status_business_key_and_time(
    api: httpx.Client, erp: SimProcess
) -> None:
    early_key, held_key, ended_key = new_key(), new_key(), new_key()
    early = start(api, "fulfil-order", early_key)
    await_instance(api, early, step_is("approval", "waiting"))
    time.sleep(0.05)
    mark = time.time()
    time.sleep(0.05)
    held = start(api, "held-order", held_key)
    ended = start(api, "fulfil-order", ended_key)
    await_instance(api, held, status_is("completed"))
    await_instance(api, ended, step_is("approval", "waiting"))
    queued(api, ended, "terminate", by="ops")
    await_instance(api, ended, status_is("terminated"))

    def ids(**filters: Any) -> set[str]:
        return {r["id"] for r in search(api, **filters)} & {early, held, ended}

    assert ids(process="fulfil-order") == {early, ended}
    assert ids(process="held-order") == {held}
    assert ids(status="waiting") == {early}
    assert ids(status="terminated") == {ended}
    assert ids(process="fulfil-order", status="completed") == set()
    assert ids(business_key=held_key) == {held}
    assert ids(since=iso(mark)) == {held, ended}
    assert ids(until=iso(mark)) == {early}
    assert ids(since=iso(mark), until=iso(time.time() + 60), process="fulfil-order") == {ended}
    [row] = search(api, business_key=held_key)
    assert row["process"] == "held-order"
    assert row["status"] == "completed"
    assert row["version"] == 1
    assert mark < row["created_at"] <= row["updated_at"]
    assert "state" not in row
    counts = api.get("/v1/processes").json()["instances"]
    assert counts["terminated"] >= 1 and counts["completed"] >= 1


def test_a_malformed_time_window_is_the_clients_problem(api: httpx.Client) -> None:
    response = api.get("/v1/processes/instances", params={"since": "yesterday"})
    assert response.status_code in (400, 422), response.text
    assert "yesterday" in response.json()["detail"]


# Operating instances -------------------------------------------------------------------


def test_an_order_is_approved_dispatched_and_delivered_with_a_full_timeline(
    api: httpx.Client, erp: SimProcess
) -> None:
    key = new_key()
    ident = start(api, "fulfil-order", key, total=42.0)
    await_instance(api, ident, step_is("approval", "waiting"))
    assert "not waiting for this signal" in refused(api, ident, "signal", name="delivered")
    queued(api, ident, "approve", step="approval", approved=True, by="alice", comment="credit ok")
    await_instance(api, ident, step_is("dispatched", "waiting"))
    assert "not waiting for a decision" in refused(
        api, ident, "approve", step="approval", approved=True, by="alice"
    )

    # Only the shipment of this order satisfies the wait.
    post_event(api, "warehouse", shipment(f"ship-{uuid.uuid4()}", new_key(), "UPS"))
    post_event(api, "warehouse", shipment(f"ship-{uuid.uuid4()}", key, "DHL"))
    await_instance(api, ident, step_is("delivered", "waiting"))
    queued(api, ident, "signal", name="delivered", data={"signed_by": "bob"})
    found = await_instance(api, ident, status_is("completed"))

    outputs = found["context"]["steps"]
    order = outputs["create_order"]["id"]
    assert outputs == {
        "create_order": {"id": order, "external_ref": key, "status": "open"},
        "approval": {"approved": True, "by": "alice", "comment": "credit ok"},
        "dispatched": {"order_ref": key, "carrier": "DHL"},
        "delivered": {"signed_by": "bob"},
    }
    assert found["context"]["input"] == {"id": key, "total": 42.0}
    assert erp_order(erp, order)["total"] == 42.0
    assert applied_for(erp, ident) == [f"{ident}:create_order"]
    steps = found["steps"]
    assert list(steps) == ["create_order", "approval", "dispatched", "delivered"]
    assert all(s["status"] == "completed" for s in steps.values())
    assert steps["create_order"]["attempt"] == 1
    assert all(s["started"] <= s["ended"] for s in steps.values())
    [approved] = history(found, "approved", "approval")
    assert (approved["by"], approved["comment"]) == ("alice", "credit ok")
    assert [(h.get("step"), h["what"]) for h in found["timeline"]] == [
        (None, "started"),
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
        (None, "completed"),
    ]
    times = [h["at"] for h in found["timeline"]]
    assert times == sorted(times)
    assert found["waits"] == {} and found["timers"] == {}

    # Nothing applies to an instance that has ended.
    assert "already ended (completed)" in refused(api, ident, "cancel", by="ops")
    assert "already ended (completed)" in refused(api, ident, "terminate", by="ops")
    assert "only a failed instance" in refused(api, ident, "retry", by="ops")
    refused(api, ident, "skip", step="delivered", by="ops")


def test_the_timeline_shows_what_each_call_step_sent(api: httpx.Client, erp: SimProcess) -> None:
    ident = start(api, "fulfil-order", new_key(), total=12.34)
    found = await_instance(api, ident, step_is("approval", "waiting"))
    recorded = [h for h in found["timeline"] if h.get("step") == "create_order"]
    recorded.append(found["steps"]["create_order"])
    assert b"12.34" in orjson.dumps(recorded), recorded


def test_an_event_is_handed_over_through_the_api_and_a_waiting_step_is_skipped(
    api: httpx.Client, erp: SimProcess
) -> None:
    key = new_key()
    ident = start(api, "fulfil-order", key)
    await_instance(api, ident, step_is("approval", "waiting"))
    queued(api, ident, "skip", step="approval", by="dora")
    await_instance(api, ident, step_is("dispatched", "waiting"))
    queued(api, ident, "event", data={"order_ref": key, "carrier": "courier"})
    await_instance(api, ident, step_is("delivered", "waiting"))
    queued(api, ident, "skip", step="delivered", by="dora")
    found = await_instance(api, ident, status_is("completed"))
    assert found["steps"]["approval"]["status"] == "skipped"
    assert found["steps"]["delivered"]["status"] == "skipped"
    assert found["context"]["steps"]["approval"] is None
    assert found["context"]["steps"]["dispatched"] == {"order_ref": key, "carrier": "courier"}
    assert [h["by"] for h in found["timeline"] if h["what"] == "skipped"] == ["dora", "dora"]


def test_an_event_for_an_instance_that_waits_for_none_is_a_conflict(
    api: httpx.Client, erp: SimProcess
) -> None:
    ident = start(api, "fulfil-order", new_key())
    await_instance(api, ident, step_is("approval", "waiting"))
    refused(api, ident, "event", data={"order_ref": "x", "carrier": "y"})


def test_a_rejection_compensates_the_erp_order_and_records_who(
    api: httpx.Client, erp: SimProcess
) -> None:
    ident = start(api, "fulfil-order", new_key())
    await_instance(api, ident, step_is("approval", "waiting"))
    queued(api, ident, "approve", step="approval", approved=False, by="carol", comment="no")
    found = await_instance(api, ident, status_is("compensated"))
    assert found["reason"] == "step approval failed: rejected by carol: no"
    [rejected] = history(found, "rejected", "approval")
    assert rejected["by"] == "carol"
    assert found["steps"]["approval"]["status"] == "failed"
    assert found["steps"]["create_order"]["status"] == "compensated"
    assert len(history(found, "compensation attempt", "create_order")) == 1
    assert len(history(found, "compensated", "create_order")) == 1
    order = found["context"]["steps"]["create_order"]["id"]
    assert erp_order(erp, order)["status"] == "cancelled"
    assert sorted(applied_for(erp, ident)) == [
        f"{ident}:create_order",
        f"{ident}:create_order:compensate",
    ]
    assert "already ended (compensated)" in refused(api, ident, "cancel", by="ops")


def test_cancel_compensates_the_erp_order_and_terminate_ends_at_once(
    api: httpx.Client, erp: SimProcess
) -> None:
    cancelled = start(api, "fulfil-order", new_key())
    terminated = start(api, "fulfil-order", new_key())
    for ident in (cancelled, terminated):
        await_instance(api, ident, step_is("approval", "waiting"))
    queued(api, cancelled, "cancel", by="dave", reason="customer withdrew")
    queued(api, terminated, "terminate", by="erin", reason="entered twice")

    found = await_instance(api, cancelled, status_is("cancelled"))
    assert found["reason"] == "cancelled by dave: customer withdrew"
    [cancel] = history(found, "cancel")
    assert (cancel["by"], cancel["reason"]) == ("dave", "customer withdrew")
    assert [(h.get("step"), h["what"]) for h in found["timeline"]][-5:] == [
        (None, "cancel"),
        (None, "compensating"),
        ("create_order", "compensation attempt"),
        ("create_order", "compensated"),
        (None, "cancelled"),
    ]
    assert found["steps"]["create_order"]["status"] == "compensated"
    order = found["context"]["steps"]["create_order"]["id"]
    assert erp_order(erp, order)["status"] == "cancelled"
    assert f"{cancelled}:create_order:compensate" in applied_for(erp, cancelled)

    ended = await_instance(api, terminated, status_is("terminated"))
    assert ended["reason"] == "terminated by erin: entered twice"
    assert history(ended, "terminate")[0]["by"] == "erin"
    assert history(ended, "compensation attempt", "create_order") == []
    kept = ended["context"]["steps"]["create_order"]["id"]
    assert erp_order(erp, kept)["status"] == "open"
    assert applied_for(erp, terminated) == [f"{terminated}:create_order"]

    assert "already ended (cancelled)" in refused(api, cancelled, "cancel", by="ops")
    assert "already ended (terminated)" in refused(api, terminated, "terminate", by="ops")
    assert "already ended (terminated)" in refused(api, terminated, "cancel", by="ops")


def test_a_held_instance_is_retried_from_its_failed_step_or_skips_it(
    api: httpx.Client, erp: SimProcess
) -> None:
    erp.fault(outage=True)
    retried = start(api, "held-order", new_key())
    skipped = start(api, "held-order", new_key())
    for ident in (retried, skipped):
        held = await_instance(api, ident, status_is("failed"))
        step = held["steps"]["create_order"]
        assert step["status"] == "failed"
        assert step["attempt"] == 1
        assert "503" in step["error"]
        assert held["reason"].startswith("step create_order failed: erp answered 503")
        assert len(history(held, "held")) == 1
    assert "only a failed step" in refused(api, skipped, "skip", step="tell_finance", by="ops")
    erp.clear_faults()

    queued(api, retried, "retry", by="fred")
    queued(api, skipped, "skip", step="create_order", by="gina")
    done = await_instance(api, retried, status_is("completed"))
    assert history(done, "retry")[0]["by"] == "fred"
    assert [h["attempt"] for h in history(done, "attempt", "create_order")] == [1, 2]
    assert len(history(done, "failed", "create_order")) == 1
    assert done["context"]["steps"]["create_order"]["id"].startswith("SO-")
    assert applied_for(erp, retried) == [f"{retried}:create_order"]

    passed = await_instance(api, skipped, status_is("completed"))
    assert passed["steps"]["create_order"]["status"] == "skipped"
    assert passed["context"]["steps"]["create_order"] is None
    assert history(passed, "skipped", "create_order")[0]["by"] == "gina"
    assert applied_for(erp, skipped) == []

    escalations = api.get("/v1/escalations", params={"team": "finance-ops"}).json()
    told = {(e["instance_id"], e["step"]) for e in escalations["escalations"]}
    assert {(retried, "tell_finance"), (skipped, "tell_finance")} <= told
    assert "only a failed instance" in refused(api, retried, "retry", by="fred")


# Waiting for an instance to end ---------------------------------------------------------


def test_a_request_with_wait_is_answered_once_the_instance_ends(api: httpx.Client) -> None:
    ident = start(api, "fulfil-order", new_key())
    await_instance(api, ident, step_is("approval", "waiting"))
    shown = f"/v1/processes/instances/{ident}"

    # Still waiting for its approval when the wait runs out: answered as it is then.
    began = time.monotonic()
    held = api.get(shown, params={"wait": "300ms"})
    assert held.status_code == 200, held.text
    assert held.json()["status"] == "waiting"
    assert time.monotonic() - began >= 0.3

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.get, shown, params={"wait": "30s"}, timeout=40)
        time.sleep(0.5)
        assert not waiting.done(), "answered before the instance ended"
        queued(api, ident, "cancel", by="hal", reason="no longer wanted")
        answer = waiting.result(timeout=40)
    assert answer.status_code == 200, answer.text
    ended = answer.json()
    assert ended["status"] == "cancelled"
    assert ended["reason"] == "cancelled by hal: no longer wanted"
    assert ended["timeline"][-1]["what"] == "cancelled"

    # An instance that has ended is answered at once.
    began = time.monotonic()
    again = api.get(shown, params={"wait": "30s"}, timeout=40)
    assert again.json()["status"] == "cancelled"
    assert time.monotonic() - began < 10


def test_a_wait_that_is_no_duration_or_too_long_is_the_clients_problem(
    api: httpx.Client,
) -> None:
    nobody = f"/v1/processes/instances/{uuid.uuid4()}"
    for value, says in (
        ("soon", "wait='soon' is not a duration"),
        ("-1s", "wait='-1s' is not a duration"),
        ("2m", "wait='2m' is longer than the 60s a request may wait"),
    ):
        problem = problem_of(api.get(nobody, params={"wait": value}), 400)
        assert says in problem["detail"]
        assert "wait=30s" in problem["fix"] or "at most 60s" in problem["fix"]
    # An unknown instance is not waited for.
    began = time.monotonic()
    problem_of(api.get(nobody, params={"wait": "30s"}, timeout=40), 404)
    assert time.monotonic() - began < 10


def test_unknown_instances_and_operations_are_problems(api: httpx.Client, erp: SimProcess) -> None:
    nobody = str(uuid.uuid4())
    assert nobody in problem_of(api.get(f"/v1/processes/instances/{nobody}"), 404)["detail"]
    for operation in ("cancel", "terminate", "retry", "signal", "approve"):
        problem_of(operate(api, nobody, operation, by="ops", name="x", step="x"), 404)
    ident = start(api, "fulfil-order", new_key())
    await_instance(api, ident, step_is("approval", "waiting"))
    assert "'explode'" in problem_of(operate(api, ident, "explode"), 400)["detail"]
    assert (
        "'approved'" in problem_of(operate(api, ident, "approve", step="approval"), 400)["detail"]
    )
    assert "'name'" in problem_of(operate(api, ident, "signal"), 400)["detail"]
    problem_of(operate(api, ident, "cancel", by="ops", surprise=True), 422)
    assert "no step 'nope'" in refused(api, ident, "skip", step="nope", by="ops")


# Business events -----------------------------------------------------------------------


def test_a_closed_deal_starts_one_instance_per_deal_even_when_resent(
    api: httpx.Client, erp: SimProcess
) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second = deal(f"{tag}-1", amount=30.0), deal(f"{tag}-2")
    deal_id = first["data"]["id"]
    post_event(api, "crm", first)
    post_event(api, "crm", first)  # the same CloudEvent again
    post_event(api, "crm", {**first, "id": f"{tag}-1-again"})  # another event, same deal
    post_event(api, "crm", second)

    [row] = search(api, process="deal-onboarding", business_key=deal_id)
    [other] = search(api, process="deal-onboarding", business_key=second["data"]["id"])
    assert row["id"] != other["id"]
    found = await_instance(api, row["id"], step_is("dispatched", "waiting"))
    assert found["context"]["input"] == first["data"]
    assert found["context"]["steps"]["create_order"]["external_ref"] == deal_id
    assert erp_order(erp, found["context"]["steps"]["create_order"]["id"])["total"] == 30.0
    await_instance(api, other["id"], step_is("dispatched", "waiting"))
    assert applied_for(erp, row["id"]) == [f"{row['id']}:create_order"]
    assert applied_for(erp, other["id"]) == [f"{other['id']}:create_order"]

    post_event(api, "warehouse", shipment(f"ship-{tag}", deal_id))
    done = await_instance(api, row["id"], status_is("completed"))
    assert done["context"]["steps"]["dispatched"] == {"order_ref": deal_id, "carrier": "DHL"}
    assert instance(api, other["id"])["status"] == "waiting"


def test_a_shipment_announced_while_the_instance_is_busy_is_not_lost(
    api: httpx.Client, erp: SimProcess
) -> None:
    erp.fault(latency_ms=1500)
    closed = deal(uuid.uuid4().hex[:8])
    deal_id = closed["data"]["id"]
    post_event(api, "crm", closed)
    [row] = search(api, process="deal-onboarding", business_key=deal_id)
    busy = instance(api, row["id"])
    assert busy["status"] == "running"
    assert busy["steps"]["create_order"]["status"] == "running"
    assert busy["waits"] == {}
    post_event(api, "warehouse", shipment(f"ship-{uuid.uuid4()}", deal_id, "DPD"))
    announced = time.time()

    found = await_instance(api, row["id"], status_is("completed"))
    # The wait was set up after the shipment had been announced, and still saw it.
    assert found["steps"]["dispatched"]["started"] > announced
    assert found["context"]["steps"]["dispatched"] == {"order_ref": deal_id, "carrier": "DPD"}
    assert applied_for(erp, row["id"]) == [f"{row['id']}:create_order"]


def test_business_events_reach_the_runner_at_once(
    deployment: ProcessDeployment, erp: SimProcess
) -> None:
    api = deployment.api
    closed = deal(uuid.uuid4().hex[:8])
    deal_id = closed["data"]["id"]
    post_event(api, "crm", closed)
    [row] = search(api, process="deal-onboarding", business_key=deal_id)
    found = await_instance(api, row["id"], step_is("dispatched", "waiting"))
    [begun] = history(found, "started", "create_order")
    [called] = history(found, "completed", "create_order")
    post_event(api, "warehouse", shipment(f"ship-{deal_id}", deal_id))
    announced = time.time()
    found = await_instance(api, row["id"], status_is("completed"))
    lags = [called["at"] - begun["at"], found["steps"]["dispatched"]["ended"] - announced]
    assert max(lags) < 1.0, lags
