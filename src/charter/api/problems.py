"""RFC 9457 problem+json for every error that leaves the API; never a traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from charter.errors import PROBLEM_BASE, CharterError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("charter.api")


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=body["status"], media_type=PROBLEM_JSON, headers=headers
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as problem+json with a stable ``type``."""

    async def charter_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CharterError)
        return problem_response(exc.problem(request.url.path))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        phrase = HTTPStatus(exc.status_code).phrase
        slug = phrase.lower().replace(" ", "-")
        return problem_response(
            {
                "type": PROBLEM_BASE + slug,
                "title": phrase,
                "status": exc.status_code,
                "detail": str(exc.detail)
                if exc.detail != phrase
                else f"{request.method} {request.url.path}: {phrase.lower()}",
                "instance": request.url.path,
            },
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"pointer": "/" + "/".join(str(p) for p in e["loc"]), "detail": e["msg"]}
            for e in exc.errors()
        ]
        return problem_response(
            {
                "type": PROBLEM_BASE + "invalid-request",
                "title": "The request is invalid",
                "status": 422,
                "detail": "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors),
                "errors": errors,
                "instance": request.url.path,
            }
        )

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            {
                "type": PROBLEM_BASE + "database-unavailable",
                "title": "The database is unavailable",
                "status": 503,
                "detail": "the hub cannot reach its database; nothing was stored",
                "fix": "retry later with the same Idempotency-Key",
                "instance": request.url.path,
            },
            headers={"retry-after": "1"},
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            {
                "type": PROBLEM_BASE + "internal-error",
                "title": "Internal error",
                "status": 500,
                "detail": f"an unexpected {type(exc).__name__} happened; it has been logged",
                "instance": request.url.path,
            }
        )

    app.add_exception_handler(CharterError, charter_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(Exception, unexpected)
