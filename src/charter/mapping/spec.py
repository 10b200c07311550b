"""The declarative form of a mapping, as written in a project's YAML.

A ``MappingSpec`` validates one ``kind: Mapping`` document on its own: rule
shapes, paths, JSONata syntax and output field names. Whether the systems,
events and entities it names exist is the catalog loader's business.
"""

from __future__ import annotations

from typing import Any, Literal

import jsonata
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from charter.mapping.paths import parse_path

OnUnmapped = Literal["error", "default", "pass"]
EndpointForm = Literal["event", "entity", "payload"]

_SOURCES = ("from", "expr", "const")
_OPTIONS = ("default", "values", "on_unmapped", "required", "each")
_ENDPOINT_FORMS: dict[frozenset[str], EndpointForm] = {
    frozenset({"system", "event"}): "event",
    frozenset({"entity", "version"}): "entity",
    frozenset({"system", "payload"}): "payload",
}


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True
    )


def _check_output_keys(keys: list[str]) -> None:
    """Reject output field names that are malformed or that overlap ("a" and "a.b")."""
    taken = set(keys)
    for key in keys:
        parts = key.split(".")
        if not all(parts):
            raise ValueError(
                f"output field {key!r} has an empty name between dots; write names joined "
                "by dots, e.g. 'customer.name'"
            )
        if "[" in key or "]" in key:
            raise ValueError(
                f"output field {key!r} has brackets; output fields nest with dots only, "
                "and lists are built with 'each'"
            )
        for end in range(1, len(parts)):
            parent = ".".join(parts[:end])
            if parent in taken:
                raise ValueError(
                    f"output field {key!r} lies inside {parent!r}, which another rule sets; "
                    "keep one of the two rules"
                )


