"""The ingest service: what the API (and anything else that takes events) calls."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from charter.errors import BadRequest, IdempotencyKeyInFlight, IdempotencyKeyReused
from charter.governance.drift import DriftRecorder, DriftTally
from charter.hub.commit import GroupCommitter
from charter.hub.parsing import IngestLimits, parse_body
from charter.hub.routing import Router
from charter.store import IdempotencyRecord, IngestBatch, IngestResult, NewEvent, Store

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True)
class IngestAnswer:
    """The answer to an ingest request: status code and JSON body."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class IngestService:
    """Takes a request's events into the log, durably, exactly once per event.

    Contract: returns only after the events and their deliveries are committed;
    a refused request stores nothing. The same ``Idempotency-Key`` with the same
    body gets the first answer again; with another body it is refused (422);
    while the first request is still being processed, the second gets 409.
    """

    def __init__(
        self,
        router: Router,
        store: Store,
        limits: IngestLimits | None = None,
        annotate: Callable[[list[NewEvent], list[Any]], list[NewEvent]] | None = None,
        drift: DriftRecorder | None = None,
    ) -> None:
        """``annotate`` adds what the events mean to processes (see ``engine.triggers``);
        ``drift`` counts payload drift and refused writes (one for ``store`` by default)."""
        self.router = router
        self.drift = drift if drift is not None else DriftRecorder(store, router.project)
        self.annotate = annotate
        self.store = store
        self.limits = limits or IngestLimits()
        self.committer: GroupCommitter[IngestBatch, IngestResult] = GroupCommitter(store.append)
        self._in_flight: set[tuple[str, str]] = set()
        self._in_flight_lock = threading.Lock()

    @contextmanager
    def _claim_key(self, system: str, key: str) -> Iterator[None]:
        with self._in_flight_lock:
            if (system, key) in self._in_flight:
                raise IdempotencyKeyInFlight(
                    f"a request with Idempotency-Key {key!r} is still being processed",
                    fix="wait for its answer, then retry with the same key",
                )
            self._in_flight.add((system, key))
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight.discard((system, key))

    def ingest(
        self,
        system: str,
        body: bytes,
        content_type: str | None,
        idempotency_key: str | None = None,
    ) -> IngestAnswer:
        self.router.check_system(system)
        if idempotency_key is None:
            return self._ingest(system, body, content_type, None)
        if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise BadRequest(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                fix="send a UUID as the key",
            )
        request_hash = hashlib.sha256(body).hexdigest()
        with self._claim_key(system, idempotency_key):
            if self.store.find_idempotency_record(system, idempotency_key) is not None:
                return self._replay(system, idempotency_key, request_hash)
            return self._ingest(system, body, content_type, (idempotency_key, request_hash))

    def _ingest(
        self,
        system: str,
        body: bytes,
        content_type: str | None,
        idempotency: tuple[str, str] | None,
    ) -> IngestAnswer:
        events = parse_body(body, content_type, self.limits)
        batch = body.lstrip()[:1] == b"["
        tally = DriftTally()
        try:
            prepared = self.router.prepare(system, events, batch, tally)
        finally:
            # Refused requests count too: drift and refused writes are what they show.
            self.drift.add(tally)
        if self.annotate is not None:
            prepared = self.annotate(prepared, [e.data for e in events])
        answer = {
            "accepted": len(prepared),
            "ids": [e.id for e in prepared],
        }
        record = None
        if idempotency is not None:
            record = IdempotencyRecord(
                system=system,
                key=idempotency[0],
                request_hash=idempotency[1],
                status_code=202,
                response=orjson.dumps(answer).decode(),
            )
        # Events already in the log (a client's retry) are acknowledged again with
        # the same ids and stored once; the answer does not tell them apart, so a
        # replayed answer is identical to the first.
        result = self.committer.append(IngestBatch(prepared, record))
        if result.key_taken and idempotency is not None:
            # Another process took the key between our look-up and our commit.
            return self._replay(system, idempotency[0], idempotency[1])
        return IngestAnswer(202, answer)

    def _replay(self, system: str, key: str, request_hash: str) -> IngestAnswer:
        record = self.store.find_idempotency_record(system, key)
        assert record is not None, "a taken key has a record"
        if record.request_hash != request_hash:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used with another body",
                fix="use a new key for a new request",
            )
        return IngestAnswer(record.status_code, orjson.loads(record.response), True)

    def close(self) -> None:
        self.committer.close()
        self.drift.close()
