"""The YAML form of a process: triggers and steps, validated one document at a time.

Step kinds: ``call`` (an action on a system), ``transform`` (field rules over the
context), ``wait`` (a business event or signal, with a timeout path), ``sleep``
(a durable timer), ``switch`` (conditions), ``parallel`` (branches joined on all
or any), ``subprocess``, ``task`` (a handler from the project), ``approve`` (a
person decides through the API or CLI) and ``escalate`` (tell the owning team).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from charter.catalog.model import (
    EVENT_TYPE_PATTERN,
    Duration,
    Name,
    RetryPolicy,
    Slo,
    Tier,
    Timeliness,
)
from charter.mapping import FieldRule
from charter.mapping.paths import parse_path

StepId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
Fields = dict[str, FieldRule]
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
STEP_KINDS = (
    "call",
    "transform",
    "wait",
    "sleep",
    "switch",
    "parallel",
    "subprocess",
    "task",
    "approve",
    "escalate",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CallSpec(_Spec):
    """An action on a system through its connector; ``{path}`` placeholders read the context."""

    system: Name
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = Field(pattern=r"^/")
    body: Fields | None = None

    @model_validator(mode="after")
    def _placeholders_parse(self) -> CallSpec:
        for placeholder in _PLACEHOLDER.findall(self.path):
            parse_path(placeholder)
        return self


class TaskSpec(_Spec):
    """A Python handler registered by the project, called with the mapped input."""

    handler: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    input: Fields | None = None


class EventMatch(_Spec):
    """A business event from the hub's log: ``system`` and CloudEvents ``type``."""

    system: Name
    type: Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]


class Correlation(_Spec):
    """The event matches when its value at ``field`` equals the context's value at ``equals``."""

    field: str
    equals: str

    @model_validator(mode="after")
    def _paths_parse(self) -> Correlation:
        parse_path(self.field)
        parse_path(self.equals)
        return self


class WaitSpec(_Spec):
    event: EventMatch | None = None
    signal: Name | None = None
    match: Correlation | None = None
    timeout: Duration | None = None
    on_timeout: list[StepSpec] = Field(default_factory=list)
    after_timeout: Literal["continue", "fail", "keep_waiting"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WaitSpec:
        if (self.event is None) == (self.signal is None):
            raise ValueError("a wait needs exactly one of 'event' and 'signal'")
        if self.event is not None and self.match is None:
            raise ValueError(
                "a wait for an event needs 'match: {field: <path in the event>, "
                "equals: <path in the context>}' so it finds its own instance's event"
            )
        if self.on_timeout and self.timeout is None:
            raise ValueError("'on_timeout' needs a 'timeout'")
        return self

    @property
    def timeout_then(self) -> str:
        """What follows a timeout once the ``on_timeout`` steps are done."""
        if self.after_timeout is not None:
            return self.after_timeout
        return "continue" if self.on_timeout else "fail"


class SleepSpec(_Spec):
    for_: Duration | None = Field(default=None, alias="for")
    until: str | None = None

    @model_validator(mode="after")
    def _one(self) -> SleepSpec:
        if (self.for_ is None) == (self.until is None):
            raise ValueError("a sleep needs exactly one of 'for' (a duration) and 'until' (a path)")
        if self.until is not None:
            parse_path(self.until)
        return self


class CaseSpec(_Spec):
    """One branch of a switch: taken when the JSONata condition ``when`` is true."""

    when: str | None = None
    default: bool = False
    steps: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _condition(self) -> CaseSpec:
        if (self.when is None) == (not self.default):
            raise ValueError("a case has either 'when: <condition>' or 'default: true'")
        return self


class ParallelSpec(_Spec):
    join: Literal["all", "any"] = "all"
    branches: list[list[StepSpec]] = Field(min_length=2)


class SubprocessSpec(_Spec):
    process: Name
    version: int | None = Field(default=None, ge=1)
    key: FieldRule
    input: Fields | None = None


class ApproveSpec(_Spec):
    team: Name | None = None
    prompt: str = ""
    timeout: Duration | None = None


class EscalateSpec(_Spec):
    team: Name | None = None
    message: str


class CompensationSpec(_Spec):
    """What undoes a completed step: a call or a task, with its own retry policy."""

    call: CallSpec | None = None
    task: TaskSpec | None = None
    retry: RetryPolicy | None = None

    @model_validator(mode="after")
    def _one(self) -> CompensationSpec:
        if (self.call is None) == (self.task is None):
            raise ValueError("a compensation needs exactly one of 'call' and 'task'")
        return self


class StepSpec(_Spec):
    """One step; exactly one of the kind keys is set."""

    id: StepId
    description: str = ""
    retry: RetryPolicy | None = None
    timeout: Duration | None = None
    output: Fields | None = None
    compensate: CompensationSpec | None = None
    call: CallSpec | None = None
    transform: Fields | None = None
    wait: WaitSpec | None = None
    sleep: SleepSpec | None = None
    switch: list[CaseSpec] | None = None
    parallel: ParallelSpec | None = None
    subprocess: SubprocessSpec | None = None
    task: TaskSpec | None = None
    approve: ApproveSpec | None = None
    escalate: EscalateSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            has = ", ".join(kinds) or "none"
            raise ValueError(
                f"step {self.id!r} needs exactly one of {', '.join(STEP_KINDS)}; it has {has}"
            )
        if self.compensate is not None and kinds[0] not in ("call", "task", "subprocess"):
            raise ValueError(f"step {self.id!r}: only call, task and subprocess steps compensate")
        if self.switch is not None and sum(1 for c in self.switch if c.default) > 1:
            raise ValueError(f"step {self.id!r}: a switch has at most one default case")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)

    def children(self) -> list[list[StepSpec]]:
        """The step sequences nested in this step."""
        if self.switch is not None:
            return [case.steps for case in self.switch]
        if self.parallel is not None:
            return list(self.parallel.branches)
        if self.wait is not None and self.wait.on_timeout:
            return [self.wait.on_timeout]
        return []


