"""Mapping specs validate with useful messages; compiled mappings map payloads as declared."""

from __future__ import annotations

import copy
import sys
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from charter.errors import MappingError
from charter.mapping import (
    MISSING,
    CompiledMapping,
    FieldRule,
    MappingEndpoint,
    MappingSpec,
    compile_mapping,
    get_path,
)

EXAMPLE: dict[str, Any] = {
    "name": "crm-deal-to-order",
    "version": 1,
    "description": "closed deals become orders",
    "source": {"system": "crm", "event": "deal.closed"},
    "target": {"entity": "order", "version": 1},
    "fields": {
        "order_id": {"from": "id"},
        "customer.ref": {"from": "account.id"},
        "customer.name": {"from": "account.name"},
        "total": {"from": "amount"},
        "currency": {"from": "currency", "default": "EUR"},
        "status": {"from": "stage", "values": {"closed_won": "open", "closed_lost": "cancelled"}},
        "first_sku": {"from": "lines[0].sku"},
        "line_count": {"expr": "$count(lines)"},
        "channel": {"const": "crm"},
        "lines": {
            "from": "lines",
            "each": {
                "sku": {"from": "sku"},
                "quantity": {"from": "qty"},
                "price": {"from": "unit_price"},
            },
        },
    },
}

DEAL: dict[str, Any] = {
    "id": "D-1",
    "account": {"id": "A-9", "name": "Acme"},
    "amount": 120.5,
    "stage": "closed_won",
    "lines": [
        {"sku": "X1", "qty": 2, "unit_price": 10.0},
        {"sku": "X2", "qty": 1, "unit_price": 100.5},
    ],
}


def mapping(fields: dict[str, Any], **extra: Any) -> CompiledMapping:
    doc = {
        "name": "m",
        "version": 2,
        "source": {"system": "crm", "event": "deal.closed"},
        "target": {"entity": "order", "version": 1},
        "fields": fields,
        **extra,
    }
    return compile_mapping(MappingSpec.model_validate(doc))


def invalid(doc: dict[str, Any], model: type[Any] = FieldRule) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(doc)
    return str(caught.value)


def mapping_error(compiled: CompiledMapping, payload: Any) -> MappingError:
    with pytest.raises(MappingError) as caught:
        compiled.apply(payload)
    return caught.value


# --- the example from the spec ------------------------------------------------------------


def test_example_mapping_builds_the_order() -> None:
    compiled = compile_mapping(MappingSpec.model_validate(EXAMPLE))

    assert compiled.apply(DEAL) == {
        "order_id": "D-1",
        "customer": {"ref": "A-9", "name": "Acme"},
        "total": 120.5,
        "currency": "EUR",
        "status": "open",
        "first_sku": "X1",
        "line_count": 2,
        "channel": "crm",
        "lines": [
            {"sku": "X1", "quantity": 2, "price": 10.0},
            {"sku": "X2", "quantity": 1, "price": 100.5},
        ],
    }


def test_output_keys_follow_declaration_order() -> None:
    compiled = compile_mapping(MappingSpec.model_validate(EXAMPLE))

    assert list(compiled.apply(DEAL)) == [
        "order_id",
        "customer",
        "total",
        "currency",
        "status",
        "first_sku",
        "line_count",
        "channel",
        "lines",
    ]


def test_apply_leaves_the_payload_untouched() -> None:
    compiled = compile_mapping(MappingSpec.model_validate(EXAMPLE))
    before = copy.deepcopy(DEAL)

    compiled.apply(DEAL)

    assert before == DEAL


def test_compiled_mapping_exposes_spec_key_and_lineage() -> None:
    spec = MappingSpec.model_validate(EXAMPLE)
    compiled = compile_mapping(spec)

    assert compiled.spec is spec
    assert compiled.key == "crm-deal-to-order@1"
    assert repr(compiled) == "<CompiledMapping crm-deal-to-order@1>"
    assert compiled.source_paths() == {
        "order_id": "/id",
        "customer.ref": "/account/id",
        "customer.name": "/account/name",
        "total": "/amount",
        "currency": "/currency",
        "status": "/stage",
        "first_sku": "/lines/0/sku",
        "line_count": "expr:$count(lines)",
        "channel": "const",
        "lines": "/lines",
        "lines[*].sku": "/lines/*/sku",
        "lines[*].quantity": "/lines/*/qty",
        "lines[*].price": "/lines/*/unit_price",
    }


