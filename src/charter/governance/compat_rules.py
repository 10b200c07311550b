"""The catalogue of schema-change rules: their names, verdicts, messages and fixes.

Rule names follow Confluent Schema Registry's JSON Schema diff
(``io.confluent.kafka.schemaregistry.json.diff.Difference.Type``) wherever
Confluent has one, and Confluent's verdicts (its ``COMPATIBLE_CHANGES``).
Charter adds a few names for changes Confluent folds into ``TYPE_CHANGED`` or
does not see (``ENUM_ADDED``, ``CONST_CHANGED``, ``PROPERTY_RENAMED``,
``KEYWORD_ADDED``...). Each rule also belongs to a *family*, the short name the
governance issue speaks in (``ENUM_NARROWED``, ``REQUIRED_PROPERTY_ADDED``,
``TYPE_CHANGED``...), for people who do not want Confluent's detail.

A rule's verdict is for one direction: a reader using the *update* schema and
data written with the *original* one. ``compatible`` means every such payload
still validates (or, for the ``..._WITH_DEFAULT_...`` rules, validates once the
reader fills the default in, as Confluent assumes).

Messages and fixes are templates over ``{reader}`` and ``{writer}`` (who reads
and who wrote, e.g. "the new schema" and "v3"), ``{name}`` (the property or
keyword at the path) and ``{reader_value}`` / ``{writer_value}``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One kind of schema change and its verdict for a reader of the updated schema."""

    name: str
    compatible: bool
    family: str
    message: str
    # What to change in the new schema when this breaks a BACKWARD check (the new
    # schema reads old data) and when it breaks a FORWARD check (old schemas read
    # data the new one lets through). Empty for compatible rules.
    fix_backward: str = ""
    fix_forward: str = ""


RULES: dict[str, Rule] = {}


def _rule(
    name: str,
    compatible: bool,
    family: str,
    message: str,
    fix_backward: str = "",
    fix_forward: str = "",
) -> None:
    RULES[name] = Rule(name, compatible, family, message, fix_backward, fix_forward)


def _safe(name: str, family: str, message: str) -> None:
    _rule(name, True, family, message)


# --- annotations: never change which payloads validate -------------------------------------------

for _kw, _name in [
    ("description", "DESCRIPTION_CHANGED"),
    ("title", "TITLE_CHANGED"),
    ("default", "DEFAULT_CHANGED"),
    ("$id", "ID_CHANGED"),
    ("examples", "EXAMPLES_CHANGED"),
    ("format", "FORMAT_CHANGED"),
]:
    _safe(_name, "ANNOTATION_CHANGED", f"'{_kw}' changed; it does not change what validates")
_safe("ANNOTATION_CHANGED", "ANNOTATION_CHANGED", "annotation '{name}' changed")

# --- types ---------------------------------------------------------------------------------------

_safe("TYPE_EXTENDED", "TYPE_WIDENED", "{reader} accepts more types ({reader_value}) than {writer}")
_rule(
    "TYPE_NARROWED",
    False,
    "TYPE_NARROWED",
    "{reader} accepts fewer types ({reader_value}) than {writer} ({writer_value})",
    "keep every type the previous version accepted ({writer_value}) in 'type'",
    "do not accept types ({writer_value}) that the previous version ({reader_value}) rejects",
)
_rule(
    "TYPE_CHANGED",
    False,
    "TYPE_CHANGED",
    "{reader} expects {reader_value} where {writer} allowed {writer_value}",
    "keep the previous type ({writer_value}); add a new property for the new type",
    "keep the previous type ({reader_value}); add a new property for the new type",
)

# --- enum and const ------------------------------------------------------------------------------

