"""Typed models of a Charter project: teams, domains, systems, entities, mappings, integrations.

The models validate one document at a time; references between documents
(an integration naming a system, a mapping naming an entity) are checked by
:mod:`charter.catalog.loader`, which sees the whole project.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
EVENT_TYPE_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``250ms``, ``30s``, ``5m``, ``1h``, ``28d``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. '30s' or '5m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value!r} is negative; write e.g. '30s'")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration; write e.g. '250ms', '30s', '5m', '1h' or '28d'")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Tier(StrEnum):
    """Business priority of a flow; decides quota share and who is paged."""

    REVENUE_CRITICAL = "revenue-critical"
    OPERATIONAL = "operational"
    INFORMATIONAL = "informational"


class Timeliness(StrEnum):
    REAL_TIME = "real-time"
    NEAR_REAL_TIME = "near-real-time"
    BATCH = "batch"


class SystemRole(StrEnum):
    RECORD = "record"
    ENGAGEMENT = "engagement"
    INTELLIGENCE = "intelligence"


class Team(_Doc):
    """An owner. Everything else in the catalog names one."""

    name: Name
    description: str = ""
    contact: dict[str, str] = Field(default_factory=dict)


class Domain(_Doc):
    """An integration domain (sales, finance, fulfilment) with an accountable team."""

    name: Name
    owner: Name
    description: str = ""


class HttpConnector(_Doc):
    """Settings of the HTTP connector: where the system is and how long to wait."""

    kind: Literal["http"] = "http"
    base_url: str
    timeout: Duration = 10.0
    connect_timeout: Duration = 3.0
    # The whole call, trickled body included, ends within this (a retryable timeout).
    deadline: Duration = 30.0
    # A larger answer is an error (not retryable): the hub never buffers more.
    max_response_bytes: int = Field(default=1024 * 1024, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url {value!r} must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _positive_times(self) -> HttpConnector:
        for name in ("timeout", "connect_timeout", "deadline"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)!r}")
        return self


# What each tier may always have of a busy budget, so that no tier starves.
DEFAULT_SHARES: dict[Tier, float] = {
    Tier.REVENUE_CRITICAL: 0.0,
    Tier.OPERATIONAL: 0.1,
    Tier.INFORMATIONAL: 0.05,
}


class Quota(_Doc):
    """The API budget of a system, shared by every flow, process step and worker that calls it.

    ``burst`` defaults to 2 % of a second's rate (at least one call), so that no
    one-second window sees much more than ``rate_per_s``. ``shares`` are the
    minimum shares per tier of a budget in demand; the rest goes by tier order.
    """

    rate_per_s: float = Field(gt=0)
    burst: int | None = Field(default=None, gt=0)
    daily: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    shares: dict[Tier, float] = Field(default_factory=lambda: dict(DEFAULT_SHARES))

    @field_validator("shares")
    @classmethod
    def _shares(cls, value: dict[Tier, float]) -> dict[Tier, float]:
        for tier, share in value.items():
            if not 0 <= share <= 1:
                raise ValueError(f"the share of {tier.value} must be from 0 to 1, got {share!r}")
        total = sum(value.values())
        if total > 1:
            raise ValueError(
                f"the minimum shares add up to {total:g}, over the whole budget (1); lower them"
            )
        return {**DEFAULT_SHARES, **value}


class Breaker(_Doc):
    """The circuit breaker of a system (or of each of its endpoints with ``per_endpoint``).

    It opens after ``failures`` consecutive failures, or when at least
    ``error_rate`` of ``min_calls`` or more calls in ``window`` failed; after
    ``open_for`` one probe goes through (half-open) and its success closes it.
    """

    enabled: bool = True
    failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=20, ge=1)
    window: Duration = 10.0
    open_for: Duration = 5.0
    per_endpoint: bool = False

    @model_validator(mode="after")
    def _positive_times(self) -> Breaker:
        for name in ("window", "open_for"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)!r}")
        return self


class Compatibility(StrEnum):
    """How a schema subject may change under one version (Confluent Schema Registry's modes)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"


class EventType(_Doc):
    """An event a system emits: the JSON Schema of its payload and where its key is."""

    schema_: dict[str, Any] | str = Field(alias="schema")
    version: int = Field(default=1, ge=1)
    key: str = "id"
    description: str = ""
    compatibility: Compatibility = Compatibility.BACKWARD


class System(_Doc):
    """An external application Charter reads from or writes to."""

    name: Name
    role: SystemRole
    owner: Name
    domain: Name | None = None
    description: str = ""
    connector: HttpConnector | None = None
    quota: Quota | None = None
    breaker: Breaker = Field(default_factory=Breaker)
    events: dict[Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)], EventType] = Field(
        default_factory=dict
    )


