"""The durable process engine: a pure state machine and the runner that carries out its commands."""

from charter.engine.definition import Definition
from charter.engine.machine import advance, due_timers, next_wake, outstanding, start
from charter.engine.spec import ProcessSpec, StepSpec

__all__ = [
    "Definition",
    "ProcessSpec",
    "StepSpec",
    "advance",
    "due_timers",
    "next_wake",
    "outstanding",
    "start",
]
