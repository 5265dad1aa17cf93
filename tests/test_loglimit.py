"""The repeat limiter on the daemon's log handler, on an injected clock."""

from __future__ import annotations

import io
import logging

import pytest
from clock import FakeClock

from teckochecker.loglimit import RepeatLimiter
from teckochecker.logs import setup_logging
from teckochecker.secrets.resolving import Redactor


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def record(msg: str, *args: object, name: str = "teckochecker.http", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_the_first_burst_passes_then_repeats_are_dropped_and_counted(clock: FakeClock) -> None:
    limiter = RepeatLimiter(clock.monotonic, burst=3, interval=60)
    passed = [limiter.filter(record("HTTP %s failed", f"/job/{i}")) for i in range(1000)]
    assert passed == [True] * 3 + [False] * 997  # one template, whatever its arguments
    clock.advance(59)
    assert limiter.filter(record("HTTP %s failed", "/x")) is False
    clock.advance(1)
    after = record("HTTP %s failed", "/y")
    assert limiter.filter(after) is True
    assert after.getMessage() == "HTTP /y failed (998 similar messages suppressed in the last 60 s)"
    nothing_dropped = record("HTTP %s failed", "/z")
    assert limiter.filter(nothing_dropped) is True and nothing_dropped.getMessage() == "HTTP /z failed"


def test_groups_are_per_logger_level_and_template(clock: FakeClock) -> None:
    limiter = RepeatLimiter(clock.monotonic, burst=1, interval=60)
    assert limiter.filter(record("a")) is True
    assert limiter.filter(record("a")) is False
    assert limiter.filter(record("b")) is True
    assert limiter.filter(record("a", name="asyncio")) is True
    assert limiter.filter(record("a", level=logging.WARNING)) is True


def test_the_daemon_handler_limits_a_traceback_storm(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("INFO", "text", Redactor(), {}, monotonic=clock.monotonic)
        log = logging.getLogger("asyncio")
        for _ in range(5000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                log.exception("socket.accept() out of system resource")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    text = stream.getvalue()
    assert text.count("socket.accept() out of system resource") == 10
    assert text.count("Traceback") == 10