def test_source_paths_escape_pointer_tokens_and_name_the_whole_payload() -> None:
    compiled = mapping({"a": {"from": "x/y.m~n"}, "all": {"from": "$"}})

    assert compiled.source_paths() == {"a": "/x~1y/m~0n", "all": ""}


# --- from -----------------------------------------------------------------------------------


def test_from_reads_nested_names_and_indexes() -> None:
    compiled = mapping({"v": {"from": "a.b[1].c"}, "w": {"from": "[0]"}})

    assert compiled.apply({"a": {"b": [{}, {"c": 7}]}}) == {"v": 7}
    assert compiled.apply([["x"]]) == {"w": ["x"]}


def test_from_dollar_is_the_whole_payload() -> None:
    compiled = mapping({"copy": {"from": "$"}})

    assert compiled.apply({"a": 1}) == {"copy": {"a": 1}}
    assert compiled.apply(3) == {"copy": 3}


def test_missing_value_omits_the_field_but_null_is_kept() -> None:
    compiled = mapping({"a": {"from": "a"}, "b.c": {"from": "b"}})

    assert compiled.apply({}) == {}
    assert compiled.apply({"a": None}) == {"a": None}
    assert compiled.apply({"b": None}) == {"b": {"c": None}}


@pytest.mark.parametrize(
    "payload",
    [
        {"a": 1},
        {"a": {"b": "text"}},
        {"a": {"b": []}},
        {"a": {"b": [1, 2]}},
        {"a": None},
        {"a": [{"b": 1}]},
        "a",
        None,
        [1],
    ],
)
def test_path_through_a_missing_or_wrong_shaped_value_is_missing(payload: Any) -> None:
    compiled = mapping({"v": {"from": "a.b[2]"}})

    assert compiled.apply(payload) == {}


def test_nested_output_parent_appears_only_when_a_child_has_a_value() -> None:
    compiled = mapping({"customer.ref": {"from": "id"}, "customer.name": {"from": "name"}})

    assert compiled.apply({"name": "Acme"}) == {"customer": {"name": "Acme"}}
    assert compiled.apply({}) == {}


def test_deeply_nested_output_keys() -> None:
    compiled = mapping({"a.b.c": {"const": 1}, "a.b.d": {"const": 2}, "a.e": {"const": 3}})

    assert compiled.apply({}) == {"a": {"b": {"c": 1, "d": 2}, "e": 3}}


# --- const and default ----------------------------------------------------------------------


def test_const_is_set_whatever_the_payload() -> None:
    compiled = mapping({"channel": {"const": "crm"}, "none": {"const": None}})

    assert compiled.apply({"channel": "web"}) == {"channel": "crm", "none": None}


def test_const_lists_and_objects_are_fresh_on_every_call() -> None:
    compiled = mapping({"tags": {"const": ["a"]}, "meta": {"const": {"k": [1]}}})

    first = compiled.apply({})
    first["tags"].append("changed")
    first["meta"]["k"].append(2)

    assert compiled.apply({}) == {"tags": ["a"], "meta": {"k": [1]}}


def test_default_replaces_missing_and_null_but_not_falsy_values() -> None:
    compiled = mapping({"currency": {"from": "currency", "default": "EUR"}})

    assert compiled.apply({}) == {"currency": "EUR"}
    assert compiled.apply({"currency": None}) == {"currency": "EUR"}
    assert compiled.apply({"currency": ""}) == {"currency": ""}
    assert compiled.apply({"currency": 0}) == {"currency": 0}
    assert compiled.apply({"currency": "USD"}) == {"currency": "USD"}


def test_explicit_null_default_writes_null_for_a_missing_value() -> None:
    compiled = mapping({"note": {"from": "note", "default": None}})

    assert compiled.apply({}) == {"note": None}


