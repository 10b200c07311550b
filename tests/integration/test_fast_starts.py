"""The plain ASGI start path in front of the API: it answers well-formed starts as the
route would, and hands everything else to the app, whose problem+json answers stay."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from charter.api import create_app
from charter.api.processes import FastStarts
from charter.runtime import Hub

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "order-to-cash"
START = "/v1/processes/order-to-cash/instances"
DEAL = {"id": "D-1", "account": {"id": "A-1", "name": "Acme"}, "amount": 10.0, "currency": "EUR"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    project = tmp_path / "o2c"
    shutil.copytree(EXAMPLE, project)
    opened = Hub.open(project, database=f"sqlite:///{tmp_path / 'charter.db'}")
    yield opened
    opened.close()


class Counting:
    """The app behind the fast path, counting the requests handed to it."""

    def __init__(self, hub: Hub) -> None:
        self.app = create_app(hub)
        self.handed: list[str] = []

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "http":
            self.handed.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)  # type: ignore[arg-type]


def test_well_formed_starts_are_answered_in_front_and_the_rest_by_the_app(hub: Hub) -> None:
    behind = Counting(hub)
    front = FastStarts(behind, hub)  # type: ignore[arg-type]

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=front)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            first = await client.post(START, json={"business_key": "D-1", "input": DEAL})
            again = await client.post(START, json={"business_key": "D-1", "input": DEAL})
            assert (first.status_code, first.json()["created"]) == (201, True)
            assert (again.status_code, again.json()) == (
                200,
                {"id": first.json()["id"], "created": False},
            )
            assert behind.handed == []

            # A body sent in pieces is read whole.
            async def pieces() -> object:
                body = orjson.dumps({"business_key": "D-2", "input": DEAL})
                for start in range(0, len(body), 7):
                    yield body[start : start + 7]

            chunked = await client.post(START, content=pieces())
            assert chunked.status_code == 201 and behind.handed == []

            # What does not validate goes to the app, with its body, for its problem+json.
            bad = await client.post(START, json={"input": DEAL})
            assert bad.status_code == 422
            assert bad.headers["content-type"] == "application/problem+json"
            assert "business_key" in bad.text
            unknown = await client.post(
                "/v1/processes/no-such/instances", json={"business_key": "x", "input": {}}
            )
            assert unknown.status_code == 404
            assert unknown.headers["content-type"] == "application/problem+json"
            listed = await client.get(
                "/v1/processes/instances", params={"process": "order-to-cash"}
            )
            assert listed.status_code == 200
            keys = sorted(row["business_key"] for row in listed.json()["instances"])
            assert keys == ["D-1", "D-2"]
            assert behind.handed == [
                f"POST {START}",
                "POST /v1/processes/no-such/instances",
                "GET /v1/processes/instances",
            ]

    asyncio.run(scenario())
