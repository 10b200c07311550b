"""Retry decisions: backoff ceilings, full jitter, dead letters and Retry-After."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from charter.catalog import RetryPolicy
from charter.delivery import backoff_delay, decide
from charter.errors import RateLimited, TargetRejected, TargetUnavailable
from charter.store import Outcome

POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=6.0, multiplier=2.0)
UNAVAILABLE = TargetUnavailable("erp answered 503", status_code=503, error_class="http_503")
REJECTED = TargetRejected("erp answered 422: bad currency", status_code=422)


class Ceiling(random.Random):
    """Draws the top of every jitter range, so the ceiling itself is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Floor(random.Random):
    """Draws the bottom of every jitter range."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_the_ceiling_doubles_per_attempt_until_the_cap() -> None:
    ceilings = [backoff_delay(POLICY, attempt, Ceiling()) for attempt in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]


def test_the_multiplier_sets_the_growth() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=100.0, multiplier=3.0)
    assert [backoff_delay(policy, n, Ceiling()) for n in (1, 2, 3, 4, 5)] == [
        1.0,
        3.0,
        9.0,
        27.0,
        81.0,
    ]


def test_full_jitter_can_draw_no_wait_at_all() -> None:
    assert backoff_delay(POLICY, 4, Floor()) == 0.0


@given(
    attempt=st.integers(min_value=1, max_value=100),
    initial=st.floats(min_value=0.001, max_value=10.0),
    cap=st.floats(min_value=0.001, max_value=600.0),
    multiplier=st.floats(min_value=1.0, max_value=4.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_stays_between_zero_and_the_ceiling(
    attempt: int, initial: float, cap: float, multiplier: float, seed: int
) -> None:
    policy = RetryPolicy(initial_backoff=initial, max_backoff=cap, multiplier=multiplier)
    ceiling = min(cap, initial * multiplier ** (attempt - 1))
    delay = backoff_delay(policy, attempt, random.Random(seed))
    assert 0.0 <= delay <= ceiling


def test_jitter_spreads_retries_out() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(POLICY, 5, rng) for _ in range(200)]
    assert len(set(delays)) == 200
    assert min(delays) < 1.0 and max(delays) > 5.0


def test_a_steep_multiplier_is_capped_instead_of_overflowing() -> None:
    policy = RetryPolicy(max_attempts=100, initial_backoff=1.0, max_backoff=60.0, multiplier=10_000)
    assert backoff_delay(policy, 99, Ceiling()) == 60.0


def test_success_is_delivered() -> None:
    decision = decide(POLICY, 1, None, random.Random(1))
    assert decision.outcome is Outcome.DELIVERED
    assert decision.reason is None


def test_a_retryable_error_is_retried_within_the_backoff() -> None:
    decision = decide(POLICY, 3, UNAVAILABLE, random.Random(1))
    assert decision.outcome is Outcome.RETRY
    assert 0.0 <= decision.delay <= 2.0
    assert decision.reason == "erp answered 503"


def test_a_rejection_is_dead_at_the_first_attempt_with_the_reason() -> None:
    decision = decide(POLICY, 1, REJECTED, random.Random(1))
    assert decision.outcome is Outcome.DEAD
    assert decision.reason == "not retryable: erp answered 422: bad currency"


def test_the_last_attempt_is_dead_and_the_one_before_is_not() -> None:
    assert decide(POLICY, 4, UNAVAILABLE, random.Random(1)).outcome is Outcome.RETRY
    decision = decide(POLICY, 5, UNAVAILABLE, random.Random(1))
    assert decision.outcome is Outcome.DEAD
    assert decision.reason == "gave up after 5 attempts: erp answered 503"


def test_a_single_attempt_policy_never_retries() -> None:
    policy = RetryPolicy(max_attempts=1)
    assert decide(policy, 1, UNAVAILABLE, random.Random(1)).outcome is Outcome.DEAD


def test_retry_after_longer_than_the_backoff_is_the_delay() -> None:
    limited = RateLimited("erp answered 429", retry_after=30.0)
    decision = decide(POLICY, 1, limited, Ceiling())
    assert decision.outcome is Outcome.RETRY
    assert decision.delay == 30.0


def test_retry_after_is_a_minimum_not_a_replacement() -> None:
    limited = RateLimited("erp answered 429", retry_after=0.1)
    assert decide(POLICY, 4, limited, Ceiling()).delay == 4.0
    assert decide(POLICY, 4, limited, Floor()).delay == 0.1


def test_rate_limited_without_retry_after_backs_off() -> None:
    limited = RateLimited("erp answered 429", retry_after=None)
    assert decide(POLICY, 2, limited, Ceiling()).delay == 1.0


def test_a_rate_limit_on_the_last_attempt_is_dead() -> None:
    limited = RateLimited("erp answered 429", retry_after=1.0)
    assert decide(POLICY, 5, limited, Ceiling()).outcome is Outcome.DEAD
