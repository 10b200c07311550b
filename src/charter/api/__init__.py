"""The REST API."""

from charter.api.app import create_app, percentile

__all__ = ["create_app", "percentile"]
