"""SIGKILL the hub during a 20,000-event ingest: nothing acknowledged is lost or doubled."""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from charter.hub import delivery_key, event_id
from charter.processes import HubProcess
from charter.sim import spawn
from tests.conftest import copy_starter

EVENTS = 20_000
BATCH = 50
KILLS = 10
INTEGRATION = "deal-to-erp-order"


def deal(n: int) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"chaos-{n}",
        "source": "crm.chaos",
        "type": "deal.closed",
        "data": {
            "id": f"D-{n:06d}",
            "account": {"id": f"A-{n % 97:05d}", "name": f"Account {n % 97}"},
            "amount": float(n % 1000),
            "currency": "EUR",
            "stage": "closed_won",
        },
    }


class RetryingClient(threading.Thread):
    """Sends every batch until it gets 202, retrying what was not acknowledged."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent_batches = 0
        self.acknowledged: list[str] = []
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=10.0, trust_env=False) as client:
                for start in range(0, EVENTS, BATCH):
                    batch = [deal(n) for n in range(start, start + BATCH)]
                    body, key = orjson.dumps(batch), str(uuid.uuid4())
                    while True:
                        try:
                            response = client.post(
                                "/v1/systems/crm/events",
                                content=body,
                                headers={
                                    "content-type": "application/cloudevents-batch+json",
                                    "idempotency-key": key,
                                },
                            )
                        except httpx.TransportError:
                            response = None
                        if response is not None and response.status_code == 202:
                            break
                        assert (
                            response is None
                            or response.status_code >= 500
                            or (response.status_code == 409)
                        ), response.text
                        self.retries += 1
                        time.sleep(0.05)
                    self.acknowledged.extend(e["id"] for e in batch)  # type: ignore[misc]
                    self.sent_batches += 1
        except BaseException as exc:
            self.error = exc


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_during_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    project = copy_starter(tmp_path / "project")
    rng = random.Random(20_000)
    with spawn("erp") as erp:
        hub = HubProcess(project, env={"CHARTER_ERP_URL": erp.url}).start()
        client = RetryingClient(hub.url)
        client.start()
        total_batches = EVENTS // BATCH
        kills = 0
        try:
            for segment in range(KILLS):
                # One kill at a random point in each tenth of the ingest.
                low = total_batches * segment // (KILLS + 1)
                high = total_batches * (segment + 1) // (KILLS + 1)
                threshold = rng.randint(max(low, 1), high)
                while client.sent_batches < threshold and client.is_alive():
                    time.sleep(0.005)
                assert client.is_alive(), f"ingest ended before kill {segment + 1}"
                time.sleep(rng.uniform(0, 0.05))
                hub.kill()
                kills += 1
                hub.start()
            client.join(timeout=300)
            assert client.error is None, repr(client.error)
            assert not client.is_alive()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                stats = hub.stats()
                if stats["deliveries"]["pending"] == 0:
                    break
                time.sleep(0.25)
            stats = hub.stats()
        finally:
            hub.close()
        applied = set(httpx.get(f"{erp.url}/admin/applied", trust_env=False).json())
        report = erp.report()

    assert kills == KILLS
    expected = {delivery_key(event_id("crm", ce_id), INTEGRATION) for ce_id in client.acknowledged}
    assert len(expected) == EVENTS
    assert stats["received"] == EVENTS, stats
    assert stats["deliveries"]["dead"] == 0, stats
    assert stats["deliveries"]["pending"] == 0, stats
    assert expected - applied == set(), (
        f"{len(expected - applied)} acknowledged events never applied"
    )
    assert applied - expected == set()
    assert report["applied"] == EVENTS
    assert report["applied_more_than_once"] == 0
