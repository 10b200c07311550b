"""The raw difference between two JSON Schema 2020-12 documents, rule by rule.

``diff(original, update)`` walks both schemas together the way Confluent Schema
Registry's ``SchemaDiff.compare`` does and lists every change with its rule
(see ``compat_rules``) and JSON path (``#/properties/account/properties/id``).
Each difference says whether a reader using ``update`` still accepts every
payload ``original`` accepted; ``check`` in ``compat`` decides the direction.

What it deliberately does not do: prove inclusion of arbitrary schemas (that
is undecidable in general). It compares keyword by keyword; a keyword it does
not analyse (``if``, ``propertyNames``, ``contains``, remote ``$ref``...) counts
as a restriction when added or changed, so an unknown change is never passed
as compatible. Local ``$ref`` (``#/$defs/...``) are resolved and compared where
they are used; recursion through them stops at the first repeat.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from charter.governance.compat_objects import compare_objects
from charter.governance.compat_schema import (
    ANNOTATIONS,
    ARRAY_BOUNDS,
    COMBINATORS,
    CONTAINERS,
    HANDLED,
    NUMBER_BOUNDS,
    OTHER_ANNOTATIONS,
    STRING_BOUNDS,
    TYPES,
    Difference,
    PropertyPath,
    Schema,
    bound_differences,
    canonical,
    is_empty,
    number,
    pointer_segment,
)


def diff(
    original: Schema, update: Schema, renames: Mapping[str, str] | None = None
) -> list[Difference]:
    """Every difference from ``original`` to ``update``, in document order.

    ``renames`` maps a property path in ``original`` to its path in ``update``
    (``"account.name"``, ``"/account/name"`` or ``"#/properties/account/properties/name"``);
    a renamed property shows as one ``PROPERTY_RENAMED`` difference (plus any
    change to its schema) instead of a removal and an addition. Only renames
    within the same object are recognised.
    """
    walk = _Walk(
        original, update, {property_path(k): property_path(v) for k, v in (renames or {}).items()}
    )
    return walk.compare(original, update, "#", ())


def property_path(spec: str) -> PropertyPath:
    """A property path from ``a.b``, ``/a/b`` or ``#/properties/a/properties/b``."""
    text = spec.removeprefix("#")
    if not text.startswith("/"):
        return tuple(part for part in text.split(".") if part)
    parts = [p.replace("~1", "/").replace("~0", "~") for p in text.split("/")[1:]]
    if parts and parts[0] == "properties":
        return tuple(parts[i] for i in range(1, len(parts), 2) if parts[i - 1] == "properties")
    return tuple(parts)


def _types(schema: Mapping[str, Any]) -> frozenset[str] | None:
    """The instance types a schema allows, or None for any; ``number`` absorbs ``integer``."""
    declared = schema.get("type")
    if declared is None:
        return None
    found = frozenset([declared] if isinstance(declared, str) else declared)
    return found - {"integer"} if "number" in found else found


def _allows(types: frozenset[str] | None, kind: str) -> bool:
    if types is None:
        return True
    return kind in types or (kind == "integer" and "number" in types)


def _describe(types: frozenset[str] | None) -> Any:
    if types is None:
        return "any"
    ordered = [t for t in TYPES if t in types]
    return ordered[0] if len(ordered) == 1 else ordered


