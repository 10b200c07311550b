"""Schema compatibility: may a subject take a new schema version under its mode?

Modes and directions are Confluent Schema Registry's:

- ``BACKWARD`` (the default): consumers using the new schema read data written
  with the previous one, so every payload valid under the previous version must
  be valid under the new one. Checked as ``diff(previous, new)``.
- ``FORWARD``: consumers still on the previous schema read data written with the
  new one. Checked as ``diff(new, previous)``.
- ``FULL``: both. ``NONE``: no check.
- ``*_TRANSITIVE``: against every earlier version, not only the latest.

``check`` is pure: it takes schemas, never a registry, and says nothing about
which version number the new schema should get (publishing an incompatible
schema as a new major version is the caller's decision, as in ``charter plan``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from charter.governance.compat_diff import diff, property_path
from charter.governance.compat_rules import FAMILIES, RULES, Rule
from charter.governance.compat_schema import Difference, Schema

MAJOR = "or, if the break is intended, publish the schema as a new major version"


class Mode(StrEnum):
    """A subject's compatibility mode."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def backward(self) -> bool:
        """Whether the new schema must read data written with earlier versions."""
        return self.value.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        """Whether earlier versions must read data written with the new schema."""
        return self.value.startswith(("FORWARD", "FULL"))

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")


class Direction(StrEnum):
    """Who reads whom: ``backward`` the new schema reads old data, ``forward`` the reverse."""

    BACKWARD = "backward"
    FORWARD = "forward"


@dataclass(frozen=True)
class Problem:
    """One reason a new schema is refused: rule, where, against which version, and the fix.

    ``before`` is the value in the earlier version and ``after`` in the new schema,
    whatever the direction.
    """

    rule: str
    family: str
    path: str
    version: int
    direction: Direction
    message: str
    fix: str
    before: Any = None
    after: Any = None

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "family": self.family,
            "path": self.path,
            "version": self.version,
            "direction": self.direction.value,
            "message": self.message,
            "fix": self.fix,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``check``.

    ``problems`` are the incompatible differences (empty when ``compatible``);
    ``changes`` every difference from the latest earlier version to the new
    schema, compatible ones included, for display.
    """

    compatible: bool
    mode: Mode
    problems: list[Problem] = field(default_factory=list)
    changes: list[Difference] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "compatible": self.compatible,
            "mode": self.mode.value,
            "problems": [p.to_json() for p in self.problems],
            "changes": [
                {"rule": d.rule, "family": d.family, "path": d.path, "compatible": d.compatible}
                for d in self.changes
            ],
        }


def check(
    mode: Mode | str,
    new_schema: Schema,
    previous_versions: Sequence[Schema],
    renames: Mapping[str, str] | None = None,
    *,
    versions: Sequence[int] | None = None,
) -> Verdict:
    """Whether ``new_schema`` may follow ``previous_versions`` (oldest first) under ``mode``.

    ``renames`` maps a property path in the earlier versions to its path in the
    new schema (as a mapping's ``renames`` declares it); each shows as one
    ``PROPERTY_RENAMED`` problem, not a removal plus an addition. ``versions``
    numbers the earlier versions for the problems (default 1, 2, ...).
    """
    mode = Mode(mode)
    numbers = list(versions) if versions is not None else list(range(1, len(previous_versions) + 1))
    if len(numbers) != len(previous_versions):
        raise ValueError(
            f"{len(numbers)} version numbers for {len(previous_versions)} earlier versions"
        )
    if not previous_versions:
        return Verdict(True, mode)
    changes = diff(previous_versions[-1], new_schema, renames)
    if mode is Mode.NONE:
        return Verdict(True, mode, [], changes)
    pairs = list(zip(numbers, previous_versions, strict=True))
    against = reversed(pairs) if mode.transitive else [pairs[-1]]
    inverse = {v: k for k, v in (renames or {}).items()}
    problems: list[Problem] = []
    for number, previous in against:
        if mode.backward:
            for d in diff(previous, new_schema, renames):
                if not d.compatible:
                    problems.append(_problem(d, Direction.BACKWARD, number))
        if mode.forward:
            for d in diff(new_schema, previous, inverse):
                if not d.compatible:
                    problems.append(_problem(d, Direction.FORWARD, number))
    return Verdict(not problems, mode, problems, changes)


def _problem(d: Difference, direction: Direction, version: int) -> Problem:
    rule = RULES[d.rule]
    earlier = f"v{version}"
    if direction is Direction.BACKWARD:
        reader, writer, before, after = "the new schema", earlier, d.old, d.new
        fix = rule.fix_backward
    else:
        reader, writer, before, after = earlier, "the new schema", d.new, d.old
        fix = rule.fix_forward
    words = {
        "reader": reader,
        "writer": writer,
        "reader_value": _show(d.new),
        "writer_value": _show(d.old),
        "name": _name(d),
    }
    return Problem(
        rule=d.rule,
        family=rule.family,
        path=d.path,
        version=version,
        direction=direction,
        message=f"{_sentence(rule, words)} ({direction.value} check against {earlier})",
        fix=f"{fix.format(**words)}; {MAJOR}" if fix else MAJOR,
        before=before,
        after=after,
    )


def _sentence(rule: Rule, words: Mapping[str, str]) -> str:
    text = rule.message.format(**words)
    return text[:1].upper() + text[1:]


def _name(d: Difference) -> str:
    last = d.path.rsplit("/", 1)[-1]
    return last.replace("~1", "/").replace("~0", "~") if last != "#" else "the root"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    text = repr(value) if not isinstance(value, list | dict) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "FAMILIES",
    "RULES",
    "Difference",
    "Direction",
    "Mode",
    "Problem",
    "Rule",
    "Verdict",
    "check",
    "diff",
    "property_path",
]
