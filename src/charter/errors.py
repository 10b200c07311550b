"""Charter's exception tree.

Every error says what happened, names the offending value and says what to do
next. Errors that cross the API become RFC 9457 problem+json using ``type_``,
``title`` and ``status``; the delivery layer reads ``retryable``.

    CharterError
    ├── CatalogError            the project folder does not validate (carries every problem)
    ├── MappingError            a payload cannot be mapped (names the field by JSON pointer)
    ├── IngestError             an ingest request is refused; nothing was stored
    │   ├── BadRequest              malformed JSON, invalid UTF-8, too deep, not CloudEvents (400)
    │   ├── UnknownSystem           no such system in the catalog (404)
    │   ├── PayloadTooLarge         body over the limit (413)
    │   ├── UnsupportedMediaType    wrong Content-Type (415)
    │   ├── InvalidEvent            schema violation or unmapped event (422)
    │   ├── IdempotencyKeyReused    same key, other body (422)
    │   └── IdempotencyKeyInFlight  same key still being processed (409)
    ├── StoreError              the database cannot be used as is
    │   ├── WriteRolledBack         rolled back in favour of another write; run it again
    │   ├── DatabaseUnavailable     cannot be reached or dropped the connection; wait, try again
    │   └── SchemaOutOfDate         migrations are pending
    ├── NotFound                an object asked for does not exist (404)
    ├── Conflict                an operation does not apply in the current state (409)
    └── ConnectorError          a call to a target system failed
        ├── TargetUnavailable       connection error, timeout or 5xx (retryable)
        ├── RateLimited             429; carries Retry-After (retryable)
        └── TargetRejected          4xx other than 408/429 (not retryable)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBLEM_BASE = "https://charter.dev/problems/"


class CharterError(Exception):
    """Base of every error Charter raises on purpose."""

    type_: str = "charter-error"
    title: str = "Charter error"
    status: int = 500
    retryable: bool = False

    def __init__(self, detail: str, *, fix: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix
        self.extra = extra

    def __str__(self) -> str:
        return f"{self.detail} ({self.fix})" if self.fix else self.detail

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """Return this error as an RFC 9457 problem details object."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.type_,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.fix:
            body["fix"] = self.fix
        body.update(self.extra)
        return body


@dataclass(frozen=True)
class Problem:
    """One problem found in a project folder: where it is and how to fix it."""

    file: str
    line: int | None
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


class CatalogError(CharterError):
    """The project folder does not validate; ``problems`` lists every problem found."""

    type_ = "invalid-catalog"
    title = "The project does not validate"
    status = 422

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(
            f"{len(problems)} problem(s) in the project",
            problems=[str(p) for p in problems],
        )
        self.problems = problems


class MappingError(CharterError):
    """A payload cannot be mapped; ``pointer`` names the field (JSON pointer)."""

    type_ = "mapping-failed"
    title = "The payload cannot be mapped"
    status = 422

    def __init__(self, detail: str, *, pointer: str = "", fix: str | None = None) -> None:
        super().__init__(detail, fix=fix, pointer=pointer)
        self.pointer = pointer


class IngestError(CharterError):
    """An ingest request is refused; nothing was stored."""

    type_ = "ingest-refused"
    title = "The events were refused"
    status = 400


class BadRequest(IngestError):
    type_ = "bad-request"
    title = "The request body cannot be read"
    status = 400


class UnknownSystem(IngestError):
    type_ = "unknown-system"
    title = "No such system"
    status = 404


class PayloadTooLarge(IngestError):
    type_ = "payload-too-large"
    title = "The request body is over the limit"
    status = 413


class UnsupportedMediaType(IngestError):
    type_ = "unsupported-media-type"
    title = "Unsupported content type"
    status = 415


class InvalidEvent(IngestError):
    type_ = "invalid-event"
    title = "The event does not validate"
    status = 422


class IdempotencyKeyReused(IngestError):
    type_ = "idempotency-key-reused"
    title = "The Idempotency-Key was used with another body"
    status = 422


class IdempotencyKeyInFlight(IngestError):
    type_ = "idempotency-key-in-flight"
    title = "A request with this Idempotency-Key is still being processed"
    status = 409


class StoreError(CharterError):
    type_ = "store-error"
    title = "The database cannot be used"
    status = 503


class WriteRolledBack(StoreError):
    """PostgreSQL rolled a write back so that another could go on (a deadlock, or a
    serialization failure). Nothing of it is left; run again, it goes through."""

    type_ = "write-rolled-back"
    title = "The database rolled back a write in favour of another"


class DatabaseUnavailable(StoreError):
    """The database could not be reached, or dropped the connection (a restart, a
    failover, a network cut; on SQLite, another program holding the file's lock too long).
    A write that fails so may or may not have been committed."""

    type_ = "database-unavailable"
    title = "The database cannot be reached"


class SchemaOutOfDate(StoreError):
    type_ = "schema-out-of-date"
    title = "The database schema is out of date"


class NotFound(CharterError):
    type_ = "not-found"
    title = "Not found"
    status = 404


class Conflict(CharterError):
    """An operation does not apply to the object in its current state."""

    type_ = "conflict"
    title = "The operation does not apply now"
    status = 409


class ConnectorError(CharterError):
    """A call to a target system failed; ``retryable`` tells the delivery layer what to do."""

    type_ = "connector-error"
    title = "The target system call failed"
    status = 502

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        error_class: str = "error",
        fix: str | None = None,
    ) -> None:
        super().__init__(detail, fix=fix)
        self.status_code = status_code
        self.error_class = error_class


class TargetUnavailable(ConnectorError):
    retryable = True


class RateLimited(ConnectorError):
    retryable = True

    def __init__(self, detail: str, *, retry_after: float | None, status_code: int = 429) -> None:
        super().__init__(detail, status_code=status_code, error_class="rate_limited")
        self.retry_after = retry_after


class TargetRejected(ConnectorError):
    retryable = False