class _Walk:
    """One comparison of two documents: their roots (for ``$ref``) and the renames."""

    def __init__(
        self, original: Schema, update: Schema, renames: dict[PropertyPath, PropertyPath]
    ) -> None:
        self.roots = (original, update)
        self.renames = renames
        self.visiting: set[tuple[int, int]] = set()

    # --- entry and references -------------------------------------------------------------------

    def compare(
        self, old: Any, new: Any, path: str, props: PropertyPath | None
    ) -> list[Difference]:
        """Differences from ``old`` to ``new`` at ``path``; ``props`` names it for renames."""
        old, old_key = self._resolve(old, 0)
        new, new_key = self._resolve(new, 1)
        key = (old_key, new_key)
        if key in self.visiting:
            return []  # a recursive definition met again: judged where it started
        self.visiting.add(key)
        try:
            return self._compare(old, new, path, props)
        finally:
            self.visiting.discard(key)

    def _resolve(self, schema: Any, side: int) -> tuple[Any, int]:
        """Follow local ``$ref`` (merging annotation siblings); the id that marks the visit."""
        seen = id(schema)
        for _ in range(32):
            if not isinstance(schema, Mapping):
                return schema, seen
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                return schema, seen
            target = self._lookup(self.roots[side], ref)
            if target is None:
                return schema, seen
            seen = id(target)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            if not siblings:
                schema = target
            elif target is True or is_empty(siblings):
                schema = siblings if target is True else {**target, **siblings}
            else:
                schema = {"allOf": [target, siblings]}
        return schema, seen

    @staticmethod
    def _lookup(root: Any, ref: str) -> Any:
        node = root
        for raw in ref.removeprefix("#").split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    # --- one schema against another -------------------------------------------------------------

    def _compare(
        self, old: Any, new: Any, path: str, props: PropertyPath | None
    ) -> list[Difference]:
        if old is False:
            return []  # nothing was valid before
        if new is False:
            return [Difference("TYPE_NARROWED", path, _describe(_types_of(old)), "nothing")]
        old = {} if old is True else old
        new = {} if new is True else new
        out = list(self._annotations(old, new, path))
        special = self._unions(old, new, path, props)
        if special is not None:
            return out + special
        old_types, new_types = _types(old), _types(new)
        out += self._type(old_types, new_types, path)

        def both(kind: str) -> bool:
            return _allows(old_types, kind) and _allows(new_types, kind)

        if not any(both(kind) for kind in TYPES):
            return out  # no payload of the original can pass: the rest is moot
        out += self._values(old, new, path)

        if both("string"):
            out += bound_differences(old, new, path, STRING_BOUNDS)
            out += self._pattern(old, new, path)
        if both("number") or both("integer"):
            out += bound_differences(old, new, path, NUMBER_BOUNDS)
            out += self._multiple_of(old, new, path)
        if both("object"):
            out += self._object(old, new, path, props)
        if both("array"):
            out += self._array(old, new, path)
        out += self._combinators(old, new, path)
        out += self._not(old, new, path)
        out += self._unknown(old, new, path)
        return out

    def _annotations(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str
    ) -> Iterator[Difference]:
        for keyword, rule in ANNOTATIONS.items():
            if keyword in old or keyword in new:
                if canonical(old.get(keyword)) != canonical(new.get(keyword)):
                    yield Difference(rule, f"{path}/{keyword}", old.get(keyword), new.get(keyword))
        for keyword in sorted(OTHER_ANNOTATIONS):
            if canonical(old.get(keyword)) != canonical(new.get(keyword)):
                yield Difference(
                    "ANNOTATION_CHANGED", f"{path}/{keyword}", old.get(keyword), new.get(keyword)
                )

    def _type(
        self, old: frozenset[str] | None, new: frozenset[str] | None, path: str
    ) -> list[Difference]:
        if old == new:
            return []
        everything = frozenset(TYPES) - {"integer"}
        widened = all(_allows(new, t) for t in (old if old is not None else everything))
        narrowed = all(_allows(old, t) for t in (new if new is not None else everything))
        rule = "TYPE_EXTENDED" if widened else "TYPE_NARROWED" if narrowed else "TYPE_CHANGED"
        return [Difference(rule, path, _describe(old), _describe(new))]

    def _values(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str
    ) -> list[Difference]:
        """``enum`` and ``const``: a const is a one-value enum."""

        def values(schema: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
            if "const" in schema:
                return "const", [schema["const"]]
            if "enum" in schema and isinstance(schema["enum"], list):
                return "enum", list(schema["enum"])
            return None

        before, after = values(old), values(new)
        if before is None and after is None:
            return []
        if after is None:
            assert before is not None
            rule = "CONST_REMOVED" if before[0] == "const" else "ENUM_REMOVED"
            return [Difference(rule, f"{path}/{before[0]}", old[before[0]], None)]
        if before is None:
            rule = "CONST_ADDED" if after[0] == "const" else "ENUM_ADDED"
            return [Difference(rule, f"{path}/{after[0]}", None, new[after[0]])]
        old_keys = {canonical(v) for v in before[1]}
        new_keys = {canonical(v) for v in after[1]}
        if old_keys == new_keys:
            return []
        where = f"{path}/{after[0]}"
        if before[0] == after[0] == "const":
            return [Difference("CONST_CHANGED", where, old["const"], new["const"])]
        if old_keys <= new_keys:
            rule = "ENUM_ARRAY_EXTENDED"
        elif new_keys <= old_keys:
            rule = "ENUM_ARRAY_NARROWED"
        else:
            rule = "ENUM_ARRAY_CHANGED"
        return [Difference(rule, where, old.get(before[0]), new.get(after[0]))]

    def _pattern(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str
    ) -> list[Difference]:
        before, after = old.get("pattern"), new.get("pattern")
        if before == after:
            return []
        rule = (
            "PATTERN_ADDED"
            if before is None
            else "PATTERN_REMOVED"
            if after is None
            else "PATTERN_CHANGED"
        )
        return [Difference(rule, f"{path}/pattern", before, after)]

    def _multiple_of(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str
    ) -> list[Difference]:
        before, after = old.get("multipleOf"), new.get("multipleOf")
        a, b = number(before), number(after)
        if a == b:
            return []
        where = f"{path}/multipleOf"
        if a is None:
            return [Difference("MULTIPLE_OF_ADDED", where, before, after)]
        if b is None:
            return [Difference("MULTIPLE_OF_REMOVED", where, before, after)]
        if (a / b).denominator == 1:
            return [Difference("MULTIPLE_OF_REDUCED", where, before, after)]
        if (b / a).denominator == 1:
            return [Difference("MULTIPLE_OF_EXPANDED", where, before, after)]
        return [Difference("MULTIPLE_OF_CHANGED", where, before, after)]

    # --- objects --------------------------------------------------------------------------------

    def _object(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        path: str,
        props: PropertyPath | None,
    ) -> list[Difference]:
        return compare_objects(self.compare, self.renames, old, new, path, props)

    # --- arrays ---------------------------------------------------------------------------------

    def _array(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> list[Difference]:
        out: list[Difference] = []
        old_prefix = old.get("prefixItems") or []
        new_prefix = new.get("prefixItems") or []
        if not old_prefix and not new_prefix:
            if "items" in old or "items" in new:
                out += self.compare(
                    old.get("items", {}), new.get("items", {}), f"{path}/items", None
                )
        else:
            out += self._tuple(old, new, path, old_prefix, new_prefix)
        out += bound_differences(old, new, path, ARRAY_BOUNDS)
        before, after = old.get("uniqueItems") is True, new.get("uniqueItems") is True
        if before != after:
            rule = "UNIQUE_ITEMS_REMOVED" if before else "UNIQUE_ITEMS_ADDED"
            out.append(Difference(rule, f"{path}/uniqueItems", before, after))
        return out

    def _tuple(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        path: str,
        old_prefix: list[Any],
        new_prefix: list[Any],
    ) -> list[Difference]:
        """``prefixItems`` compared item by item; ``items`` is the tuple's content model."""
        out: list[Difference] = []
        old_rest, new_rest = old.get("items", True), new.get("items", True)
        for index in range(max(len(old_prefix), len(new_prefix))):
            where = f"{path}/prefixItems/{index}"
            if index < len(old_prefix) and index < len(new_prefix):
                out += self.compare(old_prefix[index], new_prefix[index], where, None)
            elif index < len(old_prefix):  # removed: now governed by the update's 'items'
                out += self._covered(
                    old_prefix[index], new_rest, where, "ITEM_REMOVED", removing=True
                )
            else:  # added: was governed by the original's 'items'
                out += self._covered(
                    old_rest, new_prefix[index], where, "ITEM_ADDED", removing=False
                )
        where = f"{path}/items"
        if old_rest is False and new_rest is not False:
            out.append(Difference("ADDITIONAL_ITEMS_ADDED", where, False, new_rest))
        elif new_rest is False and old_rest is not False:
            out.append(Difference("ADDITIONAL_ITEMS_REMOVED", where, old_rest, False))
        elif is_empty(old_rest) and not is_empty(new_rest):
            out.append(Difference("ADDITIONAL_ITEMS_NARROWED", where, old_rest, new_rest))
        elif is_empty(new_rest) and not is_empty(old_rest):
            out.append(Difference("ADDITIONAL_ITEMS_EXTENDED", where, old_rest, new_rest))
        elif old_rest is not False:
            out += self.compare(old_rest, new_rest, where, None)
        return out

    def _covered(
        self, before: Any, after: Any, path: str, stem: str, *, removing: bool
    ) -> list[Difference]:
        """A tuple item (or property) moving between an explicit schema and the content model.

        Removing: ``before`` is the item's schema and ``after`` the update's model.
        Adding: ``before`` is the original's model and ``after`` the item's schema.
        """
        model = after if removing else before
        if model is False:
            if removing:
                rule = "WITH_FALSE_REMOVED" if before is False else "REMOVED"
                return [Difference(f"ITEM_{rule}_FROM_CLOSED_CONTENT_MODEL", path, before, None)]
            return [Difference("ITEM_ADDED_TO_CLOSED_CONTENT_MODEL", path, None, after)]
        if is_empty(model):
            if removing:
                return [Difference("ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL", path, before, None)]
            rule = "ITEM_WITH_EMPTY_SCHEMA_ADDED" if is_empty(after) else "ITEM_ADDED"
            return [Difference(f"{rule}_TO_OPEN_CONTENT_MODEL", path, None, after)]
        inner = self.compare(before, after, path, None)
        covered = all(d.compatible for d in inner)
        rule = f"{stem}_{'IS' if covered else 'NOT'}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"
        return [*inner, Difference(rule, path, None if not removing else before, after)]

    # --- combined schemas -----------------------------------------------------------------------

    def _unions(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        path: str,
        props: PropertyPath | None,
    ) -> list[Difference] | None:
        """Confluent's special cases: a plain schema against a pure union, and back."""
        old_union, new_union = _pure_union(old), _pure_union(new)
        if old_union is None and new_union is not None and not _combined(old):
            keyword, branches = new_union
            if len(branches) == 1:
                return self.compare(old, branches[0], f"{path}/{keyword}/0", props)
            if keyword == "allOf":
                return None
            for index, branch in enumerate(branches):
                inner = self.compare(old, branch, f"{path}/{keyword}/{index}", props)
                if all(d.compatible for d in inner):
                    return [*inner, Difference("SUM_TYPE_EXTENDED", path, None, keyword)]
            return [Difference("TYPE_CHANGED", path, _describe(_types(old)), keyword)]
        if new_union is None and old_union is not None and not _combined(new):
            keyword, branches = old_union
            if len(branches) == 1:
                return self.compare(branches[0], new, path, props)
            if keyword == "allOf":
                return None
            # Every old alternative must fit the new schema.
            out: list[Difference] = []
            for index, branch in enumerate(branches):
                out += self.compare(branch, new, f"{path}/{keyword}/{index}", props)
            if not all(d.compatible for d in out):
                out.append(Difference("SUM_TYPE_NARROWED", path, keyword, _describe(_types(new))))
            return out
        return None

    def _combinators(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str
    ) -> list[Difference]:
        before = [k for k in COMBINATORS if k in old]
        after = [k for k in COMBINATORS if k in new]
        out: list[Difference] = []
        if len(before) == 1 and len(after) == 1 and before != after:
            pairs = [(before[0], after[0])]
        else:
            pairs = [(k, k) for k in before if k in after]
            for keyword in before:
                if keyword not in after:  # a constraint dropped: only widens
                    rule = (
                        "PRODUCT_TYPE_NARROWED" if keyword == "allOf" else "COMBINED_TYPE_EXTENDED"
                    )
                    out.append(Difference(rule, f"{path}/{keyword}", old[keyword], None))
            for keyword in after:
                if keyword not in before:
                    rule = (
                        "PRODUCT_TYPE_EXTENDED" if keyword == "allOf" else "COMBINED_TYPE_CHANGED"
                    )
                    out.append(Difference(rule, f"{path}/{keyword}", None, new[keyword]))
        for was, now in pairs:
            out += self._combined(was, list(old[was]), now, list(new[now]), path)
        return out

    def _combined(
        self, was: str, before: list[Any], now: str, after: list[Any], path: str
    ) -> list[Difference]:
        out: list[Difference] = []
        if was != now:
            widened = (
                now == "anyOf"
                or (now == "oneOf" and len(before) == 1)
                or (now == "allOf" and len(before) == 1 and len(after) == 1)
            )
            rule = "COMBINED_TYPE_EXTENDED" if widened else "COMBINED_TYPE_CHANGED"
            out.append(Difference(rule, f"{path}/{now}", was, now))
            if not widened:
                return out
        before = _unique(before)
        after = _unique(after)
        where = f"{path}/{now}"
        if len(before) < len(after):
            rule = "PRODUCT_TYPE_EXTENDED" if now == "allOf" else "SUM_TYPE_EXTENDED"
            out.append(Difference(rule, where, len(before), len(after)))
        elif len(before) > len(after):
            rule = "PRODUCT_TYPE_NARROWED" if now == "allOf" else "SUM_TYPE_NARROWED"
            out.append(Difference(rule, where, len(before), len(after)))
        edges: dict[tuple[int, int], list[Difference]] = {}
        for i, old_branch in enumerate(before):
            for j, new_branch in enumerate(after):
                inner = self.compare(old_branch, new_branch, f"{path}/{was}/{i}", None)
                if all(d.compatible for d in inner):
                    edges[(i, j)] = inner
        matching = _maximum_matching(len(before), len(after), set(edges))
        for edge in sorted(matching):
            out += edges[edge]
        if len(matching) < min(len(before), len(after)):
            out.append(Difference("COMBINED_TYPE_SUBSCHEMAS_CHANGED", where, before, after))
        return out

    def _not(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> list[Difference]:
        if "not" not in old and "not" not in new:
            return []
        where = f"{path}/not"
        if "not" not in new:
            return [Difference("NOT_TYPE_NARROWED", where, old["not"], None)]
        if "not" not in old:
            return [Difference("NOT_TYPE_EXTENDED", where, None, new["not"])]
        # Data outside old.not stays outside new.not when new.not fits inside old.not.
        inner = self.compare(new["not"], old["not"], where, None)
        if not inner:
            return []
        rule = "NOT_TYPE_NARROWED" if all(d.compatible for d in inner) else "NOT_TYPE_EXTENDED"
        return [Difference(rule, where, old["not"], new["not"])]

    def _unknown(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str
    ) -> list[Difference]:
        out: list[Difference] = []
        keywords = [k for k in old if k not in HANDLED]
        keywords += [k for k in new if k not in HANDLED and k not in old]
        if "$ref" in old or "$ref" in new:  # unresolved (remote) references
            keywords.append("$ref")
        for keyword in keywords:
            before, after = old.get(keyword), new.get(keyword)
            if keyword in old and keyword in new and canonical(before) == canonical(after):
                continue
            rule = (
                "KEYWORD_ADDED"
                if keyword not in old
                else "KEYWORD_REMOVED"
                if keyword not in new
                else "KEYWORD_CHANGED"
            )
            out.append(Difference(rule, f"{path}/{pointer_segment(keyword)}", before, after))
        return out


def _types_of(schema: Any) -> frozenset[str] | None:
    return _types(schema) if isinstance(schema, Mapping) else None


def _combined(schema: Mapping[str, Any]) -> bool:
    return any(k in schema for k in COMBINATORS)


def _pure_union(schema: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    """(keyword, branches) when the schema is nothing but one allOf/anyOf/oneOf."""
    found = [k for k in COMBINATORS if k in schema]
    if len(found) != 1:
        return None
    rest = [k for k in schema if k != found[0]]
    if any(
        k not in ANNOTATIONS and k not in OTHER_ANNOTATIONS and k not in CONTAINERS for k in rest
    ):
        return None
    return found[0], list(schema[found[0]])


def _unique(branches: list[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for branch in branches:
        key = canonical(branch)
        if key not in seen:
            seen.add(key)
            out.append(branch)
    return out


def _maximum_matching(left: int, right: int, edges: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """A maximum bipartite matching (augmenting paths; unions are small)."""
    match_right: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(right):
            if (i, j) in edges and j not in seen:
                seen.add(j)
                if j not in match_right or augment(match_right[j], seen):
                    match_right[j] = i
                    return True
        return False

    for i in range(left):
        augment(i, set())
    return {(i, j) for j, i in match_right.items()}


__all__ = ["Difference", "diff", "property_path"]
