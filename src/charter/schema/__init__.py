"""Schemas: compiled JSON Schema 2020-12 validation."""

from charter.schema.validator import SchemaValidator, Violation, pointer

__all__ = ["SchemaValidator", "Violation", "pointer"]