_safe("ENUM_ARRAY_EXTENDED", "ENUM_WIDENED", "{reader} accepts more values than {writer}")
_safe("ENUM_REMOVED", "ENUM_WIDENED", "{reader} no longer restricts the values to an enum")
_safe("CONST_REMOVED", "ENUM_WIDENED", "{reader} no longer pins the value with 'const'")
_rule(
    "ENUM_ARRAY_NARROWED",
    False,
    "ENUM_NARROWED",
    "{reader} drops values {writer} allowed: {writer_value} -> {reader_value}",
    "keep the removed values in the enum (deprecate them in the description)",
    "do not add values ({writer_value}) the previous version's enum ({reader_value}) lacks",
)
_rule(
    "ENUM_ARRAY_CHANGED",
    False,
    "ENUM_CHANGED",
    "{reader} allows {reader_value} where {writer} allowed {writer_value}",
    "keep every previous value ({writer_value}) in the enum; only add values",
    "only remove values from the enum; values new to it ({writer_value}) break old readers",
)
_rule(
    "ENUM_ADDED",
    False,
    "ENUM_NARROWED",
    "{reader} restricts the value to {reader_value}; {writer} allowed any",
    "do not restrict an existing field to an enum; validate the values in the mapping",
    "keep the enum the previous version had ({reader_value})",
)
_rule(
    "CONST_ADDED",
    False,
    "ENUM_NARROWED",
    "{reader} pins the value to {reader_value}; {writer} allowed others",
    "do not pin an existing field with 'const'",
    "keep the 'const' the previous version had ({reader_value})",
)
_rule(
    "CONST_CHANGED",
    False,
    "ENUM_CHANGED",
    "{reader} pins the value to {reader_value} where {writer} pinned {writer_value}",
    "keep 'const' at {writer_value}, or widen it to an enum holding both values",
    "keep 'const' at {reader_value}",
)

# --- numeric and length bounds -------------------------------------------------------------------

_BOUNDS = {
    "maxLength": "MAX_LENGTH",
    "minLength": "MIN_LENGTH",
    "maximum": "MAXIMUM",
    "minimum": "MINIMUM",
    "exclusiveMaximum": "EXCLUSIVE_MAXIMUM",
    "exclusiveMinimum": "EXCLUSIVE_MINIMUM",
    "maxItems": "MAX_ITEMS",
    "minItems": "MIN_ITEMS",
    "maxProperties": "MAX_PROPERTIES",
    "minProperties": "MIN_PROPERTIES",
    "maxContains": "MAX_CONTAINS",
    "minContains": "MIN_CONTAINS",
}
UPPER_BOUNDS = frozenset(k for k in _BOUNDS if k.startswith(("max", "exclusiveMax")))


def bound_rule(keyword: str, change: str) -> str:
    """The rule name for a bound keyword ADDED, REMOVED, INCREASED or DECREASED."""
    return f"{_BOUNDS[keyword]}_{change}"


for _kw, _stem in _BOUNDS.items():
    _upper = _kw in UPPER_BOUNDS
    _safe(f"{_stem}_REMOVED", "CONSTRAINT_RELAXED", f"{{reader}} drops '{_kw}'")
    _rule(
        f"{_stem}_ADDED",
        False,
        "CONSTRAINT_TIGHTENED",
        f"{{reader}} adds '{_kw}': {{reader_value}}; {{writer}} had no such bound",
        f"drop '{_kw}' from the new schema; check the bound in the producer instead",
        f"keep the previous version's '{_kw}' ({{reader_value}})",
    )
    _loosen, _tighten = ("INCREASED", "DECREASED") if _upper else ("DECREASED", "INCREASED")
    _safe(f"{_stem}_{_loosen}", "CONSTRAINT_RELAXED", f"{{reader}} relaxes '{_kw}'")
    _rule(
        f"{_stem}_{_tighten}",
        False,
        "CONSTRAINT_TIGHTENED",
        f"{{reader}} tightens '{_kw}' to {{reader_value}} from {{writer}}'s {{writer_value}}",
        f"keep '{_kw}' at {{writer_value}} or looser",
        f"keep '{_kw}' at {{reader_value}} or tighter",
    )