class EventTrigger(_Spec):
    system: Name
    type: Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]
    key: str
    input: Fields | None = None

    @model_validator(mode="after")
    def _key_parses(self) -> EventTrigger:
        parse_path(self.key)
        return self


class ScheduleTrigger(_Spec):
    cron: str
    key: str = "{time}"
    input: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cron_parses(self) -> ScheduleTrigger:
        if not croniter.is_valid(self.cron):
            raise ValueError(
                f"cron {self.cron!r} does not parse; write five fields, e.g. '*/5 * * * *'"
            )
        return self


class TriggerSpec(_Spec):
    event: EventTrigger | None = None
    api: dict[str, Any] | None = None
    schedule: ScheduleTrigger | None = None

    @model_validator(mode="after")
    def _one(self) -> TriggerSpec:
        if sum(x is not None for x in (self.event, self.api, self.schedule)) != 1:
            raise ValueError("a trigger is exactly one of 'event', 'api' and 'schedule'")
        return self


class ProcessSpec(_Spec):
    """A durable process across systems, governed like an integration."""

    name: Name
    version: int = Field(ge=1)
    owner: Name
    tier: Tier
    timeliness: Timeliness = Timeliness.NEAR_REAL_TIME
    slo: Slo
    domain: Name | None = None
    description: str = ""
    triggers: list[TriggerSpec] = Field(default_factory=lambda: [TriggerSpec(api={})])
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    on_failure: Literal["compensate", "hold"] = "compensate"
    steps: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> ProcessSpec:
        seen: set[str] = set()
        for step in walk(self.steps):
            if step.id in seen:
                raise ValueError(f"step id {step.id!r} is used twice; step ids are unique")
            seen.add(step.id)
        return self


def walk(steps: list[StepSpec]) -> list[StepSpec]:
    """Every step in ``steps`` and below, depth first, in declaration order."""
    found: list[StepSpec] = []
    for step in steps:
        found.append(step)
        for sequence in step.children():
            found.extend(walk(sequence))
    return found


for _model in (WaitSpec, CaseSpec, ParallelSpec, StepSpec):
    _model.model_rebuild()
