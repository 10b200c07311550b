"""Compatibility verdicts against real validation, on generated schema pairs and payloads.

When ``check(BACKWARD, new, [old])`` says compatible, every payload valid under
``old`` must validate under ``new``; when ``check(FORWARD, ...)`` says so, every
payload valid under ``new`` must validate under ``old``. Pairs come from a
generated object schema and a few random edits of it (the kind people make);
payloads from a small generator for that schema subset, which also fills open
content models with the schemas' property names holding arbitrary values.
(hypothesis-jsonschema 0.23.1 does not run on this Hypothesis: it relies on
internals that have since changed.)

Defaults are left out of the generated schemas: Confluent (and Charter) pass a
required property *with a default* as compatible because the reader fills the
default in, which plain validation does not do; test_compat.py covers those.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from charter.governance import Mode, check

NAMES = ["a", "b", "c", "d"]
SCALARS = st.none() | st.booleans() | st.integers(-20, 20) | st.sampled_from(["", "a", "ab", "Z"])
VALUES = st.recursive(
    SCALARS | st.floats(-20, 20, allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner),
    max_leaves=6,
)


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    """A property schema: a typed value with constraints, an enum, a const, or anything."""
    kind = draw(st.sampled_from(["string", "integer", "number", "enum", "const", "any", "array"]))
    schema: dict[str, Any]
    if kind == "string":
        schema = {"type": draw(st.sampled_from(["string", ["string", "null"]]))}
        if draw(st.booleans()):
            schema["minLength"] = draw(st.integers(0, 2))
        if draw(st.booleans()):
            schema["maxLength"] = draw(st.integers(schema.get("minLength", 0), 4))
        if draw(st.booleans()):
            schema["pattern"] = draw(st.sampled_from(["^[a-z]*$", "^[A-Z]*$"]))
    elif kind in ("integer", "number"):
        schema = {"type": kind}
        low = draw(st.none() | st.integers(-5, 5))
        if low is not None:
            schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = low
        if draw(st.booleans()):
            schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = (low or 0) + draw(
                st.integers(2, 10)
            )
        if kind == "integer" and draw(st.booleans()):
            schema["multipleOf"] = draw(st.sampled_from([1, 2, 3, 4]))
    elif kind == "enum":
        schema = {"enum": draw(st.lists(SCALARS, min_size=1, max_size=4, unique_by=repr))}
    elif kind == "const":
        schema = {"const": draw(SCALARS)}
    elif kind == "array":
        schema = {"type": "array", "items": {"type": draw(st.sampled_from(["string", "integer"]))}}
        if draw(st.booleans()):
            schema["maxItems"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            schema["uniqueItems"] = True
    else:
        schema = {}
    return schema


MODELS = st.sampled_from([None, False, {"type": "string"}])


@st.composite
def objects(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    props = {}
    for name in names:
        nested = depth == 0 and draw(st.integers(0, 5)) == 0
        props[name] = draw(objects(depth + 1)) if nested else draw(leaves())
    schema: dict[str, Any] = {"type": "object", "properties": props}
    required = [n for n in names if draw(st.booleans())]
    if required:
        schema["required"] = required
    model = draw(MODELS)
    if model is not None:
        schema["additionalProperties"] = model
    return schema


@st.composite
def edited(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` after one to three edits of the kinds people make between versions."""
    new = copy.deepcopy(schema)
    # Mostly one edit, so that compatible pairs (the ones the properties test) are common.
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        props = new["properties"]
        edit = draw(
            st.sampled_from(["add", "remove", "require", "model", "leaf", "tweak", "tweak"])
        )
        if edit == "add":
            name = draw(st.sampled_from(NAMES))
            props[name] = draw(leaves())
            if draw(st.booleans()):
                new["required"] = sorted({*new.get("required", []), name})
        elif edit == "remove" and props:
            name = draw(st.sampled_from(sorted(props)))
            del props[name]
            new["required"] = [n for n in new.get("required", []) if n != name]
        elif edit == "require" and props:
            name = draw(st.sampled_from(sorted(props)))
            required = set(new.get("required", []))
            new["required"] = sorted(required ^ {name})
        elif edit == "model":
            model = draw(MODELS)
            new.pop("additionalProperties", None)
            if model is not None:
                new["additionalProperties"] = model
        elif edit == "leaf" and props:
            props[draw(st.sampled_from(sorted(props)))] = draw(leaves())
        elif edit == "tweak" and props:
            tweak(draw, props[draw(st.sampled_from(sorted(props)))])
        if not new.get("required"):
            new.pop("required", None)
    return new


