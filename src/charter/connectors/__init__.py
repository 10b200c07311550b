"""Connectors: how the hub calls systems. Cross-cutting behaviour wraps them, not copies."""

from charter.connectors.base import Connector, TargetRequest, TargetResponse
from charter.connectors.http import HttpConnector, retry_after_seconds

__all__ = ["Connector", "HttpConnector", "TargetRequest", "TargetResponse", "retry_after_seconds"]
