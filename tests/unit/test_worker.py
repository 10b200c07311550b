"""The delivery worker over the in-memory store, calling scripted fake targets."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from charter.catalog import load_project
from charter.connectors import TargetRequest, TargetResponse
from charter.delivery import DeliveryWorker, WorkerSettings
from charter.errors import ConnectorError, RateLimited, TargetRejected, TargetUnavailable
from charter.hub import Router, delivery_key, event_id
from charter.hub.parsing import CloudEvent
from charter.store import IngestBatch, MemoryStore

INTEGRATION = "deal-to-erp-order"
SETTINGS = WorkerSettings(idle_poll=0.01, flush_interval=0.005, grace_seconds=2.0)


@dataclass(frozen=True)
class Reply:
    """What a fake target does with one call: wait, then answer or fail."""

    status: int = 201
    error: ConnectorError | None = None
    delay: float = 0.0


class ScriptedTarget:
    """A :class:`~charter.connectors.Connector` answering from a script and recording calls.

    ``script`` is either the replies in call order (the last one repeats) or a
    function choosing the reply from the request.
    """

    def __init__(self, script: list[Reply] | Callable[[TargetRequest], Reply]) -> None:
        self.script = script
        self.calls: list[TargetRequest] = []
        self.finished: list[TargetRequest] = []

    async def call(self, request: TargetRequest) -> TargetResponse:
        self.calls.append(request)
        if callable(self.script):
            reply = self.script(request)
        else:
            reply = self.script[min(len(self.calls), len(self.script)) - 1]
        await asyncio.sleep(reply.delay)
        self.finished.append(request)
        if reply.error is not None:
            raise reply.error
        return TargetResponse(reply.status, b"{}")

    async def aclose(self) -> None:
        pass


def deal(number: int = 1) -> dict[str, Any]:
    return {
        "id": f"D-{number}",
        "account": {"id": "A-1", "name": "Acme"},
        "amount": 10,
        "currency": "EUR",
        "stage": "closed_won",
        "lines": [{"sku": "X1", "qty": 2, "unit_price": 5}],
    }


def ingest(router: Router, store: MemoryStore, *numbers: int) -> list[str]:
    """Store deals as the ingest path would; returns their hub event ids."""
    events = [
        CloudEvent(f"deal-{n}", "crm", "deal.closed", None, None, deal(n)) for n in numbers or (1,)
    ]
    prepared = router.prepare("crm", events, batch=False)
    store.append([IngestBatch(prepared)])
    return [e.id for e in prepared]


def run_until(
    worker: DeliveryWorker,
    reached: Callable[[], bool],
    timeout: float = 5.0,
    stop_timeout: float = 5.0,
) -> float:
    """Run ``worker`` until ``reached()`` holds, then stop it; returns how long stopping took."""

    async def main() -> float:
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + timeout
        while not reached() and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        done = reached()
        stopping = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, stop_timeout)
        assert done, f"the expected state was not reached within {timeout}s"
        return time.monotonic() - stopping

    return asyncio.run(main())


@pytest.fixture
def router(project_dir: Path) -> Router:
    return Router(load_project(project_dir))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def worker_for(
    router: Router, store: MemoryStore, target: ScriptedTarget, **settings: float
) -> DeliveryWorker:
    chosen = replace(SETTINGS, **settings)
    return DeliveryWorker(
        router, store, {"erp": target}, chosen, name="worker-1", rng=random.Random(3)
    )


def only_delivery(store: MemoryStore) -> dict[str, Any]:
    [delivery] = store.list_deliveries()
    return delivery


def status_is(store: MemoryStore, status: str) -> Callable[[], bool]:
    return lambda: all(d["status"] == status for d in store.list_deliveries())


def test_a_delivery_is_made_and_recorded(router: Router, store: MemoryStore) -> None:
    ingest(router, store)
    target = ScriptedTarget([Reply(201)])
    run_until(worker_for(router, store, target), status_is(store, "delivered"))
    delivery = only_delivery(store)
    assert (delivery["attempts"], delivery["last_status"], delivery["last_error"]) == (1, 201, None)
    assert delivery["lease_owner"] is None
    assert delivery["delivered_at"] >= delivery["created_at"]
    [attempt] = store.delivery_attempts(delivery["id"])
    assert (attempt["number"], attempt["outcome"], attempt["status_code"]) == (1, "delivered", 201)
    assert len(target.calls) == 1
    assert store.delivery_counts().delivered == 1


def test_the_target_gets_the_erp_mapping_of_the_canonical_order(
    router: Router, store: MemoryStore
) -> None:
    [hub_id] = ingest(router, store)
    target = ScriptedTarget([Reply(201)])
    run_until(worker_for(router, store, target), status_is(store, "delivered"))
    [request] = target.calls
    assert (request.method, request.path) == ("POST", "/orders")
    assert orjson.loads(request.body) == {
        "external_ref": "D-1",
        "customer": {"ref": "A-1", "name": "Acme"},
        "total": 10,
        "currency": "EUR",
        "status": "open",
        "lines": [{"sku": "X1", "quantity": 2, "unit_price": 5}],
    }
    assert request.idempotency_key == delivery_key(hub_id, INTEGRATION)
    assert request.headers == {"x-charter-event-id": hub_id, "x-charter-integration": INTEGRATION}
    assert hub_id == event_id("crm", "deal-1")


def test_an_outage_is_retried_with_the_same_idempotency_key(
    router: Router, store: MemoryStore
) -> None:
    ingest(router, store)
    unavailable = TargetUnavailable("erp answered 503", status_code=503, error_class="http_503")
    target = ScriptedTarget([Reply(error=unavailable), Reply(201)])
    run_until(worker_for(router, store, target), status_is(store, "delivered"))
    delivery = only_delivery(store)
    assert delivery["attempts"] == 2
    attempts = store.delivery_attempts(delivery["id"])
    assert [(a["number"], a["outcome"], a["status_code"]) for a in attempts] == [
        (1, "retry", 503),
        (2, "delivered", 201),
    ]
    assert attempts[0]["error"] == "erp answered 503"
    keys = [call.idempotency_key for call in target.calls]
    assert keys == [delivery["idempotency_key"]] * 2
    assert target.calls[0].body == target.calls[1].body
    assert store.delivery_counts().retried == 1


def test_retry_after_puts_the_next_attempt_at_least_that_far_away(
    router: Router, store: MemoryStore
) -> None:
    ingest(router, store)
    limited = RateLimited("erp answered 429", retry_after=2.0)
    target = ScriptedTarget([Reply(error=limited), Reply(201)])
    run_until(worker_for(router, store, target), lambda: only_delivery(store)["attempts"] == 1)
    delivery = only_delivery(store)
    [attempt] = store.delivery_attempts(delivery["id"])
    assert (delivery["status"], attempt["outcome"], attempt["status_code"]) == (
        "pending",
        "retry",
        429,
    )
    assert delivery["next_attempt_at"] >= attempt["started_at"] + 2.0
    assert len(target.calls) == 1
    assert store.claim_due_deliveries("worker-2", 10, 60.0) == []


def test_a_rejection_is_dead_lettered_at_once_with_the_reason(
    router: Router, store: MemoryStore
) -> None:
    ingest(router, store)
    rejected = TargetRejected("erp answered 422 to POST /orders: unknown currency", status_code=422)
    target = ScriptedTarget([Reply(error=rejected)])
    run_until(worker_for(router, store, target), status_is(store, "dead"))
    delivery = only_delivery(store)
    assert (delivery["attempts"], delivery["last_status"]) == (1, 422)
    assert delivery["last_error"] == (
        "not retryable: erp answered 422 to POST /orders: unknown currency"
    )
    assert len(target.calls) == 1
    assert store.delivery_counts().dead == 1


def test_exhausted_retries_are_dead_lettered(project_dir: Path, store: MemoryStore) -> None:
    integration = project_dir / "integrations" / "deal-to-erp-order.yaml"
    text = integration.read_text()
    text = text.replace("max_attempts: 12", "max_attempts: 3")
    text = text.replace("initial_backoff: 200ms", "initial_backoff: 1ms")
    integration.write_text(text.replace("max_backoff: 10s", "max_backoff: 5ms"))
    router = Router(load_project(project_dir))
    ingest(router, store)
    unavailable = TargetUnavailable("erp answered 503", status_code=503, error_class="http_503")
    target = ScriptedTarget([Reply(error=unavailable)])
    run_until(worker_for(router, store, target), status_is(store, "dead"))
    delivery = only_delivery(store)
    assert delivery["attempts"] == 3
    assert delivery["last_error"] == "gave up after 3 attempts: erp answered 503"
    outcomes = [a["outcome"] for a in store.delivery_attempts(delivery["id"])]
    assert outcomes == ["retry", "retry", "dead"]
    assert len({call.idempotency_key for call in target.calls}) == 1
    assert len(target.calls) == 3


def test_stop_finishes_calls_within_the_grace_and_releases_the_rest(
    router: Router, store: MemoryStore
) -> None:
    quick_id, slow_id = ingest(router, store, 1, 2)

    def script(request: TargetRequest) -> Reply:
        slow = orjson.loads(request.body)["external_ref"] == "D-2"
        return Reply(201, delay=30.0 if slow else 0.2)

    target = ScriptedTarget(script)
    worker = worker_for(router, store, target, grace_seconds=0.6)
    stopping = run_until(worker, lambda: len(target.calls) == 2)
    assert 0.5 <= stopping < 2.0
    by_event = {d["event_id"]: d for d in store.list_deliveries()}
    quick, slow = by_event[quick_id], by_event[slow_id]
    assert (quick["status"], quick["attempts"]) == ("delivered", 1)
    assert [orjson.loads(r.body)["external_ref"] for r in target.finished] == ["D-1"]
    # The call cut short by the stop is not an attempt, and its lease is free at once.
    assert (slow["status"], slow["attempts"]) == ("pending", 0)
    assert (slow["lease_owner"], slow["lease_expires_at"]) == (None, None)
    assert store.delivery_attempts(slow["id"]) == []
    assert [d.id for d in store.claim_due_deliveries("worker-2", 10, 60.0)] == [slow["id"]]


def test_stop_takes_effect_within_the_grace_when_every_slot_is_busy(
    router: Router, store: MemoryStore
) -> None:
    ingest(router, store)
    target = ScriptedTarget([Reply(201, delay=3.0)])
    worker = worker_for(router, store, target, concurrency=1, grace_seconds=0.2)
    stopping = run_until(worker, lambda: len(target.calls) == 1, stop_timeout=1.0)
    assert stopping < 1.0
    assert only_delivery(store)["attempts"] == 0