def tweak(draw: st.DrawFn, leaf: dict[str, Any]) -> None:
    """Add, drop, raise or lower one constraint of a property; widen or narrow its enum."""
    if "enum" in leaf:
        values = list(leaf["enum"])
        if draw(st.booleans()) and len(values) > 1:
            values.pop(draw(st.integers(0, len(values) - 1)))
        else:
            values.append(draw(SCALARS))
        leaf["enum"] = list({repr(v): v for v in values}.values())
        return
    kinds = leaf.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    keywords = sorted(k for kind in kinds for k in CONSTRAINTS.get(kind, ()))
    if not keywords:
        return
    present = [k for k in keywords if k in leaf]
    prefer_present = bool(present) and draw(st.booleans())
    keyword = draw(st.sampled_from(present if prefer_present else keywords))
    if keyword == "uniqueItems":
        leaf[keyword] = not leaf.get(keyword, False)
    elif keyword not in leaf:
        leaf[keyword] = draw(st.integers(1, 4))
    elif draw(st.integers(0, 4)) == 0:
        del leaf[keyword]
    else:
        floor = 1 if keyword == "multipleOf" else 0
        leaf[keyword] = max(floor, leaf[keyword] + draw(st.sampled_from([-2, -1, 1, 2])))


CONSTRAINTS = {
    "string": ("minLength", "maxLength"),
    "integer": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"),
    "array": ("maxItems", "uniqueItems"),
}


@st.composite
def pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    old = draw(objects())
    return old, draw(edited(old))


def instances(schema: Any) -> st.SearchStrategy[Any]:
    """Values valid under ``schema`` (for the subset generated here)."""
    valid = jsonschema_rs.Draft202012Validator(schema).is_valid
    if "enum" in schema:
        return st.sampled_from(schema["enum"]).filter(valid)
    if "const" in schema:
        return st.just(schema["const"]).filter(valid)
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    options: list[st.SearchStrategy[Any]] = []
    if "string" in kinds:
        low = schema.get("minLength", 0)
        high = schema.get("maxLength", low + 4)
        # Lengths at the bounds half the time: that is where tightened limits bite.
        length = st.sampled_from([low, high]) | st.integers(low, max(low, high))
        options.append(length.flatmap(lambda n: st.text("abZ", min_size=n, max_size=n)))
    if "null" in kinds:
        options.append(st.none())
    if "integer" in kinds or "number" in kinds:
        options.append(st.integers(-12, 16) | st.sampled_from(sorted(limits(schema))))
    if "number" in kinds:
        options.append(st.floats(-12, 16, allow_nan=False))
    if "array" in kinds:
        options.append(
            st.lists(
                instances(schema.get("items", {})),
                max_size=schema.get("maxItems", 4),
                unique_by=repr if schema.get("uniqueItems") else None,
            )
        )
    if "object" in kinds:
        options.append(object_instances(schema))
    return (st.one_of(options) if options else VALUES).filter(valid)


def limits(schema: dict[str, Any]) -> set[int]:
    """The integers at and next to a numeric schema's bounds."""
    found = {0}
    for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if keyword in schema:
            found |= {schema[keyword] - 1, schema[keyword], schema[keyword] + 1}
    return found


@st.composite
def object_instances(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    out = {
        name: draw(instances(sub))
        for name, sub in props.items()
        if name in required or draw(st.booleans())
    }
    model = schema.get("additionalProperties", True)
    if model is not False:
        # Open models accept anything under undeclared names: exactly what an edit must respect.
        extra = instances(model) if isinstance(model, dict) else VALUES
        for name in draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)):
            if name not in props:
                out[name] = draw(extra)
    return out


def payloads(data: st.DataObject, schema: dict[str, Any]) -> Any:
    payload = data.draw(instances(schema))
    assert jsonschema_rs.Draft202012Validator(schema).is_valid(payload)
    return payload


PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@PROPERTY
@given(pair=pairs(), data=st.data())
def test_backward_compatible_means_old_payloads_validate_under_the_new_schema(
    pair: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject
) -> None:
    old, new = pair
    assume(check(Mode.BACKWARD, new, [old]).compatible)
    reader = jsonschema_rs.Draft202012Validator(new)
    for _ in range(5):
        payload = payloads(data, old)
        assert reader.is_valid(payload), (old, new, payload)


@PROPERTY
@given(pair=pairs(), data=st.data())
def test_forward_compatible_means_new_payloads_validate_under_the_old_schema(
    pair: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject
) -> None:
    old, new = pair
    assume(check(Mode.FORWARD, new, [old]).compatible)
    reader = jsonschema_rs.Draft202012Validator(old)
    for _ in range(5):
        payload = payloads(data, new)
        assert reader.is_valid(payload), (old, new, payload)


@settings(PROPERTY, max_examples=100)
@given(pair=pairs())
def test_full_is_backward_and_forward_and_none_always_passes(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    old, new = pair
    backward = check(Mode.BACKWARD, new, [old]).compatible
    forward = check(Mode.FORWARD, new, [old]).compatible
    assert check(Mode.FULL, new, [old]).compatible is (backward and forward)
    assert check(Mode.NONE, new, [old]).compatible
    assert check(Mode.BACKWARD, old, [old]).compatible
