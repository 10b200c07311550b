"""Compile a mapping once, then apply it to payload after payload.

Compiling turns every path into a tuple of keys and indexes and every JSONata
expression into a parsed expression, so ``apply`` does no parsing: it walks
the rules in declaration order and builds the output.

``apply`` is pure. It does not mutate the payload, and values read with
``from`` are placed in the output as they are (not copied), so the output
may share lists and objects with the payload. Constants, defaults and
value-map entries are copied when they are lists or objects, because they
are shared by every call.
"""

from __future__ import annotations

import math
from typing import Any, Final

import jsonata
import orjson

from charter.errors import MappingError
from charter.mapping.paths import MISSING, Path, lookup, parse_path, to_pointer
from charter.mapping.spec import FieldRule, MappingSpec, compile_expression

_FROM: Final = 0
_EXPR: Final = 1
_CONST: Final = 2
_JSONATA_NULL: Final = jsonata.Utils.NULL_VALUE


class _Rule:
    """One field rule, ready to run; see ``_run`` for how the parts are used."""

    __slots__ = (
        "default",
        "each",
        "evaluate",
        "expr_text",
        "has_default",
        "int_map",
        "key",
        "kind",
        "label",
        "on_unmapped",
        "output",
        "owner",
        "parents",
        "path",
        "pointer",
        "required",
        "text_map",
        "value",
    )

    def __init__(self, output: str, rule: FieldRule, label: str, owner: str) -> None:
        *parents, key = output.split(".")
        self.output = output
        self.parents = tuple(parents)
        self.key = key
        self.label = label
        self.owner = owner
        self.path: Path = ()
        self.pointer = ""
        self.expr_text = ""
        self.evaluate: Any = None
        self.value: Any = None
        if rule.from_ is not None:
            self.kind = _FROM
            self.path = parse_path(rule.from_)
            self.pointer = to_pointer(self.path)
        elif rule.expr is not None:
            self.kind = _EXPR
            self.expr_text = rule.expr
            expression = compile_expression(rule.expr)
            # Payloads come from a JSON parser; walking each one to re-check its types
            # would cost more than the expression. Undefined and null stay apart.
            expression.set_validate_input(False)
            expression.set_output_convert_nulls(False)
            self.evaluate = expression.evaluate
        else:
            self.kind = _CONST
            self.value = rule.const
        self.has_default = rule.has_default
        self.default = rule.default
        self.required = rule.required
        self.on_unmapped = rule.on_unmapped
        self.text_map: dict[str, Any] | None = None
        self.int_map: dict[int, Any] = {}
        if rule.values is not None:
            self.text_map = dict(rule.values)
            self.int_map = {int(k): v for k, v in rule.values.items() if _is_int_text(k)}
        self.each: tuple[_Rule, ...] | None = None
        if rule.each is not None:
            self.each = tuple(
                _Rule(name, nested, f"{label}.each.{name}", owner)
                for name, nested in rule.each.items()
            )


class CompiledMapping:
    """A mapping ready to apply: paths parsed and expressions compiled once."""

    __slots__ = ("_rules", "key", "spec")

    def __init__(self, spec: MappingSpec) -> None:
        self.spec = spec
        self.key = f"{spec.name}@{spec.version}"
        owner = f"mapping {spec.name} v{spec.version}"
        self._rules = tuple(_Rule(name, rule, name, owner) for name, rule in spec.fields.items())

    def __repr__(self) -> str:
        return f"<CompiledMapping {self.key}>"

    def apply(self, payload: Any) -> dict[str, Any]:
        """Map one source payload to the target's output object.

        Raises ``MappingError`` (with a JSON pointer into the payload) when a
        required value is missing, a value is not in a value map whose
        ``on_unmapped`` is ``error``, ``each`` meets a value that is not a list,
        or an expression fails. Never raises anything else, whatever the payload.
        """
        return _run(self._rules, payload, "", payload, True)

    def source_paths(self) -> dict[str, str]:
        """Where each output field comes from, for lineage.

        Values are a JSON pointer into the source (``/account/id``),
        ``expr:<expression>`` or ``const``. Fields inside ``each`` appear as
        ``lines[*].sku`` with pointers such as ``/lines/*/sku``.
        """
        found: dict[str, str] = {}
        _collect(self._rules, "", "", found)
        return found