def test_default_object_is_fresh_on_every_call() -> None:
    compiled = mapping({"meta": {"from": "meta", "default": {"tags": []}}})

    compiled.apply({})["meta"]["tags"].append("x")

    assert compiled.apply({}) == {"meta": {"tags": []}}


def test_default_is_an_output_value_and_skips_the_value_map() -> None:
    compiled = mapping({"status": {"from": "stage", "default": "open", "values": {"won": "done"}}})

    assert compiled.apply({}) == {"status": "open"}


# --- value maps -----------------------------------------------------------------------------


def test_value_map_translates_pick_list_values() -> None:
    compiled = mapping({"status": {"from": "stage", "values": {"won": "open", "lost": None}}})

    assert compiled.apply({"stage": "won"}) == {"status": "open"}
    assert compiled.apply({"stage": "lost"}) == {"status": None}


def test_unmapped_value_is_an_error_by_default() -> None:
    compiled = compile_mapping(MappingSpec.model_validate(EXAMPLE))

    error = mapping_error(compiled, {**DEAL, "stage": "X"})

    assert error.detail == (
        "value 'X' at /stage has no entry in the value map of field 'status' "
        "in mapping crm-deal-to-order v1"
    )
    assert error.pointer == "/stage"
    assert error.fix == "add 'X' under fields.status.values in the mapping, or set on_unmapped"
    assert error.problem()["pointer"] == "/stage"


def test_unmapped_non_text_value_is_shown_as_json() -> None:
    compiled = mapping({"s": {"from": "s", "values": {"a": "b"}}})

    assert "value true at /s" in mapping_error(compiled, {"s": True}).detail
    assert 'value {"k":1} at /s' in mapping_error(compiled, {"s": {"k": 1}}).detail


def test_unmapped_long_value_is_shortened_in_the_message() -> None:
    compiled = mapping({"s": {"from": "s", "values": {"a": "b"}}})

    error = mapping_error(compiled, {"s": "x" * 500})

    assert "x" * 500 not in error.detail
    assert "..." in error.detail


def test_unmapped_value_with_on_unmapped_default_takes_the_default() -> None:
    compiled = mapping(
        {"s": {"from": "s", "values": {"a": "A"}, "on_unmapped": "default", "default": "other"}}
    )

    assert compiled.apply({"s": "a"}) == {"s": "A"}
    assert compiled.apply({"s": "zzz"}) == {"s": "other"}
    assert compiled.apply({"s": 5}) == {"s": "other"}


def test_unmapped_value_with_on_unmapped_pass_goes_through_unchanged() -> None:
    compiled = mapping({"s": {"from": "s", "values": {"a": "A"}, "on_unmapped": "pass"}})

    assert compiled.apply({"s": "a"}) == {"s": "A"}
    assert compiled.apply({"s": "zzz"}) == {"s": "zzz"}
    assert compiled.apply({"s": 1.5}) == {"s": 1.5}


def test_integer_keys_from_yaml_match_integer_values() -> None:
    compiled = mapping({"s": {"from": "s", "values": {1: "open", "2": "closed"}}})

    assert compiled.apply({"s": 1}) == {"s": "open"}
    assert compiled.apply({"s": "1"}) == {"s": "open"}
    assert compiled.apply({"s": 2}) == {"s": "closed"}
    assert mapping_error(compiled, {"s": True}).pointer == "/s"
    assert mapping_error(compiled, {"s": 1.0}).pointer == "/s"


def test_value_map_applies_to_each_item_of_a_multi_select_list() -> None:
    compiled = mapping({"tags": {"from": "tags", "values": {"a": "A", "b": "B"}}})

    assert compiled.apply({"tags": ["a", "b", "a"]}) == {"tags": ["A", "B", "A"]}
    assert mapping_error(compiled, {"tags": ["a", "c"]}).pointer == "/tags/1"


def test_value_map_applies_to_expression_results() -> None:
    compiled = mapping({"s": {"expr": "$lowercase(stage)", "values": {"won": "open"}}})

    assert compiled.apply({"stage": "WON"}) == {"s": "open"}


