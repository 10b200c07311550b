"""A process definition compiled for the state machine: steps indexed, rules compiled once."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from charter.catalog.model import RetryPolicy
from charter.engine.spec import ProcessSpec, StepSpec, walk
from charter.errors import MappingError
from charter.mapping import MISSING, CompiledFields, FieldRule, compile_fields
from charter.mapping.paths import Path, lookup, parse_path

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")

# The kinds of step that act on the world: a call to a system, a task handler.
EFFECT_KINDS = frozenset({"call", "task"})


class Condition:
    """A JSONata condition over the context, true when it yields a truthy value."""

    def __init__(self, expression: str, owner: str) -> None:
        self.expression = expression
        self._fields = compile_fields(
            {"value": FieldRule.model_validate({"expr": expression})}, owner
        )

    def holds(self, context: dict[str, Any]) -> bool:
        return bool(self._fields.apply(context).get("value"))


class PathTemplate:
    """``/orders/{steps.create_order.id}/cancel`` filled from the context, URL-quoted."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._paths: dict[str, Path] = {p: parse_path(p) for p in _PLACEHOLDER.findall(template)}

    def fill(self, context: dict[str, Any], owner: str) -> str:
        def value(match: re.Match[str]) -> str:
            found = lookup(context, self._paths[match.group(1)])
            if found is MISSING or found is None or isinstance(found, dict | list):
                raise MappingError(
                    f"{owner}: the path placeholder {{{match.group(1)}}} has no plain value "
                    "in the context",
                    fix="name a value that earlier steps set, e.g. {steps.create_order.id}",
                )
            return urllib.parse.quote(str(found), safe="")

        return _PLACEHOLDER.sub(value, self.template)


@dataclass(frozen=True)
class CompiledStep:
    spec: StepSpec
    parent: str | None
    retry: RetryPolicy
    body: CompiledFields | None = None
    path: PathTemplate | None = None
    output: CompiledFields | None = None
    transform: CompiledFields | None = None
    task_input: CompiledFields | None = None
    conditions: tuple[Condition | None, ...] = ()
    compensation_body: CompiledFields | None = None
    compensation_path: PathTemplate | None = None
    compensation_input: CompiledFields | None = None
    child_key: CompiledFields | None = None
    child_input: CompiledFields | None = None
    correlation: Path | None = None
    until: Path | None = None
    # The step's kind and id, read on every transition: worked out once here.
    kind: str = ""
    id: str = ""
    # Whether steps are nested in it (a switch, a parallel, a wait with a timeout path).
    composite: bool = False


def _fields(rules: dict[str, FieldRule] | None, owner: str) -> CompiledFields | None:
    return compile_fields(rules, owner) if rules else None


class Definition:
    """A :class:`ProcessSpec` ready to run: every step by id, with its rules compiled."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.key = f"{spec.name}@{spec.version}"
        self.steps: dict[str, CompiledStep] = {}
        self._index(spec.steps, None)
        # What every transition reads: the top-level sequence, and the steps that make a
        # call or run a task (an instance with one of them running is busy, not waiting).
        self.sequence = [step.id for step in spec.steps]
        self.effect_steps = tuple(
            sid for sid, step in self.steps.items() if step.kind in EFFECT_KINDS
        )

    def _index(self, steps: list[StepSpec], parent: str | None) -> None:
        for step in steps:
            self.steps[step.id] = self._compile(step, parent)
            for sequence in step.children():
                self._index(sequence, step.id)

    def _compile(self, step: StepSpec, parent: str | None) -> CompiledStep:
        owner = f"step {step.id} of process {self.key}"
        extra: dict[str, Any] = {}
        if step.call is not None:
            extra["body"] = _fields(step.call.body, owner)
            extra["path"] = PathTemplate(step.call.path)
        if step.task is not None:
            extra["task_input"] = _fields(step.task.input, owner)
        if step.transform is not None:
            extra["transform"] = compile_fields(step.transform, owner)
        if step.switch is not None:
            extra["conditions"] = tuple(
                Condition(case.when, owner) if case.when is not None else None
                for case in step.switch
            )
        if step.compensate is not None:
            comp = step.compensate
            if comp.call is not None:
                extra["compensation_body"] = _fields(comp.call.body, owner + " (compensation)")
                extra["compensation_path"] = PathTemplate(comp.call.path)
            if comp.task is not None:
                extra["compensation_input"] = _fields(comp.task.input, owner + " (compensation)")
        if step.subprocess is not None:
            extra["child_key"] = compile_fields({"key": step.subprocess.key}, owner)
            extra["child_input"] = _fields(step.subprocess.input, owner)
        if step.wait is not None and step.wait.match is not None:
            extra["correlation"] = parse_path(step.wait.match.equals)
        if step.sleep is not None and step.sleep.until is not None:
            extra["until"] = parse_path(step.sleep.until)
        return CompiledStep(
            spec=step,
            kind=step.kind,
            id=step.id,
            composite=bool(step.children()),
            parent=parent,
            retry=step.retry or self.spec.retry,
            output=_fields(step.output, owner),
            **extra,
        )

    def compensation_retry(self, step: CompiledStep) -> RetryPolicy:
        comp = step.spec.compensate
        return (comp.retry if comp and comp.retry else None) or step.retry

    def all_steps(self) -> list[StepSpec]:
        return walk(self.spec.steps)
