"""Choreography into orchestration: business events start processes and satisfy their waits.

At ingest, each event is annotated with the instances it starts and with the
values process waits correlate on; the store commits both with the event, so
an acknowledged event never misses the process it concerns.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson

from charter.engine.persist import Planner, correlation_value
from charter.engine.registry import Definitions
from charter.engine.spec import EventTrigger, walk
from charter.errors import InvalidEvent, MappingError
from charter.mapping import MISSING, CompiledFields, compile_fields
from charter.mapping.paths import Path, lookup, parse_path
from charter.store import NewEvent


@dataclasses.dataclass(frozen=True)
class _Trigger:
    process: str
    spec: EventTrigger
    key: Path
    input: CompiledFields | None


class EventBridge:
    """Knows which (system, event type) start which processes and what waits correlate on."""

    def __init__(self, definitions: Definitions, planner: Planner) -> None:
        self.definitions = definitions
        self.planner = planner
        self.triggers: dict[tuple[str, str], list[_Trigger]] = {}
        self.correlated: dict[tuple[str, str], set[str]] = {}
        latest: dict[str, int] = {}
        for spec in definitions.specs():
            latest[spec.name] = max(latest.get(spec.name, 0), spec.version)
            for step in walk(spec.steps):
                wait = step.wait
                if wait is not None and wait.event is not None and wait.match is not None:
                    key = (wait.event.system, wait.event.type)
                    self.correlated.setdefault(key, set()).add(wait.match.field)
        for spec in definitions.specs():
            if spec.version != latest[spec.name]:
                continue
            for trigger in spec.triggers:
                if trigger.event is None:
                    continue
                event = trigger.event
                self.triggers.setdefault((event.system, event.type), []).append(
                    _Trigger(
                        spec.name,
                        event,
                        parse_path(event.key),
                        compile_fields(event.input, f"trigger of process {spec.name}")
                        if event.input
                        else None,
                    )
                )
        self._paths = {f: parse_path(f) for fields in self.correlated.values() for f in fields}

    @property
    def active(self) -> bool:
        return bool(self.triggers or self.correlated)

    def annotate(self, events: list[NewEvent], payloads: list[Any]) -> list[NewEvent]:
        """The events with the instances they start and their correlation values."""
        if not self.active:
            return events
        now = time.time()
        annotated = []
        for event, data in zip(events, payloads, strict=True):
            key = (event.system, event.type)
            correlations = []
            for field_ in sorted(self.correlated.get(key, ())):
                value = lookup(data, self._paths[field_])
                if value is not MISSING and value is not None:
                    correlations.append((field_, correlation_value(value)))
            starts = [self._start(t, data, now) for t in self.triggers.get(key, ())]
            if correlations or starts:
                event = dataclasses.replace(event, correlations=correlations, starts=starts)
            annotated.append(event)
        return annotated

    def _start(self, trigger: _Trigger, data: Any, now: float) -> Any:
        business_key = lookup(data, trigger.key)
        if business_key is MISSING or business_key is None or isinstance(business_key, dict | list):
            raise InvalidEvent(
                f"process {trigger.process!r} starts on this event with the business key at "
                f"{trigger.spec.key!r}, which the event's data does not have",
                fix=f"send {trigger.spec.key!r} in the data, or change the trigger's key",
            )
        try:
            input_ = trigger.input.apply(data) if trigger.input else data
        except MappingError as exc:
            raise InvalidEvent(
                f"process {trigger.process!r}: {exc.detail}", fix=exc.fix, pointer=exc.pointer
            ) from exc
        write, _ = self.planner.new_instance(trigger.process, str(business_key), input_, now)
        return write


def payloads(events: list[NewEvent]) -> list[Any]:
    return [orjson.loads(e.data) for e in events]
