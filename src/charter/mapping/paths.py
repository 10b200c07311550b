"""Source paths of a mapping: parsing, lookup and JSON pointers.

A path names a value inside a payload: names joined by dots, with ``[n]``
list indexes (``account.id``, ``lines[0].sku``, ``[2].name``); ``$`` alone
names the whole payload. Paths are parsed once, into tuples of ``str`` (a
key of an object) and ``int`` (an index into a list), so looking a value up
costs no parsing.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from typing import Any, Final

Path = tuple[str | int, ...]

PATH_SYNTAX = (
    "write names joined by dots with [n] list indexes, e.g. 'account.id' or "
    "'lines[0].sku', or '$' alone for the whole payload"
)


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""What a lookup returns when the payload has no value at the path (``null`` is a value)."""


def parse_path(text: str) -> Path:
    """Parse a source path into its segments; raise ``ValueError`` saying what is wrong."""
    if text == "$":
        return ()
    if not text:
        raise ValueError(f"the path is empty; {PATH_SYNTAX}")
    segments: list[str | int] = []
    for position, part in enumerate(text.split(".")):
        bracket = part.find("[")
        name, indexes = (part, "") if bracket < 0 else (part[:bracket], part[bracket:])
        if "]" in name:
            raise ValueError(f"path {text!r} has a ']' without its '['; {PATH_SYNTAX}")
        if name == "$":
            raise ValueError(
                f"path {text!r} uses '$' as a name, but '$' stands alone for the whole "
                "payload; leave out the '$.' and start with the first name"
            )
        if name:
            segments.append(name)
        elif not (position == 0 and indexes):
            raise ValueError(f"path {text!r} has an empty name between dots; {PATH_SYNTAX}")
        while indexes:
            close = indexes.find("]")
            if not indexes.startswith("[") or close < 0:
                raise ValueError(f"path {text!r} has an unclosed or stray bracket; {PATH_SYNTAX}")
            digits = indexes[1:close]
            if not (digits.isascii() and digits.isdigit()):
                raise ValueError(
                    f"path {text!r} has the index [{digits}]; a list index is a whole "
                    "number from 0, such as [0]"
                )
            segments.append(int(digits))
            indexes = indexes[close + 1 :]
    return tuple(segments)


def lookup(payload: Any, path: Path) -> Any:
    """The value at a parsed path, or ``MISSING``; never raises for any payload."""
    value = payload
    for segment in path:
        if isinstance(segment, str):
            if not isinstance(value, dict):
                return MISSING
            value = value.get(segment, MISSING)
            if value is MISSING:
                return MISSING
        else:
            if not isinstance(value, list) or segment >= len(value):
                return MISSING
            value = value[segment]
    return value


@lru_cache(maxsize=256)
def _parsed(text: str) -> Path:
    return parse_path(text)


def get_path(payload: Any, path: str) -> Any:
    """The value at ``path`` in ``payload`` (e.g. ``"lines[0].sku"``), or ``MISSING``.

    Raises ``ValueError`` when the path itself does not parse. Compiled mappings
    parse their paths once; this helper is for tests, tools and one-off reads.
    """
    return lookup(payload, _parsed(path))


def to_pointer(path: Path) -> str:
    """The RFC 6901 JSON pointer of a parsed path (``""`` for the whole payload)."""
    return "".join(
        "/"
        + (
            segment.replace("~", "~0").replace("/", "~1")
            if isinstance(segment, str)
            else str(segment)
        )
        for segment in path
    )