class CompiledFields:
    """Field rules used outside a mapping document, such as a process step's input.

    ``owner`` names where the rules come from in error messages
    ("step create_order of process order-to-cash v1").
    """

    __slots__ = ("_rules", "owner")

    def __init__(self, fields: dict[str, FieldRule], owner: str) -> None:
        self.owner = owner
        self._rules = tuple(_Rule(name, rule, name, owner) for name, rule in fields.items())

    def apply(self, payload: Any) -> dict[str, Any]:
        """Build the output object from ``payload``; raises only ``MappingError``."""
        return _run(self._rules, payload, "", payload, True)


def compile_fields(fields: dict[str, FieldRule], owner: str) -> CompiledFields:
    """Compile field rules that are not part of a mapping document."""
    return CompiledFields(fields, owner)


def compile_mapping(spec: MappingSpec) -> CompiledMapping:
    """Compile a validated mapping spec for repeated, fast application."""
    return CompiledMapping(spec)


def _collect(
    rules: tuple[_Rule, ...], out_prefix: str, src_prefix: str, found: dict[str, str]
) -> None:
    for rule in rules:
        if rule.kind == _FROM:
            source = src_prefix + rule.pointer
        elif rule.kind == _EXPR:
            source = "expr:" + rule.expr_text
        else:
            source = "const"
        output = out_prefix + rule.output
        found[output] = source
        if rule.each is not None:
            _collect(rule.each, output + "[*].", source + "/*", found)


def _run(
    rules: tuple[_Rule, ...], data: Any, base: str, root: Any, located: bool
) -> dict[str, Any]:
    """Apply rules to ``data``; ``base`` is the pointer of ``data`` in the source payload.

    ``located`` is false inside ``each`` over an expression's result, whose items
    have no place in the source; their errors then point at ``base``.
    """
    out: dict[str, Any] = {}
    for rule in rules:
        kind = rule.kind
        if kind == _FROM:
            value = lookup(data, rule.path)
        elif kind == _EXPR:
            value = _evaluate(rule, data, root, base)
        else:
            value = rule.value
            if type(value) is dict or type(value) is list:
                value = _copy(value)
        if value is MISSING or value is None:
            if rule.has_default:
                value = rule.default
                if type(value) is dict or type(value) is list:
                    value = _copy(value)
        else:
            if rule.text_map is not None:
                value = _map_value(rule, value, base + rule.pointer if located else base)
            if rule.each is not None:
                value = _map_each(rule, value, base, root, located)
        if value is MISSING or value is None:
            if rule.required:
                raise _missing_error(rule, base + rule.pointer if located else base)
            if value is MISSING:
                continue
        target = out
        for name in rule.parents:
            nested = target.get(name)
            if nested is None:
                nested = target[name] = {}
            target = nested
        target[rule.key] = value
    return out


def _evaluate(rule: _Rule, data: Any, root: Any, pointer: str) -> Any:
    try:
        # A fresh bindings frame per call: evaluating without one writes the input
        # into the expression's shared environment, which threads would race on.
        result = rule.evaluate(data, {"root": root})
    except Exception as err:
        where = f" on the item at {pointer}" if pointer else ""
        raise MappingError(
            f"expression {rule.expr_text!r} of field '{rule.label}' in {rule.owner} "
            f"failed{where}: {err}",
            pointer=pointer,
            fix=f"correct fields.{rule.label}.expr, or send a payload it can evaluate",
        ) from err
    if result is None:
        return MISSING
    try:
        return _plain(result)
    except (ValueError, RecursionError) as err:
        raise MappingError(
            f"expression {rule.expr_text!r} of field '{rule.label}' in {rule.owner} "
            f"returned {err}, which is not a JSON value",
            pointer=pointer,
            fix=f"make fields.{rule.label}.expr return data",
        ) from err