def test_value_map_object_entries_are_fresh_on_every_call() -> None:
    compiled = mapping({"s": {"from": "s", "values": {"a": {"code": [1]}}}})

    compiled.apply({"s": "a"})["s"]["code"].append(2)

    assert compiled.apply({"s": "a"}) == {"s": {"code": [1]}}


# --- required -------------------------------------------------------------------------------


def test_required_missing_value_is_an_error_naming_field_and_pointer() -> None:
    compiled = mapping({"customer.ref": {"from": "account.id", "required": True}})

    error = mapping_error(compiled, {"account": {}})

    assert error.pointer == "/account/id"
    assert "field 'customer.ref' in mapping m v2 is required" in error.detail
    assert error.fix is not None and "default" in error.fix


def test_required_null_value_is_an_error() -> None:
    compiled = mapping({"ref": {"from": "id", "required": True}})

    assert mapping_error(compiled, {"id": None}).pointer == "/id"
    assert compiled.apply({"id": 0}) == {"ref": 0}


def test_required_is_satisfied_by_a_default() -> None:
    compiled = mapping({"c": {"from": "c", "default": "EUR", "required": True}})

    assert compiled.apply({}) == {"c": "EUR"}


def test_required_expression_without_a_value_is_an_error() -> None:
    compiled = mapping({"n": {"expr": "nothing.here", "required": True}})

    error = mapping_error(compiled, {})

    assert "'nothing.here'" in error.detail
    assert error.pointer == ""


# --- each -----------------------------------------------------------------------------------


def test_each_maps_items_with_nested_rules_and_nested_output() -> None:
    compiled = mapping(
        {
            "lines": {
                "from": "items",
                "each": {
                    "product.sku": {"from": "sku"},
                    "qty": {"from": "qty", "default": 1},
                    "kind": {"const": "goods"},
                },
            }
        }
    )

    assert compiled.apply({"items": [{"sku": "A", "qty": 3}, {"sku": "B"}, {}]}) == {
        "lines": [
            {"product": {"sku": "A"}, "qty": 3, "kind": "goods"},
            {"product": {"sku": "B"}, "qty": 1, "kind": "goods"},
            {"qty": 1, "kind": "goods"},
        ]
    }


def test_each_over_an_empty_list_gives_an_empty_list() -> None:
    compiled = mapping({"lines": {"from": "lines", "each": {"sku": {"from": "sku"}}}})

    assert compiled.apply({"lines": []}) == {"lines": []}
    assert compiled.apply({}) == {}


def test_each_treats_a_lone_object_as_a_list_of_one() -> None:
    compiled = mapping({"lines": {"from": "lines", "each": {"sku": {"from": "sku"}}}})

    assert compiled.apply({"lines": {"sku": "A"}}) == {"lines": [{"sku": "A"}]}


def test_each_over_a_scalar_is_an_error() -> None:
    compiled = mapping({"lines": {"from": "lines", "each": {"sku": {"from": "sku"}}}})

    error = mapping_error(compiled, {"lines": "A"})

    assert error.pointer == "/lines"
    assert "is a string" in error.detail
    assert error.fix is not None and "fields.lines" in error.fix


def test_errors_inside_a_list_point_at_the_item() -> None:
    compiled = mapping(
        {
            "lines": {
                "from": "order.lines",
                "each": {
                    "status": {"from": "state", "values": {"ok": "open"}},
                    "sku": {"from": "sku", "required": True},
                },
            }
        }
    )
    payload = {"order": {"lines": [{"state": "ok", "sku": "A"}, {"state": "bad", "sku": "B"}]}}

    error = mapping_error(compiled, payload)
    assert error.pointer == "/order/lines/1/state"
    assert "field 'lines.each.status'" in error.detail
    assert error.fix is not None and "fields.lines.each.status.values" in error.fix

    missing = {"order": {"lines": [{"state": "ok", "sku": "A"}, {"state": "ok"}]}}
    assert mapping_error(compiled, missing).pointer == "/order/lines/1/sku"


def test_nested_each_points_into_inner_lists() -> None:
    compiled = mapping(
        {
            "orders": {
                "from": "orders",
                "each": {
                    "lines": {"from": "lines", "each": {"n": {"from": "n", "required": True}}}
                },
            }
        }
    )

    payload = {"orders": [{"lines": [{"n": 1}]}, {"lines": [{"n": 1}, {"n": 2}, {}]}]}

    assert mapping_error(compiled, payload).pointer == "/orders/1/lines/2/n"


