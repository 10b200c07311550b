"""Object schemas compared: properties, required, renames and the content model.

The content model decides what adding or removing a property means, as in
Confluent Schema Registry:

- *open*: ``additionalProperties`` absent or ``true`` (and no
  ``patternProperties``): any undeclared property is accepted with any value;
- *closed*: ``additionalProperties: false``: undeclared properties are rejected;
- *partially open*: ``additionalProperties`` is a schema, or
  ``patternProperties`` match the name: undeclared properties must fit it.

``unevaluatedProperties`` counts as ``additionalProperties`` when the latter is
absent. A property *added* is judged against the original's model (could old
payloads already carry it, with what values?); a property *removed* against
the update's model (will the reader still accept it?).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from charter.governance.compat_schema import (
    OBJECT_BOUNDS,
    Difference,
    PropertyPath,
    bound_differences,
    canonical,
    is_empty,
    pointer_segment,
)

Compare = Callable[[Any, Any, str, PropertyPath | None], list[Difference]]


def compare_objects(
    compare: Compare,
    renames: Mapping[PropertyPath, PropertyPath],
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    path: str,
    props: PropertyPath | None,
) -> list[Difference]:
    """Differences between two object schemas at ``path`` (``props``: its property path)."""
    old_props: Mapping[str, Any] = old.get("properties") or {}
    new_props: Mapping[str, Any] = new.get("properties") or {}
    old_required = set(old.get("required") or [])
    new_required = set(new.get("required") or [])
    renamed = _renamed(renames, props, old_props, new_props)
    targets = set(renamed.values())
    out: list[Difference] = []

    def at(name: str) -> str:
        return f"{path}/properties/{pointer_segment(name)}"

    def child(name: str) -> PropertyPath | None:
        return None if props is None else (*props, name)

    def required_change(was: bool, now: bool, name: str) -> None:
        if was and not now:
            out.append(Difference("REQUIRED_ATTRIBUTE_REMOVED", at(name), True, False))
        elif now and not was:
            rule = (
                "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED"
                if _has_default(new_props.get(name))
                else "REQUIRED_ATTRIBUTE_ADDED"
            )
            out.append(Difference(rule, at(name), False, True))

    for name in _ordered(old_props, new_props):
        if name in renamed:
            target = renamed[name]
            out.append(Difference("PROPERTY_RENAMED", at(target), name, target))
            required_change(name in old_required, target in new_required, target)
            out += compare(old_props[name], new_props[target], at(target), child(name))
        elif name in targets:
            continue
        elif name in old_props and name in new_props:
            required_change(name in old_required, name in new_required, name)
            out += compare(old_props[name], new_props[name], at(name), child(name))
        elif name in old_props:
            out += _removed(compare, name, old_props[name], new, at(name))
        else:
            out += _added(compare, name, new_props[name], name in new_required, old, at(name))
    # 'required' naming properties without a schema of their own on one side.
    for name in sorted(new_required - old_required):
        if name not in new_props and name not in old_props:
            required_change(False, True, name)
        elif name in old_props and name not in new_props and name not in renamed:
            required_change(False, True, name)
    for name in sorted(old_required - new_required):
        if name not in old_props and name not in new_props:
            required_change(True, False, name)

    out += _additional(compare, old, new, path)
    out += _patterns(compare, old, new, path)
    out += bound_differences(old, new, path, OBJECT_BOUNDS)
    out += _dependencies(compare, old, new, path)
    return out


def _renamed(
    renames: Mapping[PropertyPath, PropertyPath],
    props: PropertyPath | None,
    old_props: Mapping[str, Any],
    new_props: Mapping[str, Any],
) -> dict[str, str]:
    """Old name -> new name for declared renames between siblings of this object."""
    if props is None or not renames:
        return {}
    found: dict[str, str] = {}
    for name in old_props:
        target = renames.get((*props, name))
        if target is None or len(target) != len(props) + 1:
            continue
        new_name = target[-1]
        if name not in new_props and new_name in new_props and new_name not in old_props:
            found[name] = new_name
    return found


def _ordered(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Property names in document order: the original's first, then the update's new ones."""
    return [*old, *(name for name in new if name not in old)]


def _has_default(schema: Any) -> bool:
    return isinstance(schema, Mapping) and "default" in schema


def _extra(schema: Mapping[str, Any]) -> tuple[str, Any]:
    """(keyword, model) for undeclared properties: True open, False closed, or a schema."""
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if keyword in schema:
            value = schema[keyword]
            return keyword, True if is_empty(value) else value
    return "additionalProperties", True


def _is_open(schema: Mapping[str, Any]) -> bool:
    return _extra(schema)[1] is True and not schema.get("patternProperties")


def _model_for(schema: Mapping[str, Any], name: str) -> Any:
    """The schema an undeclared property ``name`` must satisfy: True, False or a schema."""
    for pattern, sub in (schema.get("patternProperties") or {}).items():
        try:
            if re.search(pattern, name):
                return True if is_empty(sub) else sub
        except re.error:
            continue
    return _extra(schema)[1]


