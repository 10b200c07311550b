"""Ingest over HTTP on a real port: bad input is refused as problem+json and stores nothing.

One hub per database (embedded SQLite, then PostgreSQL) serves every test of
this module; each test compares the hub's own counts before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from charter.hub import event_id
from charter.processes import HubProcess
from charter.sim import SimProcess
from tests.acceptance.conftest import (
    BATCH,
    EVENTS,
    SINGLE,
    deal,
    deals,
    pg_database,
    problem_of,
    running_hub,
)
from tests.conftest import copy_starter

pytestmark = pytest.mark.xdist_group("api-ingest")

MIB = 1024 * 1024


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def hub(
    request: pytest.FixtureRequest,
    erp_process: SimProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HubProcess]:
    """``charter up`` on the starter project: its own SQLite file, or a fresh PostgreSQL."""
    project = copy_starter(tmp_path_factory.mktemp("ingest") / "project")
    with ExitStack() as stack:
        database = None
        if request.param == "postgresql":
            template: str = request.getfixturevalue("pg_template")
            database = stack.enter_context(pg_database(template))
        yield stack.enter_context(running_hub(project, erp_process, database=database))


@pytest.fixture
def api(hub: HubProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=30, trust_env=False) as client:
        yield client


def stored(api: httpx.Client) -> tuple[int, int]:
    """(events received, deliveries created) as the hub reports them."""
    stats = api.get("/v1/stats").json()
    d = stats["deliveries"]
    return stats["received"], d["pending"] + d["delivered"] + d["dead"]


def post(
    api: httpx.Client,
    body: Any,
    content_type: str | None = SINGLE,
    *,
    key: str | None = None,
    path: str = EVENTS,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": content_type} if content_type else {}
    if key is not None:
        headers["idempotency-key"] = key
    return api.post(path, content=content, headers=headers)


# -- refusals -----------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def with_data(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**event, "data": {**event["data"], **changes}}


def batch_with(index: int, event: dict[str, Any], size: int = 5) -> list[dict[str, Any]]:
    events = deals(size)
    events[index] = event
    return events


def without_id(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "id"}


@dataclass(frozen=True)
class BadInput:
    """A refused request and what the problem must say about it."""

    body: bytes
    status: int
    type_: str
    names: tuple[str, ...]  # what the detail must name
    content_type: str | None = SINGLE
    pointer: str | None = None
    path: str = EVENTS


UTF8_BODY = b'{"specversion": "1.0", "id": "caf\xe9"}'
BAD_INPUTS = {
    "malformed JSON": BadInput(
        b'{"specversion": "1.0", "id": oops}', 400, "bad-request", ("not valid JSON", "column 30")
    ),
    "invalid UTF-8": BadInput(
        UTF8_BODY, 400, "bad-request", ("UTF-8", "0xe9", f"offset {UTF8_BODY.index(0xE9)}")
    ),
    "body over 4 MiB": BadInput(
        orjson.dumps(with_data(deal("big"), note="x" * (5 * MIB))),
        413,
        "payload-too-large",
        (str(4 * MIB),),
    ),
    "nesting over 32": BadInput(
        orjson.dumps(with_data(deal("deep"), extra=nested(40))), 400, "bad-request", ("32",)
    ),
    "negative amount": BadInput(
        orjson.dumps(deal("neg", amount=-1)),
        422,
        "invalid-event",
        ("/data/amount", "-1"),
        pointer="/data/amount",
    ),
    "negative amount at batch index 2": BadInput(
        orjson.dumps(batch_with(2, deal("neg-in-batch", amount=-5))),
        422,
        "invalid-event",
        ("/2/data/amount", "-5"),
        content_type=BATCH,
        pointer="/2/data/amount",
    ),
    "batch event without id": BadInput(
        orjson.dumps(batch_with(1, without_id(deal("no-id")), size=3)),
        422,
        "invalid-event",
        ("'id'", "/1/id"),
        content_type=BATCH,
        pointer="/1/id",
    ),
    "undeclared event type": BadInput(
        orjson.dumps({**deal("opened"), "type": "deal.opened"}),
        422,
        "invalid-event",
        ("'deal.opened'",),
        pointer="/type",
    ),
    "CloudEvents 0.3": BadInput(
        orjson.dumps({**deal("old"), "specversion": "0.3"}),
        422,
        "invalid-event",
        ("'0.3'",),
        pointer="/specversion",
    ),
    "stage outside the value map": BadInput(
        orjson.dumps(with_data(deal("negotiating"), stage="negotiation")),
        422,
        "invalid-event",
        ("'negotiation'", "crm-deal-to-order"),
        pointer="/data/stage",
    ),
    "data_base64": BadInput(
        orjson.dumps({**deal("binary"), "data_base64": "AAAA"}),
        422,
        "invalid-event",
        ("data_base64",),
        pointer="/data_base64",
    ),
    "datacontenttype text/xml": BadInput(
        orjson.dumps({**deal("xml"), "datacontenttype": "text/xml"}),
        422,
        "invalid-event",
        ("'text/xml'",),
        pointer="/datacontenttype",
    ),
    "number in a batch": BadInput(
        orjson.dumps([deal("fine"), 7]),
        422,
        "invalid-event",
        ("/1", "int"),
        content_type=BATCH,
        pointer="/1",
    ),
    "batch as a single event": BadInput(
        orjson.dumps(deals(2)), 400, "bad-request", ("array", SINGLE)
    ),
    "batch of 1001": BadInput(
        orjson.dumps(deals(1001)),
        413,
        "payload-too-large",
        ("1001", "1000"),
        content_type=BATCH,
    ),
    "empty batch": BadInput(b"[]", 400, "bad-request", ("empty",), content_type=BATCH),
    "unknown system": BadInput(
        orjson.dumps(deal("billing")),
        404,
        "unknown-system",
        ("'billing'",),
        path="/v1/systems/billing/events",
    ),
    "text/plain": BadInput(
        orjson.dumps(deal("plain")), 415, "unsupported-media-type", ("text/plain",), "text/plain"
    ),
    "no content type": BadInput(
        orjson.dumps(deal("untyped")), 415, "unsupported-media-type", ("(none)",), None
    ),
    "unknown route": BadInput(
        orjson.dumps(deal("typo")),
        404,
        "not-found",
        ("/v1/system/crm/events",),
        path="/v1/system/crm/events",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_a_problem_naming_the_value_and_stores_nothing(
    api: httpx.Client, case: BadInput
) -> None:
    before = stored(api)
    response = post(api, case.body, case.content_type, path=case.path)
    problem = problem_of(response, case.status)
    assert problem["type"].endswith("/" + case.type_), problem
    for name in case.names:
        assert name in problem["detail"], problem
    if case.pointer is not None:
        assert problem["pointer"] == case.pointer, problem
    assert stored(api) == before


def test_a_streamed_body_over_the_limit_is_refused_without_content_length(
    api: httpx.Client,
) -> None:
    chunk = b" " * MIB

    def body() -> Iterator[bytes]:
        yield orjson.dumps(deal("streamed"))
        for _ in range(5):
            yield chunk

    before = stored(api)
    response = api.post(EVENTS, content=body(), headers={"content-type": SINGLE})
    assert "content-length" not in response.request.headers
    problem = problem_of(response, 413)
    assert str(4 * MIB) in problem["detail"]
    assert stored(api) == before


def test_an_idempotency_key_over_255_characters_is_refused(api: httpx.Client) -> None:
    before = stored(api)
    problem = problem_of(post(api, deal(uuid.uuid4().hex), key="k" * 256), 400)
    assert "255" in problem["detail"]
    assert stored(api) == before


# -- acceptance -----------------------------------------------------------------------


def test_one_event_is_accepted_with_its_id(api: httpx.Client) -> None:
    event = deal(uuid.uuid4().hex)
    before = stored(api)
    response = post(api, event)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "ids": [event_id("crm", event["id"])]}
    assert stored(api) == (before[0] + 1, before[1] + 1)


def test_a_batch_of_100_is_accepted_with_ids_in_order(api: httpx.Client) -> None:
    batch = deals(100)
    before = stored(api)
    response = post(api, batch, BATCH)
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    assert ids == [event_id("crm", e["id"]) for e in batch]
    assert len(set(ids)) == 100
    assert stored(api) == (before[0] + 100, before[1] + 100)


def test_a_plain_json_array_is_taken_as_a_batch(api: httpx.Client) -> None:
    batch = deals(3)
    before = stored(api)
    response = post(api, batch, "application/json; charset=utf-8")
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3
    assert stored(api) == (before[0] + 3, before[1] + 3)


def test_resent_events_get_the_same_ids_and_are_stored_once(api: httpx.Client) -> None:
    batch = deals(20)
    first = post(api, batch, BATCH)
    assert first.status_code == 202, first.text
    after_first = stored(api)
    again = post(api, batch, BATCH)
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    # A batch mixing resent and new events stores only the new ones.
    mixed = post(api, [*batch[:5], deal(uuid.uuid4().hex)], BATCH)
    assert mixed.status_code == 202, mixed.text
    assert mixed.json()["ids"][:5] == first.json()["ids"][:5]
    assert stored(api) == (after_first[0] + 1, after_first[1] + 1)


def test_an_event_repeated_within_a_batch_is_stored_once(api: httpx.Client) -> None:
    event = deal(uuid.uuid4().hex)
    before = stored(api)
    response = post(api, [event, event], BATCH)
    assert response.status_code == 202, response.text
    assert response.json()["ids"] == [event_id("crm", event["id"])] * 2
    assert stored(api) == (before[0] + 1, before[1] + 1)


def test_the_same_idempotency_key_and_body_replays_the_first_answer(api: httpx.Client) -> None:
    key, batch = str(uuid.uuid4()), deals(3)
    before = stored(api)
    first = post(api, batch, BATCH, key=key)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    replay = post(api, batch, BATCH, key=key)
    assert replay.status_code == first.status_code
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert stored(api) == (before[0] + 3, before[1] + 3)


def test_the_same_idempotency_key_with_another_body_is_refused(api: httpx.Client) -> None:
    key = str(uuid.uuid4())
    assert post(api, deal(uuid.uuid4().hex), key=key).status_code == 202
    before = stored(api)
    problem = problem_of(post(api, deal(uuid.uuid4().hex), key=key), 422)
    assert problem["type"].endswith("/idempotency-key-reused")
    assert key in problem["detail"]
    assert stored(api) == before


def test_a_refused_request_leaves_its_idempotency_key_free(api: httpx.Client) -> None:
    key, event = str(uuid.uuid4()), deal(uuid.uuid4().hex)
    problem_of(post(api, with_data(event, amount=-1), key=key), 422)
    accepted = post(api, event, key=key)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["ids"] == [event_id("crm", event["id"])]


def test_an_accepted_event_can_be_read_back(api: httpx.Client) -> None:
    event = deal(uuid.uuid4().hex)
    [hub_id] = post(api, event).json()["ids"]
    response = api.get(f"/v1/events/{hub_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["system"], body["ce_id"]) == (hub_id, "crm", event["id"])
    assert (body["type"], body["source"]) == (event["type"], event["source"])
    assert body["data"] == event["data"]


def test_an_unknown_event_id_is_a_problem(api: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    problem = problem_of(api.get(f"/v1/events/{missing}"), 404)
    assert missing in problem["detail"]


def test_concurrent_requests_with_one_idempotency_key_store_the_events_once(
    hub: HubProcess, api: httpx.Client
) -> None:
    key, body = str(uuid.uuid4()), orjson.dumps(deals(200))
    before = stored(api)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=hub.url, timeout=30, trust_env=False) as client:
            return client.post(
                EVENTS, content=body, headers={"content-type": BATCH, "idempotency-key": key}
            )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    accepted = [a for a in answers if a.status_code == 202]
    assert accepted, [a.text for a in answers]
    assert len({a.content for a in accepted}) == 1
    for refused in (a for a in answers if a.status_code != 202):
        problem = problem_of(refused, 409)
        assert problem["type"].endswith("/idempotency-key-in-flight")
    assert stored(api) == (before[0] + 200, before[1] + 200)


def test_the_catalog_lists_the_governed_integration(api: httpx.Client) -> None:
    response = api.get("/v1/integrations")
    assert response.status_code == 200
    [integration] = response.json()["integrations"]
    assert integration["name"] == "deal-to-erp-order"
    assert (integration["owner"], integration["tier"]) == ("sales-ops", "revenue-critical")
    assert (integration["source"], integration["targets"]) == ("crm/deal.closed", ["erp"])
    assert integration["slo"]["objective"] == 99.9
