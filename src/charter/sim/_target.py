"""What every simulated target shares: effects applied once per Idempotency-Key, honest
counters, injected faults and the ``/admin`` endpoints that show and steer them.

A business write goes through `Target.idempotent`:

    fault? -> answer it (or reset the connection) | no key? -> 400 | bad body? -> 400/422
    -> hold the key's lock -> look the key up -> (injected latency) ->
       new key: apply, remember the outcome | same body: replay it | other body: 422
    -> the answer's body trickled, when that fault is set

A simulator supplies its state (created anew by a reset) and, per endpoint, a
parser and an apply function; either may raise `Refused` for a business refusal,
which is answered as problem+json, counted as rejected and *not* remembered, so
the same key may be used again once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from charter.sim._faults import FaultInjector, Faults
from charter.sim._http import (
    PROBLEM_MEDIA_TYPE,
    BodyError,
    JSONAnswer,
    Option,
    json_type,
    problem,
    problem_body,
    read_json,
)

S = TypeVar("S")
F = TypeVar("F", bound=Faults)
T = TypeVar("T")


class Refused(Exception):
    """A business request the system refuses: answered as problem+json, counted as rejected."""

    def __init__(self, status: int, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail

    def answer(self) -> Response:
        return problem(self.status, self.slug, self.title, self.detail)


def any_body(body: Any) -> Any:
    """Accept any body, for a write whose path says all it needs."""
    return body


@dataclass(frozen=True)
class Shape:
    """The required fields of a business body; `check` refuses anything else with a 422.

    ``name`` names the thing in messages and in the problem type
    (``invalid-<name>``); fields not listed are allowed and kept.
    """

    name: str
    fields: Mapping[str, Option]

    def check(self, body: Any) -> dict[str, Any]:
        """Return ``body`` if it is an object whose listed fields are all acceptable."""
        if not isinstance(body, dict):
            self._refuse(f"the {self.name} must be a JSON object, got {json_type(body)}")
        for name, option in self.fields.items():
            if not option.accepts(body.get(name)):
                self._refuse(f"'{name}' must be {option.expected}, got {body.get(name)!r}")
        return body

    def _refuse(self, detail: str) -> NoReturn:
        slug = "invalid-" + self.name.replace(" ", "-")
        raise Refused(422, slug, f"Invalid {self.name}", detail)


@dataclass(frozen=True)
class Outcome:
    """The final answer to a business write, remembered under its Idempotency-Key.

    ``applied`` is False for an answer that changed nothing but is final all the
    same, such as a card decline: it is replayed, not counted as an effect.
    """

    status: int
    body: dict[str, Any]
    applied: bool = True
    media_type: str = "application/json"

    @classmethod
    def refusal(cls, status: int, slug: str, title: str, detail: str) -> Outcome:
        """A final problem+json answer that applied nothing."""
        body = problem_body(status, slug, title, detail)
        return cls(status, body, applied=False, media_type=PROBLEM_MEDIA_TYPE)

    def answer(self, *, replayed: bool = False) -> Response:
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return JSONAnswer(
            self.body, status_code=self.status, headers=headers, media_type=self.media_type
        )


@dataclass
class Ledger(Generic[S]):
    """A simulator's state with its idempotency records and counters; a reset replaces it."""

    state: S
    # key -> (fingerprint of the request, remembered outcome)
    outcomes: dict[str, tuple[bytes, Outcome]] = field(default_factory=dict)
    # Counted apart from `outcomes` so that a broken dedupe shows up in the report
    # instead of being hidden by the very table it would have bypassed.
    applies_per_key: dict[str, int] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    faulted: int = 0

    def report(self) -> dict[str, int]:
        return {
            "received": self.received,
            "applied": sum(self.applies_per_key.values()),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "faulted": self.faulted,
            "keys": len(self.applies_per_key),
            "applied_more_than_once": sum(1 for n in self.applies_per_key.values() if n > 1),
        }


