"""What flows into and out of the process state machine: events in, commands out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Events -------------------------------------------------------------------


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    attempt: int
    output: Any
    now: float
    compensation: bool = False


@dataclass(frozen=True)
class StepFailed:
    step: str
    attempt: int
    error: str
    retryable: bool
    now: float
    retry_after: float | None = None
    compensation: bool = False


@dataclass(frozen=True)
class TimerFired:
    name: str
    now: float


@dataclass(frozen=True)
class EventReceived:
    """A hub event matched one of the instance's waits (the runner did the matching)."""

    step: str
    event_id: str
    data: Any
    now: float


@dataclass(frozen=True)
class SignalReceived:
    name: str
    data: Any
    now: float


@dataclass(frozen=True)
class Approved:
    step: str
    approved: bool
    by: str
    now: float
    comment: str = ""


@dataclass(frozen=True)
class ChildFinished:
    step: str
    status: str
    output: Any
    now: float


@dataclass(frozen=True)
class Cancel:
    by: str
    reason: str
    now: float


@dataclass(frozen=True)
class Terminate:
    by: str
    reason: str
    now: float


@dataclass(frozen=True)
class Retry:
    by: str
    now: float


@dataclass(frozen=True)
class Skip:
    step: str
    by: str
    now: float


Event = (
    StepSucceeded
    | StepFailed
    | TimerFired
    | EventReceived
    | SignalReceived
    | Approved
    | ChildFinished
    | Cancel
    | Terminate
    | Retry
    | Skip
)


# Commands -----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """Call ``method path`` on ``system`` with ``body``; the key is stable per (instance, step)."""

    step: str
    attempt: int
    idempotency_key: str
    system: str
    method: str
    path: str
    body: Any
    timeout: float | None
    compensation: bool = False


@dataclass(frozen=True)
class RunTask:
    step: str
    attempt: int
    idempotency_key: str
    handler: str
    input: Any
    timeout: float | None
    compensation: bool = False


@dataclass(frozen=True)
class StartChild:
    step: str
    process: str
    version: int | None
    business_key: str
    input: Any


@dataclass(frozen=True)
class Escalate:
    step: str
    team: str
    message: str


@dataclass(frozen=True)
class Finished:
    """The instance reached ``status``; tell a parent, count it."""

    status: str
    reason: str | None
    output: Any


Command = Call | RunTask | StartChild | Escalate | Finished


@dataclass
class Transition:
    state: dict[str, Any]
    commands: list[Command] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class InvalidOperation(Exception):
    """An operation does not apply to the instance in its current state."""