class FieldRule(_Spec):
    """How one output field gets its value: exactly one of ``from``, ``expr``, ``const``.

    ``from`` reads a path of the source payload, ``expr`` evaluates JSONata
    against it, ``const`` is a fixed JSON value. ``default`` stands in for a
    missing or null value; ``values`` maps pick-list values (a list is mapped
    item by item); ``on_unmapped`` says what happens to a value the map does
    not list; ``required`` makes a value that is still missing or null an
    error; ``each`` maps the items of a list with nested rules.
    """

    from_: str | None = Field(default=None, alias="from")
    expr: str | None = None
    const: JsonValue = None
    default: JsonValue = None
    values: dict[str, JsonValue] | None = None
    on_unmapped: OnUnmapped = "error"
    required: bool = False
    each: dict[str, FieldRule] | None = None

    @model_validator(mode="before")
    @classmethod
    def _rule_is_an_object(cls, data: Any) -> Any:
        if isinstance(data, str):
            raise ValueError(
                f"a field rule is an object such as {{from: {data}}}, not the bare string {data!r}"
            )
        return data

    @field_validator("from_")
    @classmethod
    def _path_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @field_validator("expr")
    @classmethod
    def _expression_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_expression(value)
        return value

    @field_validator("values", mode="before")
    @classmethod
    def _value_keys_are_text(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        keys: dict[str, Any] = {}
        for key, target in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise ValueError(
                    f"value map key {key!r} is not text; quote it in YAML (e.g. '{key}')"
                )
            if str(key) in keys:
                raise ValueError(f"value map key {str(key)!r} appears twice; keep one entry")
            keys[str(key)] = target
        return keys

    @field_validator("each")
    @classmethod
    def _each_keys(cls, value: dict[str, FieldRule] | None) -> dict[str, FieldRule] | None:
        if value is not None:
            if not value:
                raise ValueError("'each' needs at least one field rule for the items")
            _check_output_keys(list(value))
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FieldRule:
        given = self._given()
        sources = [name for name in _SOURCES if name in given]
        if len(sources) != 1:
            has = " and ".join(repr(name) for name in sources) if sources else "none"
            raise ValueError(
                f"a field rule needs exactly one of 'from', 'expr', 'const'; it has {has}"
            )
        if sources == ["const"]:
            extra = [name for name in _OPTIONS if name in given]
            if extra:
                raise ValueError(
                    "a 'const' rule takes no other options; drop "
                    + ", ".join(repr(name) for name in extra)
                )
        if "on_unmapped" in given and self.values is None:
            raise ValueError(
                "'on_unmapped' only applies to a value map; add 'values' or drop 'on_unmapped'"
            )
        if self.on_unmapped == "default" and "default" not in given:
            raise ValueError("on_unmapped 'default' needs a 'default' value; add one")
        if self.values is not None and self.each is not None:
            raise ValueError(
                "a rule takes 'values' or 'each', not both; put 'values' on the rules inside 'each'"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Dump only what was written: 'const: null' and 'default: null' mean something,
        # so unset options must stay out for the dump to validate back to this rule.
        given = self.model_fields_set
        dumped: dict[str, Any] = handler(self)
        return {
            key: value
            for key, value in dumped.items()
            if key in given or (key == "from" and "from_" in given)
        }

    def _given(self) -> set[str]:
        return {"from" if name == "from_" else name for name in self.model_fields_set}

    @property
    def has_default(self) -> bool:
        """Whether ``default`` was given (``default: null`` counts)."""
        return "default" in self.model_fields_set


class MappingEndpoint(_Spec):
    """One side of a mapping: a system event, an entity version or a system payload.

    The forms are ``{system, event}``, ``{entity, version}`` and
    ``{system, payload}`` (``payload`` names the shape a target system takes).
    """

    system: str | None = Field(default=None, min_length=1)
    event: str | None = Field(default=None, min_length=1)
    entity: str | None = Field(default=None, min_length=1)
    version: int | None = Field(default=None, ge=1)
    payload: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> MappingEndpoint:
        given = self._given()
        if given not in _ENDPOINT_FORMS:
            shown = ", ".join(sorted(given)) or "nothing"
            raise ValueError(
                "an endpoint is {system, event}, {entity, version} or {system, payload}; "
                f"got {shown}"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {key: value for key, value in dumped.items() if value is not None}

    def _given(self) -> frozenset[str]:
        return frozenset(name for name, value in self if value is not None)

    @property
    def form(self) -> EndpointForm:
        """Which of the three forms this endpoint takes."""
        return _ENDPOINT_FORMS[self._given()]

    def __str__(self) -> str:
        if self.form == "event":
            return f"{self.system}/{self.event}"
        if self.form == "entity":
            return f"{self.entity}@{self.version}"
        return f"{self.system} payload {self.payload}"


class MappingSpec(_Spec):
    """A versioned translation from a source payload to a target payload.

    ``fields`` are output paths (dotted for nesting) in the order the rules
    run. ``renames`` records canonical field renames (old name to new) for
    schema tooling; it has no effect when the mapping runs.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    version: int = Field(ge=1)
    description: str | None = None
    source: MappingEndpoint
    target: MappingEndpoint
    fields: dict[str, FieldRule]
    renames: dict[str, str] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: MappingEndpoint) -> MappingEndpoint:
        if value.form == "payload":
            raise ValueError(
                "a mapping's source is a system event {system, event} or an entity "
                "{entity, version}"
            )
        return value

    @field_validator("target")
    @classmethod
    def _target_form(cls, value: MappingEndpoint) -> MappingEndpoint:
        if value.form == "event":
            raise ValueError(
                "a mapping's target is an entity {entity, version} or a system payload "
                "{system, payload}"
            )
        return value

    @field_validator("fields")
    @classmethod
    def _fields_present(cls, value: dict[str, FieldRule]) -> dict[str, FieldRule]:
        if not value:
            raise ValueError("a mapping needs at least one field rule under 'fields'")
        _check_output_keys(list(value))
        return value


def compile_expression(text: str) -> Any:
    """Compile a JSONata expression; raise ``ValueError`` naming it when it does not parse."""
    try:
        return jsonata.Jsonata(text)
    except Exception as err:  # the parser raises JException and, on odd input, others
        raise ValueError(f"JSONata expression {text!r} does not compile: {err}") from err