class WritePolicy(StrEnum):
    """What happens to a write of a field by a system that is not its system of record."""

    REJECT = "reject"
    IGNORE = "ignore"
    QUARANTINE = "quarantine"


class EntityField(_Doc):
    system_of_record: Name
    policy: WritePolicy = WritePolicy.REJECT


class Entity(_Doc):
    """A canonical business object with a versioned JSON Schema and a system of record."""

    name: Name
    version: int = Field(ge=1)
    owner: Name
    domain: Name | None = None
    description: str = ""
    key: str
    system_of_record: Name
    schema_: dict[str, Any] | str = Field(alias="schema")
    fields: dict[str, EntityField] = Field(default_factory=dict)
    compatibility: Compatibility = Compatibility.BACKWARD


def _split_ref(value: Any) -> Any:
    """Accept ``name@version`` as well as ``{name: ..., version: ...}``."""
    if isinstance(value, str) and "@" in value:
        name, _, version = value.partition("@")
        return {"name": name, "version": version}
    return value


class Ref(_Doc):
    """A reference to a versioned catalog object, written ``name@version``."""

    name: Name
    version: int = Field(ge=1)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


VersionedRef = Annotated[Ref, BeforeValidator(_split_ref)]


class Source(_Doc):
    system: Name
    event: Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]
    trigger: Literal["webhook", "api"] = "webhook"


class Action(_Doc):
    """The call made on the target system for each delivery."""

    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: str = Field(pattern=r"^/")


class FallbackTarget(_Doc):
    """Another target system that takes the deliveries; its own mapping, and by default
    the same action as the target it stands in for."""

    system: Name
    mapping: VersionedRef
    action: Action | None = None


class FileDrop(_Doc):
    """A folder (relative to the project) that deliveries are appended to as JSON lines,
    one file per target system and UTC day."""

    dir: str = Field(min_length=1)


def _park(value: Any) -> Any:
    """``fallback: park`` is what happens without a fallback: the delivery waits."""
    if value == "park":
        return None
    if isinstance(value, str):
        raise ValueError(
            f"fallback {value!r} is not known; write 'park', or a mapping with "
            "'to: {system, mapping}' or 'file: {dir}'"
        )
    return value


class Fallback(_Doc):
    """Where a target's deliveries go once its circuit breaker has been open for ``after``:
    another target system (``to``) or a file drop (``file``)."""

    after: Duration = 0.0
    to: FallbackTarget | None = None
    file: FileDrop | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Fallback:
        if self.to is not None and self.file is not None:
            raise ValueError(
                "a fallback goes to another system ('to:') or to a file drop ('file:'), "
                "not both; keep one"
            )
        if self.to is None and self.file is None:
            raise ValueError(
                "a fallback needs 'to: {system, mapping}' or 'file: {dir}'; "
                "write 'fallback: park' to have deliveries wait for the target"
            )
        return self

    def describe(self) -> str:
        """Where it goes, as shown with a delivery: the system's name or ``file:DIR``."""
        if self.to is not None:
            return self.to.system
        assert self.file is not None
        return f"file:{self.file.dir}"


class Target(_Doc):
    system: Name
    mapping: VersionedRef
    action: Action
    # None: deliveries wait while the target's breaker is open ('park').
    fallback: Annotated[Fallback | None, BeforeValidator(_park)] = None


class RetryPolicy(_Doc):
    """Exponential backoff with full jitter; dead letter after ``max_attempts``."""

    max_attempts: int = Field(default=8, ge=1, le=100)
    initial_backoff: Duration = 0.5
    max_backoff: Duration = 60.0
    multiplier: float = Field(default=2.0, ge=1.0)


class Slo(_Doc):
    """Service level objective of a flow (OpenSLO-shaped: objective over a window)."""

    objective: float = Field(gt=0, le=100, description="percent of events delivered in time")
    latency: Duration
    window: Duration = 28 * 86400.0


class Integration(_Doc):
    """A governed flow from a source event to target systems."""

    name: Name
    owner: Name
    tier: Tier
    timeliness: Timeliness
    slo: Slo
    domain: Name | None = None
    description: str = ""
    source: Source
    entity: VersionedRef
    mapping: VersionedRef
    targets: list[Target] = Field(min_length=1)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @model_validator(mode="after")
    def _distinct_targets(self) -> Integration:
        systems = [t.system for t in self.targets]
        if len(systems) != len(set(systems)):
            raise ValueError("each target system may appear once per integration")
        return self


class ProjectSettings(_Doc):
    """The ``charter.yaml`` document at the root of a project."""

    name: Name
    description: str = ""
    database_url: str | None = None