_safe("PATTERN_REMOVED", "CONSTRAINT_RELAXED", "{reader} drops 'pattern'")
_rule(
    "PATTERN_ADDED",
    False,
    "CONSTRAINT_TIGHTENED",
    "{reader} adds pattern {reader_value}; {writer} had none",
    "drop the pattern from the new schema, or add it under a new property",
    "keep the previous version's pattern ({reader_value})",
)
_rule(
    "PATTERN_CHANGED",
    False,
    "CONSTRAINT_CHANGED",
    "{reader} uses pattern {reader_value} where {writer} used {writer_value}",
    "keep the previous pattern ({writer_value}); patterns cannot be compared for inclusion",
    "keep the previous pattern ({reader_value}); patterns cannot be compared for inclusion",
)
_safe("MULTIPLE_OF_REMOVED", "CONSTRAINT_RELAXED", "{reader} drops 'multipleOf'")
_safe("MULTIPLE_OF_REDUCED", "CONSTRAINT_RELAXED", "{reader}'s 'multipleOf' divides {writer}'s")
_rule(
    "MULTIPLE_OF_ADDED",
    False,
    "CONSTRAINT_TIGHTENED",
    "{reader} adds multipleOf {reader_value}",
    "drop 'multipleOf' from the new schema",
    "keep the previous version's multipleOf ({reader_value})",
)
_rule(
    "MULTIPLE_OF_EXPANDED",
    False,
    "CONSTRAINT_TIGHTENED",
    "{reader}'s multipleOf {reader_value} is a multiple of {writer}'s {writer_value}",
    "use a multipleOf that divides {writer_value}",
    "use a multipleOf that {reader_value} divides",
)
_rule(
    "MULTIPLE_OF_CHANGED",
    False,
    "CONSTRAINT_CHANGED",
    "{reader}'s multipleOf {reader_value} does not divide {writer}'s {writer_value}",
    "use a multipleOf that divides {writer_value}",
    "use a multipleOf that {reader_value} divides",
)
_safe("UNIQUE_ITEMS_REMOVED", "CONSTRAINT_RELAXED", "{reader} allows duplicate items")
_rule(
    "UNIQUE_ITEMS_ADDED",
    False,
    "CONSTRAINT_TIGHTENED",
    "{reader} requires unique items; {writer} allowed duplicates",
    "drop 'uniqueItems' from the new schema; deduplicate in the mapping",
    "keep 'uniqueItems: true' as the previous version had it",
)

# --- objects: required ---------------------------------------------------------------------------

_safe("REQUIRED_ATTRIBUTE_REMOVED", "REQUIRED_PROPERTY_REMOVED", "'{name}' is optional in {reader}")
_safe(
    "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
    "REQUIRED_PROPERTY_ADDED",
    "'{name}' is required in {reader}, which gives it a default",
)
_rule(
    "REQUIRED_ATTRIBUTE_ADDED",
    False,
    "REQUIRED_PROPERTY_ADDED",
    "'{name}' is required in {reader} but optional in {writer}",
    "keep '{name}' optional, or give it a default",
    "keep '{name}' required, as the previous version has it",
)

# --- objects: properties added and removed, by content model ------------------------------------

_safe(
    "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
    "PROPERTY_ADDED",
    "optional '{name}' added; {writer} did not allow it, so no payload has it",
)
_safe(
    "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL",
    "REQUIRED_PROPERTY_ADDED",
    "required '{name}' added with a default",
)
_rule(
    "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
    False,
    "REQUIRED_PROPERTY_ADDED",
    "{reader} requires new property '{name}'; payloads written with {writer} lack it",
    "make '{name}' optional or give it a default",
    "keep '{name}', required, in the new schema",
)
_safe(
    "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
    "PROPERTY_ADDED",
    "'{name}' added to an open content model with an empty schema",
)
for _name, _family, _what in [
    ("OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", "PROPERTY_ADDED", "optional"),
    ("REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", "REQUIRED_PROPERTY_ADDED", "required"),
    (
        "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL",
        "REQUIRED_PROPERTY_ADDED",
        "required (with a default)",
    ),
]:
    _rule(
        _name,
        False,
        _family,
        f"{_what} '{{name}}' added with a schema; {{writer}} has an open content model, "
        "so its payloads may already carry '{name}' with any value",
        "give '{name}' an empty schema (and keep it optional), or publish a new major "
        "version whose content model is closed (additionalProperties: false) so that later "
        "additions are safe",
        "keep '{name}' in the new schema with a schema that accepts what it accepted",
    )
_rule(
    "PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    True,
    "PROPERTY_ADDED",
    "'{name}' added; its schema accepts what {writer}'s additional properties did",
)
_rule(
    "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    False,
    "PROPERTY_ADDED",
    "'{name}' added with a schema narrower than {writer}'s additionalProperties schema",
    "give '{name}' a schema at least as wide as the previous additionalProperties schema",
    "keep '{name}' within the previous version's schema for it",
)
_safe(
    "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL",
    "PROPERTY_REMOVED",
    "'{name}' removed; {reader} has an open content model and still accepts it",
)
_safe(
    "PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
    "PROPERTY_REMOVED",
    "'{name}' (schema false) removed from a closed content model",
)
_rule(
    "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
    False,
    "PROPERTY_REMOVED",
    "'{name}' is missing from {reader}, whose closed content model rejects payloads "
    "written with {writer} that carry it",
    "keep '{name}' (optional, deprecated in its description) or open the content model",
    "don't add '{name}': the previous version's closed content model rejects it",
)
_rule(
    "PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    True,
    "PROPERTY_REMOVED",
    "'{name}' removed; {reader}'s additional properties still accept it",
)
_rule(
    "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    False,
    "PROPERTY_REMOVED",
    "'{name}' removed; {reader}'s additionalProperties schema rejects its old values",
    "keep '{name}', or widen additionalProperties to accept its values",
    "keep '{name}' within the previous version's additionalProperties schema",
)
_rule(
    "PROPERTY_RENAMED",
    False,
    "PROPERTY_RENAMED",
    "'{writer_value}' in {writer} is '{reader_value}' in {reader} (a rename declared in a "
    "mapping): payloads written with {writer} carry the value under the other name",
    "keep '{writer_value}' as a deprecated optional alias next to '{reader_value}' "
    "until consumers have moved",
    "keep '{reader_value}' as a deprecated optional alias next to '{writer_value}' "
    "until consumers have moved",
)

