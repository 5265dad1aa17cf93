"""systemd's notify protocol (sd_notify(3)): readiness, reload, stop and watchdog messages.

A handful of ``KEY=value`` lines in one AF_UNIX datagram to ``$NOTIFY_SOCKET``; not worth a dependency.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the daemon runs the same way in a
terminal, in tests and under ``Type=notify``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

_LOG = logging.getLogger("teckochecker.sdnotify")


def _monotonic_ns() -> int:
    # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC reading, so it must be that clock.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Notifier:
    """Talks to the service manager named by ``environ``. Never raises: a lost notification is logged,
    because a missing socket must not take the daemon down with it."""

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        logger: logging.Logger | None = None,
        monotonic_ns: Callable[[], int] = _monotonic_ns,
    ) -> None:
        self._log = logger or _LOG
        self._monotonic_ns = monotonic_ns
        self._address = self._parse_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval = self._parse_watchdog(environ) if self._address is not None else None
        self._send_failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec=, as systemd.service(5) recommends),
        or None when systemd does not watch this process."""
        return self._watchdog_interval

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", *([] if status is None else [_status_line(status)]))

    def reloading(self) -> None:
        # Type=notify-reload (systemd >= 253) ignores RELOADING=1 without the timestamp: it uses it to
        # tell this reload's READY=1 from an earlier one.
        self._send("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(_status_line(text))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def _send(self, *lines: str) -> None:
        if self._address is None:
            return
        payload = "\n".join(lines).encode()
        try:
            # A fresh socket per message, as libsystemd does: messages are rare, and nothing needs closing.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            # Once: with WatchdogSec= this would otherwise repeat every few seconds for the whole run.
            if not self._send_failed:
                self._send_failed = True
                self._log.warning(
                    "cannot notify systemd at %s: %s (further failures not logged)", self._display_address(), exc
                )

    def _parse_address(self, raw: str) -> str | bytes | None:
        if not raw:
            return None
        if raw.startswith("@"):
            # Abstract namespace: systemd writes the leading NUL as '@'.
            return b"\0" + raw[1:].encode()
        if raw.startswith("/"):
            return raw
        # e.g. vsock:CID:PORT (systemd >= 254, for VMs); not something this daemon runs under.
        self._log.warning("NOTIFY_SOCKET=%s is not a unix socket path; systemd notifications disabled", raw)
        return None

    def _parse_watchdog(self, environ: Mapping[str, str]) -> float | None:
        pid = environ.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process systemd watches; a child that inherited the env must not ping.
        if pid and pid != str(os.getpid()):
            return None
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    def _display_address(self) -> str:
        address = self._address
        return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else str(address)


def _status_line(text: str) -> str:
    # A newline would end the STATUS= assignment and start a bogus one.
    return "STATUS=" + " ".join(text.splitlines())


async def run_watchdog(
    notifier: Notifier,
    healthy: Callable[[], bool],
    clock_sleep: Callable[[float], Awaitable[None]],
) -> None:
    """Ping WATCHDOG=1 every ``notifier.watchdog_interval`` seconds while ``healthy()`` holds; returns at
    once when systemd does not watch us. Run it as a task on the daemon's event loop, so a blocked loop
    stops the pings too; cancel it to stop.

    ``healthy`` should only say whether *this process* makes progress (scheduler ticks not stuck). Tying
    it to OpenAI, Keboola or the database would turn their outages into restart loops.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    log = _LOG
    withheld = False
    while True:
        try:
            ok = healthy()
        except Exception:
            log.exception("watchdog health check failed; treating the daemon as unhealthy")
            ok = False
        if ok:
            if withheld:
                log.warning("daemon healthy again; resuming systemd watchdog pings")
            withheld = False
            notifier.watchdog()
        elif not withheld:
            # Logged once per episode: systemd kills and restarts us if this lasts past WatchdogSec=.
            withheld = True
            log.error("daemon unhealthy (scheduler stuck); withholding systemd watchdog pings")
        await clock_sleep(interval)