def _map_value(rule: _Rule, value: Any, pointer: str) -> Any:
    # A list is a multi-select pick-list: each item is mapped on its own.
    if type(value) is list:
        return [_map_one(rule, item, f"{pointer}/{n}") for n, item in enumerate(value)]
    return _map_one(rule, value, pointer)


def _map_one(rule: _Rule, value: Any, pointer: str) -> Any:
    assert rule.text_map is not None
    if isinstance(value, str):
        mapped = rule.text_map.get(value, MISSING)
    elif type(value) is int:
        mapped = rule.int_map.get(value, MISSING)
    else:
        mapped = MISSING
    if mapped is MISSING:
        if rule.on_unmapped == "pass":
            return value
        if rule.on_unmapped == "default":
            mapped = rule.default
        else:
            shown = _show(value)
            raise MappingError(
                f"value {shown} {_at(pointer)} has no entry in the value map of field "
                f"'{rule.label}' in {rule.owner}",
                pointer=pointer,
                fix=f"add {shown} under fields.{rule.label}.values in the mapping, "
                "or set on_unmapped",
            )
    if type(mapped) is dict or type(mapped) is list:
        return _copy(mapped)
    return mapped


def _map_each(rule: _Rule, value: Any, base: str, root: Any, located: bool) -> Any:
    assert rule.each is not None
    # Items of an expression's result have no place in the source payload.
    located = located and rule.kind == _FROM
    pointer = base + rule.pointer if located else base
    if isinstance(value, list):
        if located:
            return [
                _run(rule.each, item, f"{pointer}/{n}", root, True) for n, item in enumerate(value)
            ]
        return [_run(rule.each, item, pointer, root, False) for item in value]
    if isinstance(value, dict):
        # JSONata (and XML turned into JSON) gives a lone object where a list of
        # one is meant; treat it as one.
        return [_run(rule.each, value, pointer, root, located)]
    raise MappingError(
        f"field '{rule.label}' in {rule.owner} maps each item of a list, but the value "
        f"{_at(pointer)} is {_json_type(value)}",
        pointer=pointer,
        fix=f"send a list {_at(pointer)}, or drop 'each' from fields.{rule.label}",
    )


def _missing_error(rule: _Rule, pointer: str) -> MappingError:
    if rule.kind == _EXPR:
        return MappingError(
            f"field '{rule.label}' in {rule.owner} is required but its expression "
            f"{rule.expr_text!r} gives no value (missing or null)",
            pointer=pointer,
            fix=f"send a payload the expression finds a value in, or give fields.{rule.label} "
            "a default",
        )
    return MappingError(
        f"field '{rule.label}' in {rule.owner} is required but the payload has no value "
        f"(missing or null) {_at(pointer)}",
        pointer=pointer,
        fix=f"send a value {_at(pointer)}, or give fields.{rule.label} a default",
    )


def _plain(value: Any) -> Any:
    """Plain JSON from what JSONata returns (its sequences, its null); ValueError if not JSON."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"the number {value}")
        return value
    if isinstance(value, dict):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"an object with the key {key!r}")
            plain[key] = _plain(item)
        return plain
    if isinstance(value, list):
        # JSONata's own list types may not iterate like a list; index them instead.
        return [_plain(value[n]) for n in range(len(value))]
    if value is _JSONATA_NULL:
        return None
    for plain_type in (bool, int, str, float):
        if isinstance(value, plain_type):
            return _plain(plain_type(value))
    raise ValueError(f"a {kind.__name__}")


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value


def _is_int_text(text: str) -> bool:
    body = text[1:] if text.startswith("-") else text
    return 0 < len(body) <= 1000 and body.isascii() and body.isdigit() and str(int(text)) == text


def _at(pointer: str) -> str:
    return f"at {pointer}" if pointer else "at the payload root"


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"
