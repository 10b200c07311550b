"""Reading ingest bodies: content type, limits, UTF-8, JSON, nesting, the CloudEvents envelope."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from charter.errors import BadRequest, IngestError, InvalidEvent, PayloadTooLarge
from charter.errors import UnsupportedMediaType as Unsupported
from charter.hub.parsing import BATCH, PLAIN_JSON, STRUCTURED, IngestLimits, parse_body

LIMITS = IngestLimits()


def event(**changes: Any) -> dict[str, Any]:
    """A valid structured-mode event; ``None`` values remove the attribute."""
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "deal-1",
        "source": "crm",
        "type": "deal.closed",
        "subject": "D-1",
        "time": "2024-05-01T10:00:00Z",
        "data": {"id": "D-1", "amount": 10},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def body(value: Any) -> bytes:
    return orjson.dumps(value)


def refused(raw: bytes, content_type: str | None, limits: IngestLimits = LIMITS) -> IngestError:
    with pytest.raises(IngestError) as caught:
        parse_body(raw, content_type, limits)
    return caught.value


# content types


@pytest.mark.parametrize(
    "content_type",
    [
        STRUCTURED,
        PLAIN_JSON,
        "application/cloudevents+json; charset=utf-8",
        "Application/JSON",
        " application/json ;charset=UTF-8",
    ],
)
def test_a_single_event_is_accepted_as_structured_or_plain_json(content_type: str) -> None:
    [parsed] = parse_body(body(event()), content_type, LIMITS)
    assert (parsed.id, parsed.source, parsed.type) == ("deal-1", "crm", "deal.closed")
    assert (parsed.subject, parsed.time) == ("D-1", "2024-05-01T10:00:00Z")
    assert parsed.data == {"id": "D-1", "amount": 10}


def test_a_batch_is_accepted_in_order() -> None:
    events = [event(id=f"deal-{n}") for n in range(3)]
    parsed = parse_body(body(events), BATCH, LIMITS)
    assert [e.id for e in parsed] == ["deal-0", "deal-1", "deal-2"]


def test_optional_attributes_may_be_absent() -> None:
    [parsed] = parse_body(body(event(subject=None, time=None, data=None)), STRUCTURED, LIMITS)
    assert (parsed.subject, parsed.time, parsed.data) == (None, None, None)


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/plain", "'text/plain'"),
        ("application/xml", "'application/xml'"),
        ("application/cloudevents", "'application/cloudevents'"),
        ("", "(none)"),
        (None, "(none)"),
    ],
)
def test_other_content_types_are_refused_with_415(content_type: str | None, shown: str) -> None:
    error = refused(body(event()), content_type)
    assert isinstance(error, Unsupported)
    assert error.status == 415
    assert shown in error.detail
    assert error.fix is not None and STRUCTURED in error.fix


# limits and encoding


def test_a_body_at_the_size_limit_is_read_and_one_byte_more_is_refused_with_413() -> None:
    raw = body(event())
    assert len(parse_body(raw, STRUCTURED, IngestLimits(max_body_bytes=len(raw)))) == 1
    error = refused(raw, STRUCTURED, IngestLimits(max_body_bytes=len(raw) - 1))
    assert isinstance(error, PayloadTooLarge)
    assert error.status == 413
    assert error.extra["limit"] == len(raw) - 1


def test_the_size_limit_is_checked_before_the_body_is_parsed() -> None:
    error = refused(b"x" * 101, STRUCTURED, IngestLimits(max_body_bytes=100))
    assert isinstance(error, PayloadTooLarge)


def test_invalid_utf8_is_refused_with_the_byte_and_its_offset() -> None:
    raw = b'{"id": "\xff"}'
    error = refused(raw, STRUCTURED)
    assert isinstance(error, BadRequest)
    assert error.status == 400
    assert "0xff" in error.detail
    assert "offset 8" in error.detail


@pytest.mark.parametrize("raw", [b"{", b'{"id": 1,}', b"", b"nope", b'{"a": 1} {"b": 2}'])
def test_malformed_json_is_refused_with_400(raw: bytes) -> None:
    error = refused(raw, STRUCTURED)
    assert isinstance(error, BadRequest)
    assert error.status == 400
    assert "not valid JSON" in error.detail


def nested(levels: int) -> dict[str, Any]:
    """An event whose JSON is ``levels`` objects deep, the envelope counting as one."""
    data: dict[str, Any] = {}
    for _ in range(levels - 2):
        data = {"a": data}
    return event(data=data)


def test_nesting_exactly_at_the_limit_is_accepted_and_one_deeper_is_refused() -> None:
    limits = IngestLimits(max_depth=6)
    [parsed] = parse_body(body(nested(6)), STRUCTURED, limits)
    assert parsed.data == {"a": {"a": {"a": {"a": {}}}}}
    error = refused(body(nested(7)), STRUCTURED, limits)
    assert isinstance(error, BadRequest)
    assert "deeper than 6 levels" in error.detail
    assert error.extra["limit"] == 6


def test_lists_count_towards_the_depth_and_a_batch_array_is_a_level() -> None:
    limits = IngestLimits(max_depth=4)
    ok = [event(data={"lines": [1, 2]})]  # array, event, data, lines
    assert len(parse_body(body(ok), BATCH, limits)) == 1
    too_deep = [event(data={"lines": [[1]]})]
    assert isinstance(refused(body(too_deep), BATCH, limits), BadRequest)


# batches


def test_an_array_sent_as_a_single_event_is_refused() -> None:
    error = refused(body([event()]), STRUCTURED)
    assert isinstance(error, BadRequest)
    assert error.fix is not None and BATCH in error.fix


def test_an_array_sent_as_plain_json_is_a_batch() -> None:
    parsed = parse_body(body([event(id="a"), event(id="b")]), PLAIN_JSON, LIMITS)
    assert [e.id for e in parsed] == ["a", "b"]


def test_an_object_sent_as_a_batch_is_refused() -> None:
    error = refused(body(event()), BATCH)
    assert isinstance(error, BadRequest)
    assert "needs a JSON array" in error.detail


@pytest.mark.parametrize("content_type", [BATCH, PLAIN_JSON])
def test_an_empty_batch_is_refused(content_type: str) -> None:
    error = refused(b"[]", content_type)
    assert isinstance(error, BadRequest)
    assert "empty" in error.detail


def test_a_batch_at_the_limit_is_read_and_one_more_event_is_refused_with_413() -> None:
    limits = IngestLimits(max_batch=3)
    assert len(parse_body(body([event(id=str(n)) for n in range(3)]), BATCH, limits)) == 3
    error = refused(body([event(id=str(n)) for n in range(4)]), BATCH, limits)
    assert isinstance(error, PayloadTooLarge)
    assert "4 events" in error.detail
    assert error.extra["limit"] == 3


# envelope


def envelope_error(value: Any, content_type: str = STRUCTURED) -> InvalidEvent:
    error = refused(body(value), content_type)
    assert isinstance(error, InvalidEvent), error
    assert error.status == 422
    return error


@pytest.mark.parametrize(
    ("changes", "pointer"),
    [
        ({"specversion": None}, "/specversion"),
        ({"specversion": "0.3"}, "/specversion"),
        ({"specversion": 1.0}, "/specversion"),
        ({"id": None}, "/id"),
        ({"id": ""}, "/id"),
        ({"id": 7}, "/id"),
        ({"source": None}, "/source"),
        ({"source": ""}, "/source"),
        ({"type": None}, "/type"),
        ({"type": ""}, "/type"),
        ({"subject": ""}, "/subject"),
        ({"data_base64": "eyJhIjoxfQ==", "data": None}, "/data_base64"),
        ({"datacontenttype": "text/xml"}, "/datacontenttype"),
        ({"datacontenttype": "application/octet-stream"}, "/datacontenttype"),
    ],
)
def test_envelope_problems_name_the_attribute_by_json_pointer(
    changes: dict[str, Any], pointer: str
) -> None:
    single = envelope_error(event(**changes))
    assert single.extra["pointer"] == pointer
    assert pointer.removeprefix("/") in single.detail
    batch = envelope_error([event(id="ok-0"), event(id="ok-1"), event(**changes)], BATCH)
    assert batch.extra["pointer"] == "/2" + pointer


def test_json_datacontenttype_with_parameters_is_accepted() -> None:
    raw = body(event(datacontenttype="application/json; charset=utf-8"))
    assert parse_body(raw, STRUCTURED, LIMITS)[0].data == {"id": "D-1", "amount": 10}


@pytest.mark.parametrize("data_type", ["application/vnd.crm.deal+json", "text/json"])
def test_every_json_datacontenttype_is_accepted(data_type: str) -> None:
    raw = body(event(datacontenttype=data_type))
    assert parse_body(raw, STRUCTURED, LIMITS)[0].data == {"id": "D-1", "amount": 10}


@pytest.mark.parametrize(("value", "kind"), [("text", "str"), (3, "int"), (None, "NoneType")])
def test_an_event_that_is_not_an_object_is_refused(value: Any, kind: str) -> None:
    single = envelope_error(value, PLAIN_JSON)
    assert single.extra["pointer"] == ""
    assert f"is a {kind}" in single.detail
    batch = envelope_error([event(), value], BATCH)
    assert batch.extra["pointer"] == "/1"
