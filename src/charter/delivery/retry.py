"""Retry decisions: exponential backoff with full jitter, ``Retry-After``, dead letters. Pure."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from charter.catalog.model import RetryPolicy
from charter.errors import CharterError, RateLimited
from charter.store import Outcome


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_backoff, initial * multiplier ** (attempt - 1))]."""
    try:
        growth = policy.multiplier ** (attempt - 1)
    except OverflowError:
        growth = math.inf
    ceiling = min(policy.max_backoff, policy.initial_backoff * growth)
    return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    delay: float = 0.0
    reason: str | None = None


def decide(
    policy: RetryPolicy, attempt: int, error: CharterError | None, rng: random.Random
) -> Decision:
    """What to do after attempt ``attempt`` (1-based) ended with ``error`` (None: success)."""
    if error is None:
        return Decision(Outcome.DELIVERED)
    if not error.retryable:
        return Decision(Outcome.DEAD, reason=f"not retryable: {error.detail}")
    if attempt >= policy.max_attempts:
        return Decision(Outcome.DEAD, reason=f"gave up after {attempt} attempts: {error.detail}")
    delay = backoff_delay(policy, attempt, rng)
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return Decision(Outcome.RETRY, delay=delay, reason=error.detail)