def _removed(
    compare: Compare, name: str, schema: Any, update: Mapping[str, Any], where: str
) -> list[Difference]:
    if _is_open(update):
        return [Difference("PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL", where, name, None)]
    model = _model_for(update, name)
    if model is False:
        if schema is False:
            return [
                Difference("PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL", where, name)
            ]
        return [Difference("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", where, name, None)]
    inner = compare(schema, {} if model is True else model, where, None)
    covered = "IS" if all(d.compatible for d in inner) else "NOT"
    rule = f"PROPERTY_REMOVED_{covered}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
    return [*inner, Difference(rule, where, name, None)]


def _added(
    compare: Compare,
    name: str,
    schema: Any,
    required: bool,
    original: Mapping[str, Any],
    where: str,
) -> list[Difference]:
    default = _has_default(schema)
    if _is_open(original):
        if is_empty(schema) and (not required or default):
            rule = "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL"
        elif required:
            rule = (
                "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL"
                if default
                else "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
            )
        else:
            rule = "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"
        return [Difference(rule, where, None, name)]
    out: list[Difference] = []
    model = _model_for(original, name)
    if model is not False:
        inner = compare({} if model is True else model, schema, where, None)
        covered = "IS" if all(d.compatible for d in inner) else "NOT"
        out += inner
        out.append(
            Difference(f"PROPERTY_ADDED_{covered}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", where)
        )
    if required:
        rule = (
            "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL"
            if default
            else "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"
        )
        out.append(Difference(rule, where, None, name))
    elif model is False:
        out.append(Difference("OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", where, None, name))
    return out


def _additional(
    compare: Compare, old: Mapping[str, Any], new: Mapping[str, Any], path: str
) -> list[Difference]:
    (_, before), (keyword, after) = _extra(old), _extra(new)
    where = f"{path}/{keyword}"
    if (before is False) != (after is False):
        rule = "ADDITIONAL_PROPERTIES_ADDED" if before is False else "ADDITIONAL_PROPERTIES_REMOVED"
        return [Difference(rule, where, before, after)]
    if before is True and isinstance(after, Mapping):
        return [Difference("ADDITIONAL_PROPERTIES_NARROWED", where, before, after)]
    if isinstance(before, Mapping) and after is True:
        return [Difference("ADDITIONAL_PROPERTIES_EXTENDED", where, before, after)]
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        return compare(before, after, where, None)
    return []


def _patterns(
    compare: Compare, old: Mapping[str, Any], new: Mapping[str, Any], path: str
) -> list[Difference]:
    before: Mapping[str, Any] = old.get("patternProperties") or {}
    after: Mapping[str, Any] = new.get("patternProperties") or {}
    out: list[Difference] = []
    for pattern in _ordered(before, after):
        where = f"{path}/patternProperties/{pointer_segment(pattern)}"
        if pattern in before and pattern in after:
            out += compare(before[pattern], after[pattern], where, None)
        elif pattern in before:
            rule = (
                "PATTERN_PROPERTY_REMOVED"
                if _extra(new)[1] is True
                else "PATTERN_PROPERTY_REMOVED_FROM_UNOPEN_CONTENT_MODEL"
            )
            out.append(Difference(rule, where, before[pattern], None))
        elif not is_empty(after[pattern]):
            out.append(Difference("PATTERN_PROPERTY_ADDED", where, None, after[pattern]))
    return out


def _dependencies(
    compare: Compare, old: Mapping[str, Any], new: Mapping[str, Any], path: str
) -> list[Difference]:
    out: list[Difference] = []
    before: Mapping[str, Any] = old.get("dependentRequired") or {}
    after: Mapping[str, Any] = new.get("dependentRequired") or {}
    for name in _ordered(before, after):
        where = f"{path}/dependentRequired/{pointer_segment(name)}"
        was, now = set(before.get(name) or []), set(after.get(name) or [])
        if name not in after:
            out.append(Difference("DEPENDENCY_ARRAY_REMOVED", where, before[name], None))
        elif name not in before:
            out.append(Difference("DEPENDENCY_ARRAY_ADDED", where, None, after[name]))
        elif was != now:
            rule = (
                "DEPENDENCY_ARRAY_EXTENDED"
                if now > was
                else "DEPENDENCY_ARRAY_NARROWED"
                if now < was
                else "DEPENDENCY_ARRAY_CHANGED"
            )
            out.append(Difference(rule, where, before[name], after[name]))
    schemas_before: Mapping[str, Any] = old.get("dependentSchemas") or {}
    schemas_after: Mapping[str, Any] = new.get("dependentSchemas") or {}
    for name in _ordered(schemas_before, schemas_after):
        where = f"{path}/dependentSchemas/{pointer_segment(name)}"
        if name not in schemas_after:
            out.append(Difference("DEPENDENCY_SCHEMA_REMOVED", where, schemas_before[name], None))
        elif name not in schemas_before:
            out.append(Difference("DEPENDENCY_SCHEMA_ADDED", where, None, schemas_after[name]))
        elif canonical(schemas_before[name]) != canonical(schemas_after[name]):
            out += compare(schemas_before[name], schemas_after[name], where, None)
    return out