def test_each_over_an_expression_result() -> None:
    compiled = mapping(
        {
            "big": {
                "expr": "lines[qty > 1]",
                "each": {"sku": {"from": "sku"}, "qty": {"from": "qty", "required": True}},
            }
        }
    )

    assert compiled.apply({"lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}]}) == {
        "big": [{"sku": "A", "qty": 2}]
    }
    assert compiled.apply(
        {"lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}, {"sku": "C", "qty": 5}]}
    ) == {"big": [{"sku": "A", "qty": 2}, {"sku": "C", "qty": 5}]}


def test_expressions_inside_each_see_the_item_and_the_whole_payload_as_root() -> None:
    compiled = mapping(
        {
            "lines": {
                "from": "lines",
                "each": {
                    "amount": {"expr": "qty * price"},
                    "currency": {"expr": "$root.currency"},
                },
            }
        }
    )

    payload = {"currency": "EUR", "lines": [{"qty": 2, "price": 5}, {"qty": 1, "price": 1.5}]}

    assert compiled.apply(payload) == {
        "lines": [{"amount": 10, "currency": "EUR"}, {"amount": 1.5, "currency": "EUR"}]
    }


def test_expression_errors_inside_each_point_at_the_item() -> None:
    compiled = mapping({"lines": {"from": "lines", "each": {"amount": {"expr": "qty * price"}}}})

    error = mapping_error(compiled, {"lines": [{"qty": 1, "price": 1}, {"qty": "x", "price": 1}]})

    assert error.pointer == "/lines/1"
    assert "'qty * price'" in error.detail
    assert "field 'lines.each.amount'" in error.detail


# --- JSONata --------------------------------------------------------------------------------


def test_expression_is_evaluated_against_the_whole_payload() -> None:
    compiled = mapping(
        {
            "count": {"expr": "$count(lines)"},
            "skus": {"expr": "lines.sku"},
            "label": {"expr": "account.name & ' (' & id & ')'"},
            "total": {"expr": "$sum(lines.(qty * unit_price))"},
        }
    )

    assert compiled.apply(DEAL) == {
        "count": 2,
        "skus": ["X1", "X2"],
        "label": "Acme (D-1)",
        "total": 120.5,
    }


def test_expression_results_are_plain_json() -> None:
    compiled = mapping(
        {
            "skus": {"expr": "lines.sku"},
            "shape": {"expr": "{'skus': lines.sku, 'n': [1..3], 'none': null}"},
            "all": {"expr": "$"},
        }
    )

    out = compiled.apply(DEAL)

    assert type(out["skus"]) is list
    assert out["shape"] == {"skus": ["X1", "X2"], "n": [1, 2, 3], "none": None}
    assert type(out["shape"]["skus"]) is list
    assert type(out["shape"]["n"]) is list
    assert out["all"] == DEAL
    assert out["all"] is not DEAL


def test_expression_undefined_omits_the_field_and_null_writes_null() -> None:
    compiled = mapping({"u": {"expr": "nothing"}, "n": {"expr": "null"}, "v": {"expr": "gone"}})

    assert compiled.apply({"gone": None}) == {"n": None, "v": None}


def test_expression_null_or_undefined_takes_the_default() -> None:
    compiled = mapping({"a": {"expr": "x", "default": 0}, "b": {"expr": "y", "default": 0}})

    assert compiled.apply({"x": None}) == {"a": 0, "b": 0}


def test_expression_runtime_error_names_field_and_expression() -> None:
    compiled = mapping({"total": {"expr": "amount + 1"}})

    error = mapping_error(compiled, {"amount": "ten"})

    assert "'amount + 1'" in error.detail
    assert "field 'total'" in error.detail
    assert "mapping m v2" in error.detail
    assert error.fix is not None and "fields.total.expr" in error.fix


def test_expression_raising_a_python_error_is_a_mapping_error() -> None:
    compiled = mapping({"ratio": {"expr": "a / b"}})

    assert isinstance(mapping_error(compiled, {"a": 1, "b": 0}), MappingError)


def test_expression_returning_a_function_is_a_mapping_error() -> None:
    compiled = mapping({"f": {"expr": "function($x) { $x }"}})

    error = mapping_error(compiled, {})

    assert "not a JSON value" in error.detail


def test_expressions_give_each_thread_its_own_payload() -> None:
    # '$$' reads the input from the expression's environment, which concurrent calls share.
    compiled = mapping({"ids": {"expr": "lines.($$.id)"}})
    wrong: list[Any] = []

    def worker(ident: int) -> None:
        payload = {"id": ident, "lines": [1, 2]}
        for _ in range(300):
            result = compiled.apply(payload)
            if result != {"ids": [ident, ident]}:
                wrong.append(result)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    assert wrong == []


# --- get_path and MISSING -------------------------------------------------------------------


def test_get_path_reads_values_and_reports_missing() -> None:
    payload = {"a": {"b": [10, {"c": None}]}, "x.y": 1}

    assert get_path(payload, "a.b[0]") == 10
    assert get_path(payload, "a.b[1].c") is None
    assert get_path(payload, "a.b[2]") is MISSING
    assert get_path(payload, "a.z") is MISSING
    assert get_path(payload, "$") is payload
    assert repr(MISSING) == "MISSING"


def test_get_path_rejects_a_malformed_path() -> None:
    with pytest.raises(ValueError, match="empty name"):
        get_path({}, "a..b")


# --- spec validation ------------------------------------------------------------------------


def test_spec_accepts_from_by_alias_and_by_name_and_dumps_it_as_from() -> None:
    by_alias = FieldRule.model_validate({"from": "a"})
    by_name = FieldRule(from_="a")

    assert by_alias == by_name
    assert by_alias.model_dump() == {"from": "a"}


def test_spec_dump_validates_back_to_the_same_spec() -> None:
    spec = MappingSpec.model_validate(
        {**EXAMPLE, "fields": {**EXAMPLE["fields"], "note": {"from": "n", "default": None}}}
    )

    again = MappingSpec.model_validate(spec.model_dump(mode="json"))

    assert again == spec
    assert compile_mapping(again).apply({}) == compile_mapping(spec).apply({})


def test_spec_is_frozen() -> None:
    spec = MappingSpec.model_validate(EXAMPLE)

    with pytest.raises(ValidationError):
        spec.version = 2  # type: ignore[misc]


def test_spec_keeps_renames_without_runtime_effect() -> None:
    spec = MappingSpec.model_validate({**EXAMPLE, "renames": {"cust_ref": "customer.ref"}})

    assert spec.renames == {"cust_ref": "customer.ref"}
    assert compile_mapping(spec).apply(DEAL) == compile_mapping(
        MappingSpec.model_validate(EXAMPLE)
    ).apply(DEAL)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"from": "a", "expr": "b"},
            "exactly one of 'from', 'expr', 'const'; it has 'from' and 'expr'",
        ),
        ({"from": "a", "const": None}, "it has 'from' and 'const'"),
        ({}, "exactly one of 'from', 'expr', 'const'; it has none"),
        ({"default": 1}, "exactly one of 'from', 'expr', 'const'"),
        ({"expr": "$count("}, "JSONata expression '$count(' does not compile"),
        ({"expr": ""}, "JSONata expression '' does not compile"),
        ({"from": "a..b"}, "path 'a..b' has an empty name between dots"),
        ({"from": "a[x]"}, "a list index is a whole number"),
        ({"from": "a[-1]"}, "a list index is a whole number"),
        ({"from": "a[0"}, "unclosed or stray bracket"),
        ({"from": "a]"}, "']' without its '['"),
        ({"from": "a[0]b"}, "unclosed or stray bracket"),
        ({"from": ""}, "the path is empty"),
        ({"from": "$.a"}, "'$' stands alone for the whole payload"),
        ({"from": "a."}, "empty name between dots"),
        ({"const": 1, "default": 2}, "a 'const' rule takes no other options; drop 'default'"),
        ({"const": 1, "required": True}, "drop 'required'"),
        ({"from": "a", "on_unmapped": "pass"}, "'on_unmapped' only applies to a value map"),
        (
            {"from": "a", "values": {"x": "y"}, "on_unmapped": "default"},
            "on_unmapped 'default' needs a 'default' value",
        ),
        (
            {"from": "a", "values": {"x": "y"}, "on_unmapped": "drop"},
            "'error', 'default' or 'pass'",
        ),
        (
            {"from": "a", "values": {"x": "y"}, "each": {"b": {"from": "b"}}},
            "'values' or 'each', not both",
        ),
        ({"from": "a", "each": {}}, "'each' needs at least one field rule"),
        ({"from": "a", "each": {"b": {"from": "b", "expr": "c"}}}, "exactly one of"),
        ({"from": "a", "each": {"b": {"const": 1}, "b.c": {"const": 2}}}, "lies inside 'b'"),
        ({"from": "a", "values": {True: "y"}}, "value map key True is not text"),
        ({"from": "a", "values": {1: "y", "1": "z"}}, "value map key '1' appears twice"),
        ({"from": "a", "defualt": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_field_rule_is_a_validation_error_that_names_the_fix(
    rule: dict[str, Any], message: str
) -> None:
    assert message in invalid(rule)


def test_bare_string_rule_suggests_the_object_form() -> None:
    doc = {**EXAMPLE, "fields": {"total": "amount"}}

    assert "such as {from: amount}" in invalid(doc, MappingSpec)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "a mapping needs at least one field rule"),
        ({"customer": {"const": 1}, "customer.name": {"const": 2}}, "lies inside 'customer'"),
        ({"a..b": {"const": 1}}, "output field 'a..b' has an empty name"),
        ({"lines[0]": {"const": 1}}, "output fields nest with dots only"),
    ],
)
def test_bad_fields_are_validation_errors(fields: dict[str, Any], message: str) -> None:
    assert message in invalid({**EXAMPLE, "fields": fields}, MappingSpec)


