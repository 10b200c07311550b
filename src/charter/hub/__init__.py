"""The hub's ingest path: parse with limits, validate, map, append with deliveries."""

from charter.hub.parsing import CloudEvent, IngestLimits, parse_body
from charter.hub.routing import Router, delivery_key, event_id
from charter.hub.service import IngestAnswer, IngestService

__all__ = [
    "CloudEvent",
    "IngestAnswer",
    "IngestLimits",
    "IngestService",
    "Router",
    "delivery_key",
    "event_id",
    "parse_body",
]
