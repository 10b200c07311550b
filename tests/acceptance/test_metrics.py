"""``GET /metrics`` as Prometheus scrapes it from a running hub."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from charter.sim import SimProcess
from tests.acceptance.conftest import (
    INTEGRATION,
    deals,
    post_events,
    running_hub,
    settled,
    wait_until,
)
from tests.conftest import copy_starter


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_show_deliveries_quota_use_per_flow_and_breakers(
    tmp_path: Path, erp: SimProcess
) -> None:
    project = copy_starter(tmp_path / "project")
    with running_hub(project, erp) as hub:
        post_events(hub.client, deals(25))
        wait_until(hub.stats, settled(25), 30)
        flow = (("flow", INTEGRATION), ("system", "erp"), ("tier", "revenue-critical"))
        # Quota use is saved about once a second; wait for this flow's 25 grants.
        samples = wait_until(
            lambda: scrape(hub.client),
            lambda s: s.get(("charter_quota_granted_total", flow)) == 25,
            15,
        )
    assert samples[("charter_events_received_total", ())] == 25
    assert samples[("charter_deliveries", (("status", "delivered"),))] == 25
    assert samples[("charter_deliveries", (("status", "pending"),))] == 0
    assert samples[("charter_delivery_attempts_total", ())] == 25
    assert samples[("charter_quota_rate_per_second", (("system", "erp"),))] == 500
    assert samples[("charter_quota_paused", (("system", "erp"),))] == 0
    assert samples[("charter_quota_rate_limited_total", flow)] == 0
    for state, value in (("closed", 1), ("open", 0), ("half_open", 0)):
        labels = (("endpoint", "*"), ("state", state), ("system", "erp"))
        assert samples[("charter_breaker_state", labels)] == value
