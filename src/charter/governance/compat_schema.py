"""What the schema-diff modules share: keywords, the ``Difference`` record, value helpers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from charter.governance.compat_rules import RULES, bound_rule

Schema = Mapping[str, Any] | bool
PropertyPath = tuple[str, ...]

ANNOTATIONS = {
    "title": "TITLE_CHANGED",
    "description": "DESCRIPTION_CHANGED",
    "default": "DEFAULT_CHANGED",
    "$id": "ID_CHANGED",
    "examples": "EXAMPLES_CHANGED",
    # Charter validates with format as an annotation (the 2020-12 default).
    "format": "FORMAT_CHANGED",
}
OTHER_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$comment",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
    }
)
# Compared where they are referenced, not as keywords.
CONTAINERS = frozenset({"$defs", "definitions"})
COMBINATORS = ("allOf", "anyOf", "oneOf")
STRING_BOUNDS = ("maxLength", "minLength")
NUMBER_BOUNDS = ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum")
OBJECT_BOUNDS = ("maxProperties", "minProperties")
ARRAY_BOUNDS = ("maxItems", "minItems", "maxContains", "minContains")
HANDLED = frozenset(
    {
        "type",
        "enum",
        "const",
        "pattern",
        "multipleOf",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "unevaluatedProperties",
        "patternProperties",
        "dependentRequired",
        "dependentSchemas",
        "items",
        "prefixItems",
        "not",
        "$ref",
        *COMBINATORS,
        *STRING_BOUNDS,
        *NUMBER_BOUNDS,
        *OBJECT_BOUNDS,
        *ARRAY_BOUNDS,
        *ANNOTATIONS,
        *OTHER_ANNOTATIONS,
        *CONTAINERS,
    }
)
TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")


@dataclass(frozen=True)
class Difference:
    """One change between two schemas.

    ``old`` is the value in the original schema and ``new`` in the update (``None``
    when absent). ``compatible`` is the rule's verdict for a reader using the
    update and data written with the original: every such payload still
    validates.
    """

    rule: str
    path: str
    old: Any = None
    new: Any = None

    @property
    def compatible(self) -> bool:
        return RULES[self.rule].compatible

    @property
    def family(self) -> str:
        """The rule's short name (``ENUM_NARROWED``, ``REQUIRED_PROPERTY_ADDED``...)."""
        return RULES[self.rule].family


def pointer_segment(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def canonical(value: Any) -> str:
    """A key under which JSON Schema's equal values collide (1 == 1.0, true != 1)."""

    def normal(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: normal(x) for k, x in v.items()}
        if isinstance(v, list):
            return [normal(x) for x in v]
        return v

    return json.dumps(normal(value), sort_keys=True)


def number(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Fraction(value) if isinstance(value, int) else Fraction(str(value))


def is_empty(schema: Any) -> bool:
    """True, ``{}`` or a schema of annotations only: accepts everything."""
    if schema is True:
        return True
    if not isinstance(schema, Mapping):
        return False
    return all(k in ANNOTATIONS or k in OTHER_ANNOTATIONS or k in CONTAINERS for k in schema)


def bound_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], path: str, keywords: tuple[str, ...]
) -> list[Difference]:
    """Bound keywords (``maxLength``, ``minimum``...) ADDED, REMOVED, INCREASED or DECREASED."""
    out: list[Difference] = []
    for keyword in keywords:
        before, after = old.get(keyword), new.get(keyword)
        if before is None and after is None:
            continue
        where = f"{path}/{keyword}"
        a, b = number(before), number(after)
        if (before is not None and a is None) or (after is not None and b is None):
            if canonical(before) != canonical(after):
                out.append(Difference("KEYWORD_CHANGED", where, before, after))
            continue
        if a is None:
            out.append(Difference(bound_rule(keyword, "ADDED"), where, None, after))
        elif b is None:
            out.append(Difference(bound_rule(keyword, "REMOVED"), where, before, None))
        elif a != b:
            change = "INCREASED" if b > a else "DECREASED"
            out.append(Difference(bound_rule(keyword, change), where, before, after))
    return out
