"""``GET /metrics``: the hub's state in Prometheus' text format.

Read at scrape time from the store, so every Charter process answers the
same figures: deliveries by status, quota budgets and their use per flow
(integration or process), circuit breaker states, process instances by
status. Metric names follow Prometheus' conventions (``charter_`` prefix,
``_total`` for counters).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from charter.delivery.overview import breaker_report, quota_report
from charter.runtime import Hub
from charter.store.resilience import ResilienceStore

BREAKER_STATES = ("closed", "open", "half_open")


class HubCollector(Collector):
    """Collects the hub's figures on each scrape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.resilience = ResilienceStore(hub.store.engine)

    def collect(self) -> Iterator[Metric]:
        yield from self._deliveries()
        yield from self._quotas()
        yield from self._breakers()
        yield from self._processes()

    def _deliveries(self) -> Iterator[Metric]:
        counts = self.hub.store.delivery_counts()
        received = CounterMetricFamily("charter_events_received", "Events accepted by the hub.")
        received.add_metric([], counts.received)
        yield received
        by_status = GaugeMetricFamily(
            "charter_deliveries", "Deliveries by status.", labels=["status"]
        )
        for status in ("pending", "delivered", "dead", "quarantined"):
            by_status.add_metric([status], getattr(counts, status))
        yield by_status
        attempts = CounterMetricFamily("charter_delivery_attempts", "Delivery attempts made.")
        attempts.add_metric([], counts.attempts)
        yield attempts
        fallback = GaugeMetricFamily(
            "charter_deliveries_fallback",
            "Deliveries a fallback took while the target's breaker was open, per integration.",
            labels=["integration"],
        )
        for integration, count in self.hub.store.fallback_counts().items():
            fallback.add_metric([integration], count)
        yield fallback

    def _quotas(self) -> Iterator[Metric]:
        report = quota_report(self.hub.project, self.resilience)
        tokens = GaugeMetricFamily(
            "charter_quota_tokens", "Tokens left in a system's budget.", labels=["system"]
        )
        rate = GaugeMetricFamily(
            "charter_quota_rate_per_second", "A system's declared budget.", labels=["system"]
        )
        paused = GaugeMetricFamily(
            "charter_quota_paused", "1 while a 429 pauses the system.", labels=["system"]
        )
        today = GaugeMetricFamily(
            "charter_quota_used_today", "Calls counted today (UTC).", labels=["system"]
        )
        labels = ["system", "flow", "tier"]
        granted = CounterMetricFamily(
            "charter_quota_granted", "Calls granted by the budget, per flow.", labels=labels
        )
        deferred = CounterMetricFamily(
            "charter_quota_deferred", "Calls held back without an attempt.", labels=labels
        )
        limited = CounterMetricFamily(
            "charter_quota_rate_limited", "429 answers received, per flow.", labels=labels
        )
        for row in report:
            system = row["system"]
            tokens.add_metric([system], row["tokens"])
            rate.add_metric([system], row["rate_per_s"])
            paused.add_metric([system], 1.0 if row["paused"] else 0.0)
            today.add_metric([system], row["used_today"])
            for flow in row["flows"]:
                key = [system, flow["flow"], flow["tier"]]
                granted.add_metric(key, flow["granted"])
                deferred.add_metric(key, flow["deferred"])
                limited.add_metric(key, flow["rate_limited"])
        yield from (tokens, rate, paused, today, granted, deferred, limited)

    def _breakers(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "charter_breaker_state",
            '1 for the state each circuit breaker is in (endpoint "*": the whole system).',
            labels=["system", "endpoint", "state"],
        )
        for row in breaker_report(self.hub.project, self.resilience):
            for name in BREAKER_STATES:
                state.add_metric(
                    [row["system"], row["endpoint"] or "*", name],
                    1.0 if row["state"] == name else 0.0,
                )
        yield state

    def _processes(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "charter_process_instances", "Process instances by status.", labels=["status"]
        )
        for status, count in sorted(self.hub.processes.store.counts().items()):
            instances.add_metric([status], count)
        yield instances


def metrics_routes(hub: Hub) -> APIRouter:
    router = APIRouter(tags=["operations"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format: deliveries, quotas per system and flow, breakers, processes."""
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
