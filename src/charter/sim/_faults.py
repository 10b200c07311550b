"""Runtime fault injection for a simulated target: outage, internal errors, latency, rate limit.

The faults are a frozen dataclass replaced as a whole on every change, so a
request sees one consistent set. A simulator with faults of its own (a decline
rate, a dispatch hold) subclasses `Faults` and adds its fields to the options.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Generic, TypeVar

from starlette.responses import Response

from charter.sim._http import Option, is_integer, is_number, parse_options, problem


@dataclass(frozen=True)
class Faults:
    """The misbehaviour currently injected into a simulator's business endpoints."""

    outage: bool = False
    error_rate: float = 0.0
    latency_ms: int = 0
    rate_limit_per_s: int | None = None
    retry_after_s: float = 1.0


FAULT_OPTIONS: Mapping[str, Option] = {
    "outage": Option(lambda v: isinstance(v, bool), "true or false"),
    "error_rate": Option(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "latency_ms": Option(lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "rate_limit_per_s": Option(lambda v: v is None or (is_integer(v) and v >= 0), "null or >= 0"),
    "retry_after_s": Option(lambda v: is_number(v) and v >= 0, "a number >= 0"),
}

F = TypeVar("F", bound=Faults)


class FaultInjector(Generic[F]):
    """Holds the current faults and decides, request by request, which one strikes.

    ``initial`` is what ``clear`` goes back to; ``rng`` draws the ``error_rate``
    failures and ``clock`` drives the one-second rate-limit window.
    """

    def __init__(
        self,
        system: str,
        initial: F,
        options: Mapping[str, Option],
        *,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self._system = system
        self._initial = initial
        self._options = options
        self._clock = clock
        self._window_second = 0
        self._window_count = 0
        self.rng = rng
        self.current = initial

    def strike(self) -> Response | None:
        """The problem to answer a business request with, or None to serve it."""
        faults = self.current
        if faults.outage:
            return problem(
                503, "outage", "Service unavailable", f"the {self._system} is down (injected)"
            )
        if faults.rate_limit_per_s is not None and not self._take_rate_slot(
            faults.rate_limit_per_s
        ):
            return problem(
                429,
                "rate-limited",
                "Too many requests",
                f"over {faults.rate_limit_per_s} requests per second (injected)",
                headers={"Retry-After": f"{faults.retry_after_s:g}"},
            )
        if faults.error_rate and self.rng.random() < faults.error_rate:
            return problem(500, "internal-error", "Internal error", "injected internal error")
        return None

    def _take_rate_slot(self, limit: int) -> bool:
        second = int(self._clock())
        if second != self._window_second:
            self._window_second, self._window_count = second, 0
        self._window_count += 1
        return self._window_count <= limit

    async def delay(self) -> None:
        """Wait for the injected latency, if any."""
        if self.current.latency_ms:
            await asyncio.sleep(self.current.latency_ms / 1000)

    def change(self, body: Any) -> F:
        """Merge an options object into the faults; raises `BodyError` naming a bad field."""
        self.current = replace(self.current, **parse_options(body, self._options))
        return self.current

    def clear(self) -> F:
        """Go back to the faults the simulator started with."""
        self.current = self._initial
        return self.current

    def describe(self) -> dict[str, Any]:
        """The current faults as a JSON object."""
        return asdict(self.current)
