"""Keeps a repeated log line from flooding the journal: the first few per interval, then a count.

A connection flood or a long outage can make the same line (often with a traceback) thousands of times a
second; 263 MB of log in 70 s helps nobody and can fill the disk. Records are grouped by logger, level and
message *template* (not the formatted text), so "HTTP GET /a failed" and "HTTP GET /b failed" are one group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

# At most this many records of one group pass per interval; an operator still sees every distinct problem.
BURST = 10
INTERVAL = 60.0
# Groups remembered at once; beyond it, groups whose interval ended are forgotten first.
MAX_GROUPS = 2000


@dataclass
class _Window:
    started: float
    passed: int = 0
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """A handler filter: drops records of a group past ``burst`` per ``interval`` seconds; the first record of
    the group after that carries "(N similar messages suppressed in the last S s)"."""

    def __init__(self, monotonic: Callable[[], float], *, burst: int = BURST, interval: float = INTERVAL) -> None:
        super().__init__()
        self._monotonic = monotonic
        self._burst = burst
        self._interval = interval
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._monotonic()
        window = self._windows.get(key)
        if window is None or now - window.started >= self._interval:
            if window is None and len(self._windows) >= MAX_GROUPS:
                self._forget_ended(now)
            if window is not None and window.suppressed:
                self._mention(record, window.suppressed, now - window.started)
            self._windows[key] = _Window(started=now, passed=1)
            return True
        if window.passed < self._burst:
            window.passed += 1
            return True
        window.suppressed += 1
        return False

    def _mention(self, record: logging.LogRecord, count: int, seconds: float) -> None:
        # Appended to the template, so %-style arguments still format; the note itself holds no "%".
        note = f" ({count} similar message{'s' if count != 1 else ''} suppressed in the last {seconds:.0f} s)"
        record.msg = str(record.msg) + note

    def _forget_ended(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w.started >= self._interval]:
            del self._windows[key]
        if len(self._windows) >= MAX_GROUPS:  # all still active: forget the oldest rather than grow
            oldest = min(self._windows, key=lambda k: self._windows[k].started)
            del self._windows[oldest]
