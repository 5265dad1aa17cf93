"""Slow clients against a listener, as an attacker would run them: each connection sends a request's headers
and one byte of a body it announced as much longer, then one more byte every ``trickle`` seconds, and is
renewed (closed and opened again) every ``renew`` seconds; one the listener cuts earlier is renewed on the
same schedule. They run on their own event loop in a thread."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from types import TracebackType

HEADERS = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"


class SlowClients:
    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        count: int,
        *,
        renew: float = 8.0,
        trickle: float = 1.0,
        storm: bool = False,
    ) -> None:
        """``storm``: a connection the listener cuts is opened again at once, not on its schedule."""
        self._address = (host, port)
        self._request = HEADERS % path.encode()
        self._count = count
        self._renew = renew
        self._trickle = trickle
        self._storm = storm
        # How each connection ended: "renewed" (by us), "408", "503", "closed" (by the server, no answer).
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.open = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-clients", daemon=True)
        self._task: asyncio.Task[list[None]] | None = None

    def __enter__(self) -> SlowClients:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._task = asyncio.ensure_future(asyncio.gather(*(self._client(i) for i in range(self._count))))

    async def _stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _client(self, index: int) -> None:
        # Spread the renewals over the period, as a steady attack would be.
        await asyncio.sleep(self._renew * index / self._count / 4)
        while True:
            opened = self._loop.time()
            with contextlib.suppress(OSError):
                self.outcomes[await self._one()] += 1
            # A connection cut early is renewed on its schedule, not at once: the attack as seen, not a storm.
            if not self._storm:
                await asyncio.sleep(max(0.0, opened + self._renew - self._loop.time()))

    async def _one(self) -> str:
        reader, writer = await asyncio.open_connection(*self._address)
        self.open += 1
        try:
            writer.write(self._request)
            await writer.drain()
            started = self._loop.time()
            while self._loop.time() - started < self._renew:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._trickle):
                        answer = await reader.read(4096)
                        return _outcome(answer)
                writer.write(b" ")
                await writer.drain()
            return "renewed"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        finally:
            self.open -= 1
            writer.close()


def _outcome(answer: bytes) -> str:
    if answer.startswith(b"HTTP/1.1 408"):
        return "408"
    if answer.startswith(b"HTTP/1.1 503"):
        return "503"
    return "closed" if not answer else "other"
