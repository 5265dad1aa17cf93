"""One vendor account's back-off, shared by every job that watches that account (OpenAI, Anthropic, ...).

Rate limits are per account (organization/project), not per job: when any request of the account gets a
429, a 5xx or no usable answer, every job of the account waits together, for the vendor's ``Retry-After``
or else for an exponential back-off with jitter (1 s → 60 s), and sends nothing meanwhile. Failures that
arrive while the account is already waiting (answers to requests that were in flight) are the same
incident: they may lengthen the wait but do not count as another attempt.

The throttle also bounds how many single-batch requests of the account are in flight, so a 429 stops the
rest of a check's requests instead of arriving after all of them were sent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from teckochecker.retry import backoff_delay

# Single-batch requests of one account in flight at once (the daemon's default outbound bound is 10 too).
MAX_IN_FLIGHT = 10


class AccountThrottle:
    def __init__(self, monotonic: Callable[[], float], rng: random.Random | None = None) -> None:
        self._monotonic = monotonic
        self._rng = rng
        self._attempt = 0
        self._until: float | None = None
        self._reason = ""
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    def remaining(self) -> float | None:
        """Seconds the account still has to wait, or None when it may send."""
        if self._until is None:
            return None
        left = self._until - self._monotonic()
        return left if left > 0 else None

    @property
    def reason(self) -> str:
        """Why the account is waiting: the failure that started the back-off."""
        return self._reason

    def failed(self, reason: str, retry_after: float | None = None) -> float:
        """Put the account into back-off after a failed request; returns the seconds to wait."""
        now = self._monotonic()
        waiting = self.remaining() is not None
        if not waiting:
            self._attempt += 1
            self._reason = reason
        until = now + backoff_delay(self._attempt, retry_after, rng=self._rng)
        self._until = max(until, self._until or until) if waiting else until
        return self._until - now

    def succeeded(self) -> None:
        """A request got a real answer: the next failure starts the back-off from its first step again."""
        if self.remaining() is None:
            self._attempt = 0

    @property
    def in_flight(self) -> asyncio.Semaphore:
        """Hold this while sending one single-batch request, and check ``remaining()`` once holding it."""
        return self._in_flight