# --- objects: content model and the rest ---------------------------------------------------------

_safe("ADDITIONAL_PROPERTIES_ADDED", "CONTENT_MODEL_OPENED", "{reader} allows extra properties")
_safe(
    "ADDITIONAL_PROPERTIES_EXTENDED",
    "CONTENT_MODEL_OPENED",
    "{reader} allows extra properties of any schema",
)
_rule(
    "ADDITIONAL_PROPERTIES_REMOVED",
    False,
    "CONTENT_MODEL_CLOSED",
    "{reader} closes the content model (additionalProperties: false); {writer} was open",
    "keep the content model open: remove 'additionalProperties: false'",
    "keep the content model closed, as the previous version has it",
)
_rule(
    "ADDITIONAL_PROPERTIES_NARROWED",
    False,
    "CONTENT_MODEL_CLOSED",
    "{reader} gives extra properties a schema; {writer} accepted any",
    "drop the additionalProperties schema",
    "keep additionalProperties within the previous version's schema",
)
_safe("PATTERN_PROPERTY_REMOVED", "CONSTRAINT_RELAXED", "{reader} drops patternProperties '{name}'")
_rule(
    "PATTERN_PROPERTY_ADDED",
    False,
    "CONSTRAINT_TIGHTENED",
    "{reader} adds patternProperties '{name}'",
    "drop the pattern property, or give it an empty schema",
    "keep the previous version's pattern property '{name}'",
)
_rule(
    "PATTERN_PROPERTY_REMOVED_FROM_UNOPEN_CONTENT_MODEL",
    False,
    "CONTENT_MODEL_CLOSED",
    "{reader} drops patternProperties '{name}' while its content model is not open",
    "keep the pattern property",
    "don't add the pattern property: the previous content model rejects those names",
)
_safe("DEPENDENCY_ARRAY_REMOVED", "CONSTRAINT_RELAXED", "dependentRequired for '{name}' removed")
_safe("DEPENDENCY_ARRAY_NARROWED", "CONSTRAINT_RELAXED", "dependentRequired for '{name}' narrowed")
_safe("DEPENDENCY_SCHEMA_REMOVED", "CONSTRAINT_RELAXED", "dependentSchemas for '{name}' removed")
for _name, _family, _what in [
    ("DEPENDENCY_ARRAY_ADDED", "CONSTRAINT_TIGHTENED", "adds dependentRequired"),
    ("DEPENDENCY_ARRAY_EXTENDED", "CONSTRAINT_TIGHTENED", "requires more dependents"),
    ("DEPENDENCY_ARRAY_CHANGED", "CONSTRAINT_CHANGED", "changes dependentRequired"),
    ("DEPENDENCY_SCHEMA_ADDED", "CONSTRAINT_TIGHTENED", "adds dependentSchemas"),
]:
    _rule(
        _name,
        False,
        _family,
        f"{{reader}} {_what} for '{{name}}'",
        "drop the new dependency; check it in the producer instead",
        "keep the previous version's dependency",
    )

# --- arrays as tuples (prefixItems) --------------------------------------------------------------