def test_errors_in_nested_rules_name_their_location() -> None:
    doc = {**EXAMPLE, "fields": {"lines": {"from": "lines", "each": {"sku": {"expr": "("}}}}}

    text = invalid(doc, MappingSpec)

    assert "fields.lines.each.sku.expr" in text
    assert "does not compile" in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Deal_To_Order"}, "should match pattern"),
        ({"version": 0}, "greater than or equal to 1"),
        ({"source": {"system": "crm"}}, "an endpoint is {system, event}, {entity, version}"),
        ({"source": {"system": "crm", "entity": "order"}}, "got entity, system"),
        ({"source": {"system": "crm", "event": "x", "version": 1}}, "an endpoint is"),
        ({"source": {"system": "crm", "payload": "order"}}, "a mapping's source is a system event"),
        ({"target": {"system": "erp", "event": "x"}}, "a mapping's target is an entity"),
        ({"target": {"entity": "order", "version": 0}}, "greater than or equal to 1"),
        ({"target": {"entity": "order", "version": 1, "colour": "red"}}, "Extra inputs"),
        ({"kind": "Mapping"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_spec_is_a_validation_error(changes: dict[str, Any], message: str) -> None:
    assert message in invalid({**EXAMPLE, **changes}, MappingSpec)


@pytest.mark.parametrize(
    ("endpoint", "form", "shown"),
    [
        ({"system": "crm", "event": "deal.closed"}, "event", "crm/deal.closed"),
        ({"entity": "order", "version": 3}, "entity", "order@3"),
        ({"system": "erp", "payload": "order"}, "payload", "erp payload order"),
    ],
)
def test_endpoint_forms(endpoint: dict[str, Any], form: str, shown: str) -> None:
    parsed = MappingEndpoint.model_validate(endpoint)

    assert parsed.form == form
    assert str(parsed) == shown


def test_entity_to_system_payload_mapping_validates() -> None:
    spec = MappingSpec.model_validate(
        {
            **EXAMPLE,
            "source": {"entity": "order", "version": 1},
            "target": {"system": "erp", "payload": "sales-order"},
        }
    )

    assert spec.source.entity == "order"
    assert spec.target.system == "erp"
    assert spec.source.system is None
