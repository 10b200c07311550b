"""Schema compatibility, table-driven: each change kind of Confluent's JSON Schema diff, each mode.

Each row is one change from ``old`` to ``new``: the rule ``diff`` must name (and
where), and the verdicts a BACKWARD check (the new schema reads old data) and a
FORWARD check (the old schema reads new data) must give. FULL is both, NONE is
always compatible, and the transitive modes are run on a three-version history
in which only the oldest version conflicts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from charter.governance import RULES, Direction, Mode, check, diff
from charter.governance.compat import Problem


@dataclass(frozen=True)
class Row:
    id: str
    old: dict[str, Any]
    new: dict[str, Any]
    rule: str
    path: str
    backward: bool
    forward: bool
    renames: dict[str, str] = field(default_factory=dict)


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = required
    return schema


def closed(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return obj(props, required, additionalProperties=False)


def field_(schema: dict[str, Any]) -> dict[str, Any]:
    """An open object whose one property 'f' has ``schema``: changes to a field."""
    return obj({"f": schema})


STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
F = "#/properties/f"
DEFS_OLD = {
    "$defs": {"address": closed({"zip": {"type": "string", "maxLength": 10}})},
    **obj({"billing": {"$ref": "#/$defs/address"}}),
}
DEFS_NEW = copy.deepcopy(DEFS_OLD)
DEFS_NEW["$defs"]["address"]["properties"]["zip"]["maxLength"] = 5

ROWS = [
    # --- properties in closed, open and partially open content models -------------------------
    Row(
        "optional property added to closed model",
        closed({"id": STR}),
        closed({"id": STR, "n": INT}),
        "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
        "#/properties/n",
        True,
        False,
    ),
    Row(
        "required property added to closed model",
        closed({"id": STR}),
        closed({"id": STR, "n": INT}, ["n"]),
        "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
        "#/properties/n",
        False,
        False,
    ),
    Row(
        "required property with default added to closed model",
        closed({"id": STR}),
        closed({"id": STR, "n": {"type": "integer", "default": 0}}, ["n"]),
        "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL",
        "#/properties/n",
        True,
        False,
    ),
    Row(
        "optional property added to open model",
        obj({"id": STR}),
        obj({"id": STR, "n": INT}),
        "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "#/properties/n",
        False,
        True,
    ),
    Row(
        "required property added to open model",
        obj({"id": STR}),
        obj({"id": STR, "n": INT}, ["n"]),
        "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
        "#/properties/n",
        False,
        True,
    ),
    Row(
        "property with empty schema added to open model",
        obj({"id": STR}),
        obj({"id": STR, "n": {"description": "anything"}}),
        "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
        "#/properties/n",
        True,
        True,
    ),
    Row(
        "property removed from open model",
        obj({"id": STR, "n": INT}),
        obj({"id": STR}),
        "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL",
        "#/properties/n",
        True,
        False,
    ),
    Row(
        "property removed from closed model",
        closed({"id": STR, "n": INT}),
        closed({"id": STR}),
        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "#/properties/n",
        False,
        True,
    ),
    Row(
        "property added, covered by partially open model",
        obj({"id": STR}, additionalProperties=STR),
        obj({"id": STR, "n": STR}, additionalProperties=STR),
        "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "#/properties/n",
        True,
        True,
    ),
    Row(
        "property added, not covered by partially open model",
        obj({"id": STR}, additionalProperties=STR),
        obj({"id": STR, "n": INT}, additionalProperties=STR),
        "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "#/properties/n",
        False,
        False,
    ),
    Row(
        "property removed, covered by partially open model",
        obj({"id": STR, "n": {"type": "string", "maxLength": 3}}, additionalProperties=STR),
        obj({"id": STR}, additionalProperties=STR),
        "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "#/properties/n",
        True,
        False,
    ),
    Row(
        "property removed, not covered by partially open model",
        obj({"id": STR, "n": INT}, additionalProperties=STR),
        obj({"id": STR}, additionalProperties=STR),
        "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "#/properties/n",
        False,
        False,
    ),
    Row(
        "required flag added to an existing property",
        obj({"id": STR, "n": INT}),
        obj({"id": STR, "n": INT}, ["n"]),
        "REQUIRED_ATTRIBUTE_ADDED",
        "#/properties/n",
        False,
        True,
    ),
    Row(
        "required flag removed",
        obj({"id": STR, "n": INT}, ["n"]),
        obj({"id": STR, "n": INT}),
        "REQUIRED_ATTRIBUTE_REMOVED",
        "#/properties/n",
        True,
        False,
    ),
    Row(
        "content model closed",
        obj({"id": STR}),
        closed({"id": STR}),
        "ADDITIONAL_PROPERTIES_REMOVED",
        "#/additionalProperties",
        False,
        True,
    ),
    Row(
        "content model opened",
        closed({"id": STR}),
        obj({"id": STR}),
        "ADDITIONAL_PROPERTIES_ADDED",
        "#/additionalProperties",
        True,
        False,
    ),
    Row(
        "open content model made partially open",
        obj({"id": STR}),
        obj({"id": STR}, additionalProperties=STR),
        "ADDITIONAL_PROPERTIES_NARROWED",
        "#/additionalProperties",
        False,
        True,
    ),
    Row(
        "maxProperties added",
        obj({"id": STR}),
        obj({"id": STR}, maxProperties=3),
        "MAX_PROPERTIES_ADDED",
        "#/maxProperties",
        False,
        True,
    ),
    Row(
        "dependentRequired added",
        obj({"a": STR, "b": STR}),
        obj({"a": STR, "b": STR}, dependentRequired={"a": ["b"]}),
        "DEPENDENCY_ARRAY_ADDED",
        "#/dependentRequired/a",
        False,
        True,
    ),
    Row(
        "renamed property declared in a mapping",
        closed({"id": STR, "name": STR}, ["id"]),
        closed({"id": STR, "full_name": STR}, ["id"]),
        "PROPERTY_RENAMED",
        "#/properties/full_name",
        False,
        False,
        renames={"name": "full_name"},
    ),
    # --- enum and const ----------------------------------------------------------------------
    Row(
        "enum widened",
        field_({"enum": ["open", "won"]}),
        field_({"enum": ["open", "won", "lost"]}),
        "ENUM_ARRAY_EXTENDED",
        f"{F}/enum",
        True,
        False,
    ),
    Row(
        "enum narrowed",
        field_({"enum": ["open", "won", "lost"]}),
        field_({"enum": ["open", "won"]}),
        "ENUM_ARRAY_NARROWED",
        f"{F}/enum",
        False,
        True,
    ),
    Row(
        "enum changed",
        field_({"enum": ["open", "won"]}),
        field_({"enum": ["open", "closed"]}),
        "ENUM_ARRAY_CHANGED",
        f"{F}/enum",
        False,
        False,
    ),
    Row(
        "enum added to a free field",
        field_(STR),
        field_({"type": "string", "enum": ["a", "b"]}),
        "ENUM_ADDED",
        f"{F}/enum",
        False,
        True,
    ),
    Row(
        "const changed",
        field_({"const": "v1"}),
        field_({"const": "v2"}),
        "CONST_CHANGED",
        f"{F}/const",
        False,
        False,
    ),
    Row(
        "const widened to an enum",
        field_({"const": "v1"}),
        field_({"enum": ["v1", "v2"]}),
        "ENUM_ARRAY_EXTENDED",
        f"{F}/enum",
        True,
        False,
    ),
    # --- types -------------------------------------------------------------------------------
    Row("type changed", field_(STR), field_(INT), "TYPE_CHANGED", F, False, False),
    Row("integer widened to number", field_(INT), field_(NUM), "TYPE_EXTENDED", F, True, False),
    Row("number narrowed to integer", field_(NUM), field_(INT), "TYPE_NARROWED", F, False, True),
    Row(
        "nullable added",
        field_(STR),
        field_({"type": ["string", "null"]}),
        "TYPE_EXTENDED",
        F,
        True,
        False,
    ),
    Row(
        "type added to an untyped field",
        field_({}),
        field_(STR),
        "TYPE_NARROWED",
        F,
        False,
        True,
    ),
    # --- string constraints ------------------------------------------------------------------
    *[
        Row(
            f"{keyword} {change.lower()}",
            field_({"type": "string", **({keyword: was} if was is not None else {})}),
            field_({"type": "string", **({keyword: now} if now is not None else {})}),
            f"{stem}_{change}",
            f"{F}/{keyword}",
            backward,
            not backward,
        )
        for keyword, stem, was, now, change, backward in [
            ("maxLength", "MAX_LENGTH", 10, 20, "INCREASED", True),
            ("maxLength", "MAX_LENGTH", 20, 10, "DECREASED", False),
            ("maxLength", "MAX_LENGTH", None, 10, "ADDED", False),
            ("maxLength", "MAX_LENGTH", 10, None, "REMOVED", True),
            ("minLength", "MIN_LENGTH", 1, 3, "INCREASED", False),
            ("minLength", "MIN_LENGTH", 3, 1, "DECREASED", True),
            ("minLength", "MIN_LENGTH", None, 1, "ADDED", False),
            ("pattern", "PATTERN", None, "^[A-Z]+$", "ADDED", False),
            ("pattern", "PATTERN", "^[A-Z]+$", None, "REMOVED", True),
        ]
    ],
    Row(
        "pattern changed",
        field_({"type": "string", "pattern": "^[A-Z]+$"}),
        field_({"type": "string", "pattern": "^[a-z]+$"}),
        "PATTERN_CHANGED",
        f"{F}/pattern",
        False,
        False,
    ),
    # --- number constraints ------------------------------------------------------------------
    *[
        Row(
            f"{keyword} {change.lower()}",
            field_({"type": "number", **({keyword: was} if was is not None else {})}),
            field_({"type": "number", **({keyword: now} if now is not None else {})}),
            f"{stem}_{change}",
            f"{F}/{keyword}",
            backward,
            forward,
        )
        for keyword, stem, was, now, change, backward, forward in [
            ("maximum", "MAXIMUM", 10, 20, "INCREASED", True, False),
            ("maximum", "MAXIMUM", 20, 10, "DECREASED", False, True),
            ("minimum", "MINIMUM", 0, 1, "INCREASED", False, True),
            ("minimum", "MINIMUM", None, 0, "ADDED", False, True),
            ("minimum", "MINIMUM", 0, None, "REMOVED", True, False),
            ("exclusiveMinimum", "EXCLUSIVE_MINIMUM", None, 0, "ADDED", False, True),
            ("exclusiveMinimum", "EXCLUSIVE_MINIMUM", 5, 0, "DECREASED", True, False),
            ("exclusiveMaximum", "EXCLUSIVE_MAXIMUM", 100, 50, "DECREASED", False, True),
            ("multipleOf", "MULTIPLE_OF", 4, 2, "REDUCED", True, False),
            ("multipleOf", "MULTIPLE_OF", 2, 4, "EXPANDED", False, True),
            ("multipleOf", "MULTIPLE_OF", 2, 3, "CHANGED", False, False),
            ("multipleOf", "MULTIPLE_OF", 0.5, 0.25, "REDUCED", True, False),
            ("multipleOf", "MULTIPLE_OF", None, 2, "ADDED", False, True),
        ]
    ],
    # --- arrays ------------------------------------------------------------------------------
    Row(
        "array item type changed",
        field_({"type": "array", "items": STR}),
        field_({"type": "array", "items": INT}),
        "TYPE_CHANGED",
        f"{F}/items",
        False,
        False,
    ),
    Row(
        "minItems added",
        field_({"type": "array"}),
        field_({"type": "array", "minItems": 1}),
        "MIN_ITEMS_ADDED",
        f"{F}/minItems",
        False,
        True,
    ),
    Row(
        "maxItems increased",
        field_({"type": "array", "maxItems": 3}),
        field_({"type": "array", "maxItems": 5}),
        "MAX_ITEMS_INCREASED",
        f"{F}/maxItems",
        True,
        False,
    ),
    Row(
        "uniqueItems added",
        field_({"type": "array"}),
        field_({"type": "array", "uniqueItems": True}),
        "UNIQUE_ITEMS_ADDED",
        f"{F}/uniqueItems",
        False,
        True,
    ),
    Row(
        "uniqueItems removed",
        field_({"type": "array", "uniqueItems": True}),
        field_({"type": "array"}),
        "UNIQUE_ITEMS_REMOVED",
        f"{F}/uniqueItems",
        True,
        False,
    ),
    Row(
        "tuple item added to closed tuple",
        field_({"type": "array", "prefixItems": [STR], "items": False}),
        field_({"type": "array", "prefixItems": [STR, INT], "items": False}),
        "ITEM_ADDED_TO_CLOSED_CONTENT_MODEL",
        f"{F}/prefixItems/1",
        True,
        False,
    ),
    Row(
        "tuple item added to open tuple",
        field_({"type": "array", "prefixItems": [STR]}),
        field_({"type": "array", "prefixItems": [STR, INT]}),
        "ITEM_ADDED_TO_OPEN_CONTENT_MODEL",
        f"{F}/prefixItems/1",
        False,
        True,
    ),
    # --- nesting and references ----------------------------------------------------------------
    Row(
        "nested property type changed",
        obj({"account": closed({"id": STR})}),
        obj({"account": closed({"id": INT})}),
        "TYPE_CHANGED",
        "#/properties/account/properties/id",
        False,
        False,
    ),
    Row(
        "nested property removed from closed model",
        obj({"account": closed({"id": STR, "tier": STR})}),
        obj({"account": closed({"id": STR})}),
        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "#/properties/account/properties/tier",
        False,
        True,
    ),
    Row(
        "$ref into $defs: maxLength decreased",
        DEFS_OLD,
        DEFS_NEW,
        "MAX_LENGTH_DECREASED",
        "#/properties/billing/properties/zip/maxLength",
        False,
        True,
    ),
    # --- combined schemas --------------------------------------------------------------------
    Row(
        "oneOf extended",
        field_({"oneOf": [STR, INT]}),
        field_({"oneOf": [STR, INT, {"type": "boolean"}]}),
        "SUM_TYPE_EXTENDED",
        f"{F}/oneOf",
        True,
        False,
    ),
    Row(
        "anyOf narrowed",
        field_({"anyOf": [STR, INT, {"type": "boolean"}]}),
        field_({"anyOf": [STR, INT]}),
        "SUM_TYPE_NARROWED",
        f"{F}/anyOf",
        False,
        True,
    ),
    Row(
        "plain schema widened to a union",
        field_(STR),
        field_({"anyOf": [STR, {"type": "null"}]}),
        "SUM_TYPE_EXTENDED",
        F,
        True,
        False,
    ),
    Row(
        "allOf relaxed to anyOf",
        field_({"allOf": [STR, {"maxLength": 3}]}),
        field_({"anyOf": [STR, {"maxLength": 3}]}),
        "COMBINED_TYPE_EXTENDED",
        f"{F}/anyOf",
        True,
        False,
    ),
    Row(
        "allOf extended",
        field_({"allOf": [STR]}),
        field_({"allOf": [STR, {"maxLength": 3}]}),
        "PRODUCT_TYPE_EXTENDED",
        f"{F}/allOf",
        False,
        True,
    ),
    Row(
        "union alternative changed",
        field_({"oneOf": [STR, INT]}),
        field_({"oneOf": [STR, {"type": "boolean"}]}),
        "COMBINED_TYPE_SUBSCHEMAS_CHANGED",
        f"{F}/oneOf",
        False,
        False,
    ),
    Row(
        "not added",
        field_(STR),
        field_({"type": "string", "not": {"const": ""}}),
        "NOT_TYPE_EXTENDED",
        f"{F}/not",
        False,
        True,
    ),
    # --- annotations only --------------------------------------------------------------------
    Row(
        "description only",
        field_({"type": "string", "description": "old"}),
        field_({"type": "string", "description": "new"}),
        "DESCRIPTION_CHANGED",
        f"{F}/description",
        True,
        True,
    ),
    Row(
        "title and examples only",
        obj({"f": STR}, title="Deal", examples=[{"f": "a"}]),
        obj({"f": STR}, title="Opportunity", examples=[{"f": "b"}]),
        "TITLE_CHANGED",
        "#/title",
        True,
        True,
    ),
    Row(
        "format only (an annotation in Charter)",
        field_(STR),
        field_({"type": "string", "format": "email"}),
        "FORMAT_CHANGED",
        f"{F}/format",
        True,
        True,
    ),
    # --- keywords Charter does not analyse -----------------------------------------------------
    Row(
        "propertyNames added",
        obj({"id": STR}),
        obj({"id": STR}, propertyNames={"maxLength": 8}),
        "KEYWORD_ADDED",
        "#/propertyNames",
        False,
        True,
    ),
]
IDS = [row.id for row in ROWS]


def expected(row: Row, mode: Mode) -> bool:
    return (not mode.backward or row.backward) and (not mode.forward or row.forward)


def annotated(schema: dict[str, Any], note: str) -> dict[str, Any]:
    """The same schema under another description: a distinct, fully compatible version."""
    return {**schema, "description": note}


def test_the_table_covers_every_change_family_the_issue_names() -> None:
    rules = {row.rule for row in ROWS}
    assert len(rules) >= 25
    families = {RULES[rule].family for rule in rules}
    for family in [
        "PROPERTY_ADDED",
        "REQUIRED_PROPERTY_ADDED",
        "PROPERTY_REMOVED",
        "PROPERTY_RENAMED",
        "CONTENT_MODEL_CLOSED",
        "CONTENT_MODEL_OPENED",
        "ENUM_WIDENED",
        "ENUM_NARROWED",
        "TYPE_CHANGED",
        "TYPE_WIDENED",
        "TYPE_NARROWED",
        "CONSTRAINT_RELAXED",
        "CONSTRAINT_TIGHTENED",
        "UNION_WIDENED",
        "UNION_NARROWED",
        "ANNOTATION_CHANGED",
    ]:
        assert family in families


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_diff_names_the_rule_at_its_path(row: Row) -> None:
    found = [(d.rule, d.path) for d in diff(row.old, row.new, row.renames)]
    assert (row.rule, row.path) in found


@pytest.mark.parametrize("mode", [m for m in Mode if not m.transitive], ids=str)
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_verdict_against_the_latest_version(row: Row, mode: Mode) -> None:
    verdict = check(mode, row.new, [row.old], row.renames)

    assert verdict.compatible is expected(row, mode)
    assert bool(verdict.problems) is not verdict.compatible
    if mode.backward and not row.backward:
        # The change itself is what the backward check reports.
        assert (row.rule, row.path, Direction.BACKWARD) in [
            (p.rule, p.path, p.direction) for p in verdict.problems
        ]
    for problem in verdict.problems:
        assert problem.version == 1
        assert problem.message and problem.fix
        assert problem.direction in (
            [Direction.BACKWARD] * mode.backward + [Direction.FORWARD] * mode.forward
        )


@pytest.mark.parametrize("mode", [m for m in Mode if m.transitive or m is Mode.NONE], ids=str)
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_transitive_modes_check_every_earlier_version(row: Row, mode: Mode) -> None:
    # v1 is the row's old schema; v2 and v3 only re-describe the new one.
    history = [row.old, annotated(row.new, "v2"), annotated(row.new, "v3")]

    latest_only = check(Mode(mode.value.removesuffix("_TRANSITIVE")), row.new, history, row.renames)
    verdict = check(mode, row.new, history, row.renames)

    assert latest_only.compatible
    assert verdict.compatible is expected(row, mode)
    assert {p.version for p in verdict.problems} <= {1}


def test_none_reports_the_changes_but_never_refuses() -> None:
    verdict = check(Mode.NONE, field_(INT), [field_(STR)])

    assert verdict.compatible
    assert verdict.problems == []
    assert [d.rule for d in verdict.changes] == ["TYPE_CHANGED"]


def test_a_problem_says_what_broke_where_and_how_to_fix_it() -> None:
    verdict = check(
        Mode.BACKWARD,
        closed({"id": STR, "status": {"enum": ["open", "won"]}}),
        [closed({"id": STR, "status": {"enum": ["open", "won", "lost"]}})],
        versions=[7],
    )

    assert not verdict.compatible
    [problem] = verdict.problems
    assert problem == Problem(
        rule="ENUM_ARRAY_NARROWED",
        family="ENUM_NARROWED",
        path="#/properties/status/enum",
        version=7,
        direction=Direction.BACKWARD,
        message=problem.message,
        fix=problem.fix,
        before=["open", "won", "lost"],
        after=["open", "won"],
    )
    assert "v7" in problem.message
    assert "keep the removed values in the enum" in problem.fix
    assert "new major version" in problem.fix
    assert problem.to_json()["rule"] == "ENUM_ARRAY_NARROWED"
    assert problem.to_json()["path"] == "#/properties/status/enum"


def test_forward_problems_speak_of_the_earlier_version_as_the_reader() -> None:
    verdict = check(Mode.FORWARD, closed({"id": STR, "n": INT}), [closed({"id": STR})])

    [problem] = verdict.problems
    assert problem.rule == "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"
    assert problem.direction is Direction.FORWARD
    assert (problem.before, problem.after) == (None, "n")
    assert "missing from v1" in problem.message


def test_full_transitive_names_each_conflicting_version() -> None:
    v1 = closed({"id": STR, "legacy": STR})
    v2 = closed({"id": STR, "legacy": STR, "n": INT})
    new = closed({"id": STR, "n": INT})

    verdict = check(Mode.FULL_TRANSITIVE, new, [v1, v2])

    found = {(p.version, p.direction, p.rule) for p in verdict.problems}
    assert found == {
        (2, Direction.BACKWARD, "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
        (1, Direction.BACKWARD, "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
        (1, Direction.FORWARD, "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
    }


def test_a_declared_rename_is_one_rename_not_a_drop_and_an_add() -> None:
    old = obj({"account": closed({"id": STR, "name": STR}, ["name"])})
    new = obj({"account": closed({"id": STR, "legal_name": STR}, ["legal_name"])})

    without = [d.rule for d in diff(old, new)]
    for spelling in ["account.name", "/account/name", "#/properties/account/properties/name"]:
        renamed = diff(old, new, {spelling: "account.legal_name"})
        assert [(d.rule, d.path, d.old, d.new) for d in renamed] == [
            ("PROPERTY_RENAMED", "#/properties/account/properties/legal_name", "name", "legal_name")
        ]
    assert without == [
        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
    ]
    verdict = check(Mode.FULL, new, [old], {"account.name": "account.legal_name"})
    assert [(p.rule, p.direction) for p in verdict.problems] == [
        ("PROPERTY_RENAMED", Direction.BACKWARD),
        ("PROPERTY_RENAMED", Direction.FORWARD),
    ]
    assert "'name'" in verdict.problems[0].fix and "'legal_name'" in verdict.problems[0].fix


def test_a_renamed_property_is_still_compared_under_its_new_name() -> None:
    old = closed({"name": {"type": "string", "maxLength": 80}})
    new = closed({"full_name": {"type": "string", "maxLength": 40}})

    rules = [(d.rule, d.path) for d in diff(old, new, {"name": "full_name"})]

    assert rules == [
        ("PROPERTY_RENAMED", "#/properties/full_name"),
        ("MAX_LENGTH_DECREASED", "#/properties/full_name/maxLength"),
    ]


def test_recursive_definitions_terminate_and_report_the_change_once() -> None:
    node = obj({"label": STR, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}})
    old: dict[str, Any] = {"$defs": {"node": node}, "$ref": "#/$defs/node"}
    new = copy.deepcopy(old)
    new["$defs"]["node"]["properties"]["label"] = {"type": "string", "maxLength": 5}

    assert [(d.rule, d.path) for d in diff(old, new)] == [
        ("MAX_LENGTH_ADDED", "#/properties/label/maxLength")
    ]


def test_unchanged_schemas_have_no_differences() -> None:
    for row in ROWS:
        assert diff(row.old, copy.deepcopy(row.old)) == []
        assert check(Mode.FULL_TRANSITIVE, row.old, [row.old, row.old]).compatible


def test_no_earlier_version_is_always_compatible() -> None:
    assert check(Mode.FULL_TRANSITIVE, field_(STR), []).compatible


def test_version_numbers_must_match_the_versions() -> None:
    with pytest.raises(ValueError, match="2 version numbers for 1 earlier versions"):
        check(Mode.BACKWARD, field_(STR), [field_(STR)], versions=[1, 2])


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_has_a_message_and_a_fix_when_it_breaks(name: str) -> None:
    rule = RULES[name]
    words = dict.fromkeys(["reader", "writer", "reader_value", "writer_value", "name"], "x")
    assert rule.message.format(**words)
    if not rule.compatible:
        assert rule.fix_backward.format(**words)
        assert rule.fix_forward.format(**words)
