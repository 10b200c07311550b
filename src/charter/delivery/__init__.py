"""Delivery: workers that call targets, with retry policy and dead letters."""

from charter.delivery.retry import Decision, backoff_delay, decide
from charter.delivery.worker import DeliveryWorker, WorkerSettings, connectors_for, worker_id

__all__ = [
    "Decision",
    "DeliveryWorker",
    "WorkerSettings",
    "backoff_delay",
    "connectors_for",
    "decide",
    "worker_id",
]