_safe("ITEM_ADDED_TO_CLOSED_CONTENT_MODEL", "ITEM_ADDED", "tuple item {name} added; none existed")
_safe(
    "ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL",
    "ITEM_ADDED",
    "tuple item {name} added with an empty schema",
)
_safe("ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL", "ITEM_REMOVED", "tuple item {name} removed")
_safe(
    "ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL",
    "ITEM_REMOVED",
    "tuple item {name} (schema false) removed",
)
_safe(
    "ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "ITEM_ADDED",
    "tuple item {name} added within the previous 'items' schema",
)
_safe(
    "ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
    "ITEM_REMOVED",
    "tuple item {name} removed; {reader}'s 'items' still accepts it",
)
for _name, _family, _what in [
    (
        "ITEM_ADDED_TO_OPEN_CONTENT_MODEL",
        "ITEM_ADDED",
        "adds tuple item {name}; old arrays may hold anything there",
    ),
    (
        "ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "ITEM_ADDED",
        "adds tuple item {name} narrower than the previous 'items' schema",
    ),
    (
        "ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL",
        "ITEM_REMOVED",
        "removes tuple item {name} and rejects extra items",
    ),
    (
        "ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
        "ITEM_REMOVED",
        "removes tuple item {name}; its 'items' schema rejects the old values",
    ),
]:
    _rule(
        _name,
        False,
        _family,
        "{reader} " + _what,
        "keep the tuple's items as they were; append new ones only to a closed tuple",
        "keep the tuple's items as the previous version has them",
    )
_safe("ADDITIONAL_ITEMS_ADDED", "CONTENT_MODEL_OPENED", "{reader} allows extra tuple items")
_safe("ADDITIONAL_ITEMS_EXTENDED", "CONTENT_MODEL_OPENED", "{reader} allows any extra tuple items")
_rule(
    "ADDITIONAL_ITEMS_REMOVED",
    False,
    "CONTENT_MODEL_CLOSED",
    "{reader} rejects extra tuple items ('items: false'); {writer} allowed them",
    "keep extra tuple items allowed",
    "keep extra tuple items rejected, as the previous version has it",
)
_rule(
    "ADDITIONAL_ITEMS_NARROWED",
    False,
    "CONTENT_MODEL_CLOSED",
    "{reader} gives extra tuple items a schema; {writer} accepted any",
    "drop the 'items' schema after 'prefixItems'",
    "keep 'items' within the previous version's schema",
)

# --- combined schemas (allOf / anyOf / oneOf / not) ----------------------------------------------

_safe("SUM_TYPE_EXTENDED", "UNION_WIDENED", "{reader}'s union has more alternatives")
_safe("PRODUCT_TYPE_NARROWED", "UNION_WIDENED", "{reader}'s allOf has fewer parts")
_safe("COMBINED_TYPE_EXTENDED", "UNION_WIDENED", "{reader} combines with a weaker keyword")
_safe("NOT_TYPE_NARROWED", "UNION_WIDENED", "{reader}'s 'not' excludes less")
for _name, _family, _what, _fixb in [
    (
        "SUM_TYPE_NARROWED",
        "UNION_NARROWED",
        "has fewer alternatives than {writer}",
        "keep every alternative of the previous union",
    ),
    ("PRODUCT_TYPE_EXTENDED", "UNION_NARROWED", "adds parts to allOf", "don't add parts to allOf"),
    (
        "COMBINED_TYPE_CHANGED",
        "UNION_CHANGED",
        "combines its alternatives differently",
        "keep the previous combining keyword (or widen allOf/oneOf to anyOf)",
    ),
    (
        "COMBINED_TYPE_SUBSCHEMAS_CHANGED",
        "UNION_CHANGED",
        "has alternatives that no longer accept what {writer}'s did",
        "keep each previous alternative, widening it at most",
    ),
    ("NOT_TYPE_EXTENDED", "UNION_NARROWED", "excludes more with 'not'", "don't extend 'not'"),
]:
    _rule(
        _name,
        False,
        _family,
        "{reader} " + _what,
        _fixb,
        "keep the alternatives as the previous version has them",
    )

# --- keywords Charter does not analyse: judged conservatively -----------------------------------

_safe("KEYWORD_REMOVED", "CONSTRAINT_RELAXED", "{reader} drops the keyword '{name}'")
_rule(
    "KEYWORD_ADDED",
    False,
    "CONSTRAINT_TIGHTENED",
    "{reader} adds '{name}', which Charter cannot compare; it is taken as a restriction",
    "drop '{name}' from the new schema",
    "keep '{name}' as the previous version has it",
)
_rule(
    "KEYWORD_CHANGED",
    False,
    "CONSTRAINT_CHANGED",
    "{reader} changes '{name}', which Charter cannot compare; it is taken as a restriction",
    "keep '{name}' as the previous version had it",
    "keep '{name}' as the previous version has it",
)

# The governance issue's short names, each the family of the rules it covers.
FAMILIES: frozenset[str] = frozenset(rule.family for rule in RULES.values())
