"""The floor and the ceiling on every wait after a failure (teckochecker.retry.backoff_delay): whatever the
vendor's hint, the next try waits at least WAIT_FLOOR, longer as failures go on, and at most RETRY_AFTER_MAX.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
from clock import FakeClock

from teckochecker.account_throttle import AccountThrottle
from teckochecker.retry import (
    BACKOFF_CAP,
    RETRY_AFTER_MAX,
    WAIT_FLOOR,
    backoff_delay,
    parse_retry_after,
)

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
# What hostile or broken vendors send; each must end in a wait no shorter than the floor.
SHORT_HINTS = {
    "retry-after 0": {"retry-after": "0"},
    "retry-after-ms 0": {"retry-after-ms": "0"},
    "retry-after-ms 1": {"retry-after-ms": "1"},
    "negative": {"retry-after": "-30"},
    "date in the past": {"retry-after": "Thu, 01 Jan 2026 11:59:57 GMT"},
    "date now": {"retry-after": "Thu, 01 Jan 2026 12:00:00 GMT"},
    "unparsable": {"retry-after": "soon"},
    "nan": {"retry-after": "nan"},
    "none": {},
}


@pytest.mark.parametrize("hint", SHORT_HINTS.values(), ids=SHORT_HINTS.keys())
def test_no_hint_shortens_the_wait_below_the_floor(hint: dict[str, str]) -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        delay = backoff_delay(attempt, parse_retry_after(hint, now=NOW), rng=rng)
        assert WAIT_FLOOR <= delay <= BACKOFF_CAP


def test_a_nan_hint_is_no_hint() -> None:
    assert WAIT_FLOOR <= backoff_delay(1, float("nan"), rng=random.Random(1)) <= 1.0


def test_the_wait_grows_with_consecutive_failures_even_when_the_vendor_says_zero() -> None:
    rng = random.Random(3)
    first = [backoff_delay(1, 0.0, rng=rng) for _ in range(200)]
    eighth = [backoff_delay(8, 0.0, rng=rng) for _ in range(200)]
    assert max(first) == WAIT_FLOOR  # the first step's own back-off is under a second: the floor holds
    assert sum(eighth) / len(eighth) > 20  # full jitter up to 60 s: about 30 s on average
    assert max(eighth) <= BACKOFF_CAP


def test_a_longer_vendor_wait_is_honoured_up_to_the_ceiling() -> None:
    rng = random.Random(5)
    assert backoff_delay(1, 42.0, rng=rng) == 42.0
    assert backoff_delay(1, RETRY_AFTER_MAX - 1, rng=rng) == RETRY_AFTER_MAX - 1
    assert backoff_delay(1, 30 * 24 * 3600.0, rng=rng) == RETRY_AFTER_MAX
    assert backoff_delay(1, float("inf"), rng=rng) == RETRY_AFTER_MAX
    far = parse_retry_after({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}, now=NOW)
    assert backoff_delay(1, far, rng=rng) == RETRY_AFTER_MAX


def test_an_account_told_zero_forever_sends_at_most_one_request_a_second() -> None:
    """The account throttle with an injected clock: ask whenever it allows, get ``retry-after: 0`` each time."""
    clock = FakeClock()
    throttle = AccountThrottle(clock.monotonic, random.Random(11))
    sent: list[float] = []
    end = clock.monotonic() + 120
    while clock.monotonic() < end:
        if throttle.remaining() is None:
            sent.append(clock.monotonic())
            throttle.failed("HTTP 429", parse_retry_after({"retry-after": "0"}, now=clock.now()))
        clock.advance(0.01)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= WAIT_FLOOR - 0.011  # the tick of this loop is 10 ms
    assert len(sent) <= 20  # the back-off grows: far fewer than 120 in two minutes


def test_a_failure_in_flight_while_waiting_never_shortens_the_wait() -> None:
    clock = FakeClock()
    throttle = AccountThrottle(clock.monotonic, random.Random(2))
    first = throttle.failed("HTTP 429", 30.0)
    clock.advance(1)
    assert throttle.failed("HTTP 429", 0.0) == pytest.approx(first - 1)