class _KeyLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _KeyLocks:
    """One asyncio lock per idempotency key, dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, _KeyLock] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]


def _fingerprint(request: Request, body: Any) -> bytes:
    # The method and path belong to the request: a key reused on another endpoint is a misuse.
    return orjson.dumps([request.method, request.url.path, body], option=orjson.OPT_SORT_KEYS)


class Target(Generic[S, F]):
    """Runs a simulated target's business requests and serves its ``/admin`` endpoints.

    ``new_state`` makes the simulator's business state, at start and on
    ``POST /admin/reset``; ``extra_report`` adds the simulator's own counters
    to ``GET /admin/report``; ``on_fault_change`` hears every change of faults.
    It does not validate business bodies or decide outcomes: the endpoint's
    parser and apply function do.
    """

    def __init__(
        self,
        system: str,
        new_state: Callable[[], S],
        *,
        faults: F,
        fault_options: Mapping[str, Option],
        rng: random.Random,
        clock: Callable[[], float],
        extra_report: Callable[[S], Mapping[str, Any]] | None = None,
        on_fault_change: Callable[[F], None] | None = None,
    ) -> None:
        self._new_state = new_state
        self._extra_report = extra_report
        self._on_fault_change = on_fault_change
        self._locks = _KeyLocks()
        self.faults = FaultInjector(system, faults, fault_options, rng=rng, clock=clock)
        self.ledger = Ledger(new_state())

    # -- business requests -----------------------------------------------------------

    def _admit(self) -> Response | None:
        """Count a business request and return the injected fault to answer with, if any."""
        self.ledger.received += 1
        fault = self.faults.strike()
        if fault is not None:
            self.ledger.faulted += 1
        return fault

    def _reject(self, status: int, slug: str, title: str, detail: str) -> Response:
        self.ledger.rejected += 1
        return problem(status, slug, title, detail)

    async def idempotent(
        self,
        request: Request,
        parse: Callable[[Any], T],
        apply: Callable[[S, str, T], Outcome],
    ) -> Response:
        """Apply a business write once per Idempotency-Key and answer it.

        ``parse`` turns the decoded JSON body (None when there is none) into
        what ``apply`` takes; ``apply`` runs under the key's lock with the state,
        the key and that value, and returns the outcome to remember. The answer
        is trickled when the faults say so.
        """
        return self.faults.shape(await self._idempotent(request, parse, apply))

    async def _idempotent(
        self,
        request: Request,
        parse: Callable[[Any], T],
        apply: Callable[[S, str, T], Outcome],
    ) -> Response:
        fault = self._admit()
        if fault is not None:
            await self.faults.delay()
            return fault
        key = request.headers.get("idempotency-key")
        if not key:
            await self.faults.delay()
            return self._reject(
                400,
                "idempotency-key-missing",
                "Idempotency-Key required",
                f"{request.method} {request.url.path} needs an Idempotency-Key header",
            )
        try:
            raw = await request.body()
            body = read_json(raw) if raw else None
            value = parse(body)
        except BodyError as exc:
            await self.faults.delay()
            return self._reject(400, "bad-request", "Bad request", str(exc))
        except Refused as refused:
            await self.faults.delay()
            self.ledger.rejected += 1
            return refused.answer()
        fingerprint = _fingerprint(request, body)
        async with self._locks.hold(key):
            ledger = self.ledger
            stored = ledger.outcomes.get(key)
            # Injected latency is processing time between the key lookup and the commit,
            # as in a real system: only the per-key lock keeps a concurrent retry from
            # applying the effect again, and a client that gives up early leaves an
            # applied effect behind.
            await self.faults.delay()
            if stored is None:
                try:
                    outcome = apply(ledger.state, key, value)
                except Refused as refused:
                    ledger.rejected += 1
                    return refused.answer()
                ledger.outcomes[key] = (fingerprint, outcome)
                if outcome.applied:
                    ledger.applies_per_key[key] = ledger.applies_per_key.get(key, 0) + 1
                return outcome.answer()
            if stored[0] != fingerprint:
                ledger.rejected += 1
                return problem(
                    422,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    f"Idempotency-Key {key!r} was first used with another request",
                )
            ledger.duplicates += 1
            return stored[1].answer(replayed=True)

    async def read(self, request: Request, answer: Callable[[S], Any]) -> Response:
        """Answer a business read with ``answer(state)`` as JSON; it may raise `Refused`."""
        response = self._admit()
        if response is None:
            try:
                response = JSONAnswer(answer(self.ledger.state))
            except Refused as refused:
                self.ledger.rejected += 1
                response = refused.answer()
        await self.faults.delay()
        return self.faults.shape(response)

    # -- admin endpoints (never faulted) ------------------------------------------------

    async def report(self, request: Request) -> Response:
        ledger = self.ledger
        extra = self._extra_report(ledger.state) if self._extra_report else {}
        return JSONAnswer({**ledger.report(), **extra})

    async def applied(self, request: Request) -> Response:
        return JSONAnswer(list(self.ledger.applies_per_key))

    async def reset(self, request: Request) -> Response:
        self.ledger = Ledger(self._new_state())
        return await self.report(request)

    def admin_routes(self, *, reset: bool = True) -> list[Route]:
        """The admin routes: report, applied keys, faults and, if asked, reset."""
        routes = [
            Route("/admin/report", self.report, methods=["GET"]),
            Route("/admin/applied", self.applied, methods=["GET"]),
            *self.faults.routes(self._on_fault_change),
        ]
        if reset:
            routes.append(Route("/admin/reset", self.reset, methods=["POST"]))
        return routes
