"""Properties of compiled mappings over generated payloads."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from charter.errors import MappingError
from charter.mapping import MISSING, CompiledMapping, MappingSpec, compile_mapping, get_path

# Few short names, so generated paths often meet generated payloads.
NAMES = st.sampled_from(["a", "b", "c", "lines", "x/y", "~"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=25,
)
ANY_JSON = st.recursive(
    SCALARS | st.floats() | st.dictionaries(st.text(max_size=4), SCALARS, max_size=3),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(NAMES | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=30,
)
PATHS = st.lists(NAMES | st.integers(min_value=0, max_value=3), min_size=1, max_size=4)


def path_text(segments: list[str | int]) -> str:
    text = ""
    for segment in segments:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def mapping(fields: dict[str, Any]) -> CompiledMapping:
    return compile_mapping(
        MappingSpec.model_validate(
            {
                "name": "prop",
                "version": 1,
                "source": {"system": "s", "event": "e"},
                "target": {"entity": "t", "version": 1},
                "fields": fields,
            }
        )
    )


def is_plain_json(value: Any) -> bool:
    # Floats are not checked for finiteness: 'from' passes payload numbers through as they are.
    if value is None or type(value) in (str, int, bool, float):
        return True
    if type(value) is list:
        return all(is_plain_json(item) for item in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain_json(v) for k, v in value.items())
    return False


@given(payload=JSON, segments=PATHS)
def test_from_copies_the_value_at_the_path(payload: Any, segments: list[str | int]) -> None:
    path = path_text(segments)
    compiled = mapping({"x": {"from": path}, "deep.y": {"from": path}})

    out = compiled.apply(payload)

    expected = get_path(payload, path)
    assert out.get("x", MISSING) == expected
    assert out.get("deep", {}).get("y", MISSING) == expected


@given(data=st.data(), payload=st.dictionaries(NAMES, JSON, min_size=1))
def test_from_finds_every_value_of_the_payload(data: st.DataObject, payload: Any) -> None:
    # Walk down the payload to a value that is surely there, then read it back.
    segments: list[str | int] = []
    value = payload
    while True:
        if isinstance(value, dict) and value:
            key = data.draw(st.sampled_from(sorted(value)))
        elif isinstance(value, list) and value:
            key = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
        else:
            break
        segments.append(key)
        value = value[key]
        if data.draw(st.booleans()):
            break

    assert mapping({"x": {"from": path_text(segments)}}).apply(payload) == {"x": value}


VALUE_MAPS = st.dictionaries(st.text(max_size=3), SCALARS, max_size=5)


def unmapped(value: Any, values: dict[str, Any]) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, str | int):
        return str(value) not in values
    return True


@given(values=VALUE_MAPS, value=JSON)
def test_pass_leaves_unmapped_values_unchanged(values: dict[str, Any], value: Any) -> None:
    compiled = mapping({"x": {"from": "v", "values": values, "on_unmapped": "pass"}})
    items = value if isinstance(value, list) else [value]

    out = compiled.apply({"v": value})

    if value is None:
        assert out == {"x": None}
    elif isinstance(value, list):
        assert out["x"] == [item if unmapped(item, values) else values[str(item)] for item in items]
    elif unmapped(value, values):
        assert out["x"] == value
    else:
        assert out["x"] == values[str(value)]


@given(values=VALUE_MAPS, value=st.text(max_size=3) | st.integers(-5, 5))
def test_error_mode_maps_listed_values_and_refuses_the_rest(
    values: dict[str, Any], value: Any
) -> None:
    compiled = mapping({"x": {"from": "v", "values": values}})

    if unmapped(value, values):
        try:
            compiled.apply({"v": value})
        except MappingError as error:
            assert error.pointer == "/v"
        else:
            raise AssertionError("an unmapped value was accepted")
    else:
        assert compiled.apply({"v": value}) == {"x": values[str(value)]}


# Each rule runs in a mapping of its own, so one refusing a payload does not hide the others.
ROBUST = [
    mapping({name: rule})
    for name, rule in {
        "id": {"from": "a", "required": True},
        "first": {"from": "lines[0].b"},
        "status": {"from": "b", "values": {"x": "X", "1": "one"}},
        "kept": {"from": "c", "values": {"x": "X"}, "on_unmapped": "pass"},
        "fallback": {"from": "c", "values": {"x": "X"}, "on_unmapped": "default", "default": {}},
        "lines": {
            "from": "lines",
            "each": {
                "n": {"expr": "$count($root.lines)"},
                "c": {"from": "c", "values": {"x": "X"}, "on_unmapped": "pass"},
                "b": {"from": "b", "required": True},
            },
        },
        "over": {"expr": "lines[b > 0]", "each": {"a": {"from": "a"}}},
        "sum": {"expr": "$sum(lines.b)"},
        "text": {"expr": "$uppercase(a)"},
        "plus": {"expr": "a + 1"},
        "all": {"expr": "$"},
        "keys": {"expr": "$keys($)"},
        "values": {"expr": "$.*"},
        "sorted": {"expr": "$sort(lines)"},
        "joined": {"expr": "$join(lines.c, ',')"},
        "const": {"const": {"k": [1, None]}},
    }.items()
]


@settings(deadline=None, max_examples=200)
@given(payload=ANY_JSON | st.dictionaries(NAMES, ANY_JSON))
def test_apply_raises_only_mapping_errors_and_returns_plain_json(payload: Any) -> None:
    for compiled in ROBUST:
        try:
            out = compiled.apply(payload)
        except MappingError as error:
            assert error.pointer == "" or error.pointer.startswith("/")
        else:
            assert is_plain_json(out)
