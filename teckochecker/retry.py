"""Back-off and Retry-After, shared by the core and by plugins (one retry layer: the next scheduled try)."""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from collections.abc import Mapping

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
# A vendor asking for more than this is clamped: the job is checked again by then anyway.
RETRY_AFTER_MAX = 15 * 60.0
# No wait after a failure is shorter, whatever the vendor says (``retry-after: 0``, a date in the past):
# a reply must never set the pace of the daemon's requests.
WAIT_FLOOR = 1.0

# Statuses where trying the same request again later may work (as the OpenAI SDK and our design note say).
TRANSIENT_STATUSES = frozenset({408, 409, 429})


def is_transient_status(status_code: int) -> bool:
    return status_code in TRANSIENT_STATUSES or status_code >= 500


def full_jitter(
    attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP, rng: random.Random | None = None
) -> float:
    """Delay before try ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)


def backoff_delay(
    attempt: int,
    retry_after: float | None,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    rng: random.Random | None = None,
) -> float:
    """The wait before the next try: the only place where a vendor's hint becomes a wait.

    Our own back-off (full jitter, growing with ``attempt``) and the vendor's ``Retry-After``, whichever
    is longer, never under ``WAIT_FLOOR`` and never over ``RETRY_AFTER_MAX``: a vendor may lengthen the
    wait, up to a ceiling, but not shorten it.
    """
    ours = max(WAIT_FLOOR, full_jitter(attempt, base=base, cap=cap, rng=rng))
    if retry_after is None or retry_after != retry_after:  # NaN says nothing
        return ours
    return min(max(ours, retry_after), RETRY_AFTER_MAX)


def parse_retry_after(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after`` (seconds or HTTP-date).

    None if absent or nonsense.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = _to_float(lowered.get("retry-after-ms"))
    if millis is not None and millis >= 0:
        return millis / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _to_float(raw)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _to_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None
