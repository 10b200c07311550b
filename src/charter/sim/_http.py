"""HTTP pieces the simulators share: orjson answers, problem+json and option parsing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from charter.errors import PROBLEM_BASE

PROBLEM_TYPE_BASE = PROBLEM_BASE + "sim/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class JSONAnswer(JSONResponse):
    """A JSON response encoded with orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Answer with an RFC 9457 problem details object."""
    return JSONAnswer(
        problem_body(status, slug, title, detail),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def problem_body(status: int, slug: str, title: str, detail: str) -> dict[str, Any]:
    """The members of an RFC 9457 problem details object whose type ends in ``slug``."""
    return {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}


def http_error(request: Request, exc: Exception) -> Response:
    """Turn Starlette's routing errors (404, 405) into problem+json like every other answer."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, "http-error", exc.detail, exc.detail, headers=headers)


class BodyError(ValueError):
    """A request body cannot be used; the message says why."""


def read_json(raw: bytes) -> Any:
    """Parse a request body, raising `BodyError` when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc}") from None


def is_number(value: Any) -> bool:
    """Whether a decoded JSON value is a number (JSON booleans are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """Whether a decoded JSON value is an integer (JSON booleans are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def non_empty_string(value: Any) -> bool:
    """Whether a decoded JSON value is a string with at least one character."""
    return isinstance(value, str) and value != ""


def json_type(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words."""
    if value is None:
        return "null or no body"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


@dataclass(frozen=True)
class Option:
    """One accepted field of an options object: how to check it and how to say what it must be."""

    accepts: Callable[[Any], bool]
    expected: str


def parse_options(body: Any, options: Mapping[str, Option]) -> dict[str, Any]:
    """Check an options object against its fields and return it.

    Fields not given are simply absent from the result; unknown fields and
    values of the wrong kind raise `BodyError` naming the field.
    """
    if not isinstance(body, dict):
        raise BodyError(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(options))
    if unknown:
        raise BodyError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(options)}")
    for name, value in body.items():
        if not options[name].accepts(value):
            raise BodyError(f"'{name}' must be {options[name].expected}, got {value!r}")
    return body
