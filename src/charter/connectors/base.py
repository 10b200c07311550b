"""The ``Connector`` protocol: how the delivery layer calls a target system."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from charter.catalog.model import Tier


@dataclass(frozen=True)
class TargetRequest:
    """One call on a target: an action with a JSON body and the headers the hub adds.

    ``tier`` and ``flow`` (the integration or process making the call) are not
    sent: quota middleware serves callers by tier and counts use per flow.
    """

    method: str
    path: str
    body: bytes
    idempotency_key: str
    headers: dict[str, str] = field(default_factory=dict)
    tier: Tier = Tier.OPERATIONAL
    flow: str = ""


@dataclass(frozen=True)
class TargetResponse:
    status_code: int
    body: bytes


class Connector(Protocol):
    """Calls one target system.

    Contract: returns a :class:`TargetResponse` for a 2xx answer and raises a
    :class:`~charter.errors.ConnectorError` for anything else, with
    ``retryable`` set; it never retries by itself and never sleeps for
    ``Retry-After`` (the delivery layer decides both).
    """

    async def call(self, request: TargetRequest) -> TargetResponse: ...

    async def aclose(self) -> None: ...
