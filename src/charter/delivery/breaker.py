"""Circuit breakers per target system (or endpoint): closed, open, half-open. Pure core.

    closed --(N consecutive failures, or error rate over a window)--> open
    open --(open_for passed; one caller claims the probe)--> half-open
    half-open --(the probe succeeds)--> closed
    half-open --(the probe fails, or its owner never reports)--> open

The state is shared by every worker (see :mod:`charter.delivery.shared`): the
probe is claimed in the shared state, so at most one probe goes out per
half-open interval in total. Each worker counts its outcomes locally and
folds them into the shared state in batches (:func:`observe`), so a closed
breaker costs no round trip per call. Every change of state is returned as a
:class:`Transition` for the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from charter.catalog.model import Breaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open (see the catalog's ``Breaker``)."""

    failures: int = 5
    error_rate: float = 0.5
    min_calls: int = 20
    window: float = 10.0
    open_for: float = 5.0
    # How long a probe may take before another caller may probe instead.
    probe_timeout: float = 35.0

    @classmethod
    def of(cls, breaker: Breaker, probe_timeout: float) -> BreakerPolicy:
        return cls(
            breaker.failures,
            breaker.error_rate,
            breaker.min_calls,
            breaker.window,
            breaker.open_for,
            probe_timeout,
        )


@dataclass(frozen=True)
class Tally:
    """Outcomes one worker saw since it last reported, in order-insensitive form."""

    successes: int = 0
    failures: int = 0
    # Failures since this worker's last success (all of them if it saw none).
    trailing_failures: int = 0
    last_error: str | None = None

    def __bool__(self) -> bool:
        return bool(self.successes or self.failures)


@dataclass(frozen=True)
class BreakerRecord:
    """The shared state of one breaker (``Breaker`` is the catalog's settings)."""

    state: BreakerState = BreakerState.CLOSED
    since: float = 0.0
    consecutive: int = 0
    window_start: float = 0.0
    calls: int = 0
    failures: int = 0
    probe_owner: str | None = None
    probe_until: float = 0.0
    last_error: str | None = None
    # When it last opened from closed: how long the target has been failing.
    opened_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": self.since,
            "consecutive": self.consecutive,
            "window_start": self.window_start,
            "calls": self.calls,
            "failures": self.failures,
            "probe_owner": self.probe_owner,
            "probe_until": self.probe_until,
            "last_error": self.last_error,
            "opened_at": self.opened_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BreakerRecord:
        return cls(
            state=BreakerState(data["state"]),
            since=float(data["since"]),
            consecutive=int(data["consecutive"]),
            window_start=float(data["window_start"]),
            calls=int(data["calls"]),
            failures=int(data["failures"]),
            probe_owner=data.get("probe_owner"),
            probe_until=float(data.get("probe_until", 0.0)),
            last_error=data.get("last_error"),
            opened_at=float(data.get("opened_at", 0.0)),
        )

    def reopens_at(self, policy: BreakerPolicy) -> float:
        """When a caller may next try a probe (meaningful when not closed)."""
        if self.state is BreakerState.HALF_OPEN:
            return self.probe_until
        return self.since + policy.open_for


@dataclass(frozen=True)
class Transition:
    """One change of a breaker's state, as recorded and shown."""

    key: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    reason: str
    worker: str


def _move(
    record: BreakerRecord, key: str, to: BreakerState, now: float, reason: str, worker: str
) -> tuple[BreakerRecord, Transition]:
    moved = replace(
        record,
        state=to,
        since=now,
        consecutive=0,
        window_start=now,
        calls=0,
        failures=0,
        probe_owner=None,
        probe_until=0.0,
    )
    return moved, Transition(key, record.state, to, now, reason, worker)


def observe(
    record: BreakerRecord,
    policy: BreakerPolicy,
    key: str,
    tally: Tally,
    worker: str,
    now: float,
) -> tuple[BreakerRecord, list[Transition]]:
    """Fold one worker's outcomes into a breaker. Pure.

    Only a closed breaker counts outcomes: calls that were in flight when it
    opened say nothing about the probe, which alone closes it.
    """
    if record.state is not BreakerState.CLOSED or not tally:
        return record, []
    if now - record.window_start > policy.window:
        record = replace(record, window_start=now, calls=0, failures=0)
    consecutive = (
        tally.trailing_failures if tally.successes else record.consecutive + tally.failures
    )
    record = replace(
        record,
        consecutive=consecutive,
        calls=record.calls + tally.successes + tally.failures,
        failures=record.failures + tally.failures,
        last_error=tally.last_error or record.last_error,
    )
    reason = None
    if record.consecutive >= policy.failures:
        reason = f"{record.consecutive} consecutive failures"
    elif record.calls >= policy.min_calls and record.failures / record.calls >= policy.error_rate:
        reason = (
            f"{record.failures} of {record.calls} calls failed in {now - record.window_start:.1f} s"
        )
    if reason is None:
        return record, []
    if record.last_error:
        reason += f"; last: {record.last_error[:200]}"
    opened, transition = _move(record, key, BreakerState.OPEN, now, reason, worker)
    return replace(opened, last_error=record.last_error, opened_at=now), [transition]


@dataclass(frozen=True)
class Admission:
    """May a call go now? ``probe``: it is the half-open probe; else wait until ``retry_at``."""

    allowed: bool
    probe: bool = False
    retry_at: float = 0.0


def admit(
    record: BreakerRecord, policy: BreakerPolicy, key: str, worker: str, now: float
) -> tuple[BreakerRecord, Admission, list[Transition]]:
    """Let a call through a breaker, or claim its one probe, or say when to come back. Pure."""
    if record.state is BreakerState.CLOSED:
        return record, Admission(True), []
    if record.state is BreakerState.HALF_OPEN and record.probe_until > now:
        # A probe is out (perhaps this worker's): everyone else waits for its verdict,
        # looking again within an open interval rather than the probe's whole timeout.
        retry_at = min(record.probe_until, now + policy.open_for)
        return record, Admission(False, retry_at=retry_at), []
    if record.state is BreakerState.OPEN and now < record.since + policy.open_for:
        return record, Admission(False, retry_at=record.since + policy.open_for), []
    reason = (
        f"probe after {policy.open_for:g} s open"
        if record.state is BreakerState.OPEN
        else "the last probe never reported; probing again"
    )
    half, transition = _move(record, key, BreakerState.HALF_OPEN, now, reason, worker)
    half = replace(
        half,
        probe_owner=worker,
        probe_until=now + policy.probe_timeout,
        last_error=record.last_error,
        opened_at=record.opened_at,
    )
    transitions = [transition] if record.state is not BreakerState.HALF_OPEN else []
    return half, Admission(True, probe=True), transitions


def probe_result(
    record: BreakerRecord,
    policy: BreakerPolicy,
    key: str,
    worker: str,
    ok: bool,
    error: str | None,
    now: float,
) -> tuple[BreakerRecord, list[Transition]]:
    """The probe ``worker`` claimed ended: success closes the breaker, failure reopens it. Pure.

    A result from a worker that no longer owns the probe (it took too long and
    another worker probes now) changes nothing.
    """
    if record.state is not BreakerState.HALF_OPEN or record.probe_owner != worker:
        return record, []
    if ok:
        closed, transition = _move(record, key, BreakerState.CLOSED, now, "probe succeeded", worker)
        return replace(closed, last_error=None, opened_at=0.0), [transition]
    reason = f"probe failed: {(error or 'error')[:200]}"
    opened, transition = _move(record, key, BreakerState.OPEN, now, reason, worker)
    return replace(opened, last_error=error, opened_at=record.opened_at), [transition]
