"""The notify protocol, checked from systemd's side: a real AF_UNIX datagram socket receives exactly
what the service manager would."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from teckochecker.sdnotify import Notifier, run_watchdog


class FakeSystemd:
    """The service manager's end of $NOTIFY_SOCKET."""

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)
        self.env = {"NOTIFY_SOCKET": env_value}

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> list[str]:
        self.sock.setblocking(False)
        try:
            messages = []
            while True:
                try:
                    messages.append(self.sock.recv(4096).decode())
                except BlockingIOError:
                    return messages
        finally:
            self.sock.settimeout(2)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "n.sock"
    manager = FakeSystemd(str(path), str(path))
    yield manager
    manager.sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"teckochecker-test-{uuid.uuid4().hex}"
    manager = FakeSystemd(b"\0" + name.encode(), "@" + name)
    yield manager
    manager.sock.close()


def test_ready_on_a_path_socket(systemd: FakeSystemd) -> None:
    Notifier(systemd.env).ready()
    assert systemd.receive() == "READY=1"


def test_ready_with_status(systemd: FakeSystemd) -> None:
    Notifier(systemd.env).ready("3 jobs\nwatching")
    assert systemd.receive() == "READY=1\nSTATUS=3 jobs watching"


def test_each_message_on_an_abstract_socket(abstract_systemd: FakeSystemd) -> None:
    notifier = Notifier(abstract_systemd.env)
    notifier.status("2 jobs waiting")
    notifier.watchdog()
    notifier.stopping()
    received = [abstract_systemd.receive() for _ in range(3)]
    assert received == ["STATUS=2 jobs waiting", "WATCHDOG=1", "STOPPING=1"]


def test_reloading_carries_the_monotonic_timestamp(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(systemd.env).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.receive().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_reloading_uses_the_injected_clock(systemd: FakeSystemd) -> None:
    Notifier(systemd.env, monotonic_ns=lambda: 123_456_789).reloading()
    assert systemd.receive() == "RELOADING=1\nMONOTONIC_USEC=123456"


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.reloading()
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()


def test_unsupported_socket_kind_disables_notifications(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not a unix socket path" in caplog.text


def test_a_vanished_socket_is_logged_once_and_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="teckochecker.sdnotify"):
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "gone.sock" in warnings[0].getMessage()


def test_a_socket_closed_after_start_does_not_raise(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.env)
    notifier.ready()
    assert systemd.receive() == "READY=1"
    systemd.sock.close()
    os.unlink(systemd.env["NOTIFY_SOCKET"])
    notifier.watchdog()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(extra: dict[str, str], expected: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **extra})
    assert notifier.watchdog_interval == expected


class ScriptedSleep:
    """Stands in for the clock's sleep: records each interval and ends the loop after ``rounds``."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if len(self.calls) >= self.rounds:
            raise asyncio.CancelledError


def _watchdog_env(systemd: FakeSystemd) -> dict[str, str]:
    return {**systemd.env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}


def test_watchdog_pings_every_interval_while_healthy(systemd: FakeSystemd) -> None:
    sleep = ScriptedSleep(rounds=3)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_watchdog(Notifier(_watchdog_env(systemd)), lambda: True, sleep))
    assert sleep.calls == [2.0, 2.0, 2.0]
    assert systemd.pending() == ["WATCHDOG=1"] * 3


def test_watchdog_withholds_pings_while_unhealthy(systemd: FakeSystemd, caplog: pytest.LogCaptureFixture) -> None:
    health = iter([True, False, False, True])
    sleep = ScriptedSleep(rounds=4)
    with (
        caplog.at_level(logging.WARNING, logger="teckochecker.sdnotify"),
        pytest.raises(asyncio.CancelledError),
    ):
        asyncio.run(run_watchdog(Notifier(_watchdog_env(systemd)), lambda: next(health), sleep))
    assert systemd.pending() == ["WATCHDOG=1"] * 2
    # One line when pings stop, one when they resume, not one per skipped ping.
    assert len([r for r in caplog.records if "withholding" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "resuming" in r.getMessage()]) == 1


def test_watchdog_treats_a_failing_health_check_as_unhealthy(systemd: FakeSystemd) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    sleep = ScriptedSleep(rounds=2)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_watchdog(Notifier(_watchdog_env(systemd)), broken, sleep))
    assert systemd.pending() == []


def test_watchdog_returns_at_once_when_not_watched(systemd: FakeSystemd) -> None:
    sleep = ScriptedSleep(rounds=1)
    asyncio.run(run_watchdog(Notifier(systemd.env), lambda: True, sleep))
    assert sleep.calls == []
    assert systemd.pending() == []
