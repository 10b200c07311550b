"""Fast JSON Schema 2020-12 validation for the hot path (jsonschema-rs).

The pure-Python ``jsonschema`` package checks schemas when a project loads;
events are validated here, about fifty times faster, with the same verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema_rs


def pointer(path: Any) -> str:
    """An RFC 6901 JSON pointer from a sequence of keys and indexes."""
    return "".join(f"/{str(p).replace('~', '~0').replace('/', '~1')}" for p in path)


@dataclass(frozen=True)
class Violation:
    """Where an instance breaks its schema (JSON pointer) and how."""

    pointer: str
    message: str


class SchemaValidator:
    """A compiled JSON Schema 2020-12 validator."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._validator = jsonschema_rs.Draft202012Validator(schema)

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def first_violation(self, instance: Any) -> Violation | None:
        """The violation nearest the document's start, or None when the instance is valid."""
        if self._validator.is_valid(instance):
            return None
        errors = sorted(
            self._validator.iter_errors(instance),
            key=lambda e: [str(p) for p in e.instance_path],
        )
        first = errors[0]
        return Violation(pointer(first.instance_path), str(first.message))
