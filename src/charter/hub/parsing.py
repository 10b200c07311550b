"""Reading an ingest request body: content type, size, UTF-8, JSON, nesting, CloudEvents envelope.

Pure functions; every refusal is an :class:`~charter.errors.IngestError` naming the
offending value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from charter.errors import BadRequest, InvalidEvent, PayloadTooLarge, UnsupportedMediaType

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
PLAIN_JSON = "application/json"
ACCEPTED_TYPES = (STRUCTURED, BATCH, PLAIN_JSON)


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one ingest request may hold."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_depth: int = 32
    max_batch: int = 1000


@dataclass(frozen=True)
class CloudEvent:
    """The attributes of a CloudEvents 1.0 event that the hub uses, and its data."""

    id: str
    source: str
    type: str
    subject: str | None
    time: str | None
    data: Any


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, without parameters."""
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if value not in ACCEPTED_TYPES:
        shown = content_type or "(none)"
        raise UnsupportedMediaType(
            f"Content-Type {shown!r} is not accepted",
            fix=f"send the events as {STRUCTURED}, {BATCH} or {PLAIN_JSON}",
        )
    return value


def is_json_media_type(value: str) -> bool:
    """Whether a media type declares JSON data (``*/json`` or ``*/*+json``), as CloudEvents says."""
    subtype = value.split(";", 1)[0].strip().lower().partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def check_size(size: int, limits: IngestLimits) -> None:
    if size > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"the body is over the limit of {limits.max_body_bytes} bytes",
            fix="send fewer events per request",
            limit=limits.max_body_bytes,
        )


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in item)
    return False


def parse_body(body: bytes, content_type: str | None, limits: IngestLimits) -> list[CloudEvent]:
    """The events of one request, or the reason it is refused."""
    kind = media_type(content_type)
    check_size(len(body), limits)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start})",
            fix="encode the JSON as UTF-8",
        ) from exc
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not valid JSON: {exc}", fix="send one JSON document"
        ) from exc
    if _depth_exceeds(document, limits.max_depth):
        raise BadRequest(
            f"the JSON is nested deeper than {limits.max_depth} levels",
            fix="flatten the payload",
            limit=limits.max_depth,
        )
    if isinstance(document, list):
        if kind == STRUCTURED:
            raise BadRequest(
                f"a JSON array was sent as {STRUCTURED}",
                fix=f"send a batch as {BATCH}, or one event as an object",
            )
        if not document:
            raise BadRequest("the batch is empty", fix="send at least one event")
        if len(document) > limits.max_batch:
            raise PayloadTooLarge(
                f"the batch holds {len(document)} events, over the limit of {limits.max_batch}",
                fix="split it into smaller batches",
                limit=limits.max_batch,
            )
        return [envelope(item, f"/{n}") for n, item in enumerate(document)]
    if kind == BATCH:
        raise BadRequest(f"{BATCH} needs a JSON array", fix="wrap the event in [ ]")
    return [envelope(document, "")]


def _attribute(event: dict[str, Any], name: str, pointer: str, required: bool) -> str | None:
    value = event.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidEvent(
            f"CloudEvents attribute '{name}' at {pointer}/{name} must be a non-empty string, "
            f"got {value!r}",
            fix=f"set '{name}' on every event",
            pointer=f"{pointer}/{name}",
        )
    return value


def envelope(event: Any, pointer: str) -> CloudEvent:
    """Check a CloudEvents 1.0 structured-mode event and take what the hub uses."""
    if not isinstance(event, dict):
        raise InvalidEvent(
            f"the event at {pointer or '/'} is a {type(event).__name__}, not an object",
            fix="send CloudEvents 1.0 objects",
            pointer=pointer,
        )
    if event.get("specversion") != "1.0":
        raise InvalidEvent(
            f"specversion at {pointer}/specversion is {event.get('specversion')!r}, not '1.0'",
            fix='send CloudEvents 1.0 events with "specversion": "1.0"',
            pointer=f"{pointer}/specversion",
        )
    if "data_base64" in event:
        raise InvalidEvent(
            f"the event at {pointer or '/'} carries data_base64; the hub takes JSON data only",
            fix="send the payload as JSON in 'data'",
            pointer=f"{pointer}/data_base64",
        )
    data_type = event.get("datacontenttype")
    if data_type is not None and not is_json_media_type(str(data_type)):
        raise InvalidEvent(
            f"datacontenttype {data_type!r} at {pointer}/datacontenttype is not JSON",
            fix="send JSON data with datacontenttype application/json",
            pointer=f"{pointer}/datacontenttype",
        )
    ce_id = _attribute(event, "id", pointer, required=True)
    source = _attribute(event, "source", pointer, required=True)
    type_ = _attribute(event, "type", pointer, required=True)
    assert ce_id is not None and source is not None and type_ is not None
    return CloudEvent(
        id=ce_id,
        source=source,
        type=type_,
        subject=_attribute(event, "subject", pointer, required=False),
        time=_attribute(event, "time", pointer, required=False),
        data=event.get("data"),
    )
