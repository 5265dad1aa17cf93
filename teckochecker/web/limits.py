"""A listener's own limits, held without a reverse proxy: the connection cap and the request deadline.

Every connection passes through a ``ConnectionGuard`` in front of uvicorn's HTTP/1.1 protocol. The guard
reads the same bytes (web/framing.py tells where a request ends) and is told by ``tracking`` (an ASGI
wrapper) when the answer begins and ends. A connection is at any moment

- receiving: a request has not fully arrived (a new connection counts as receiving from its accept);
- handling: the request has arrived, its answer is not finished;
- idle: answered, waiting for the next request (uvicorn closes it after its keep-alive timeout).

Receiving is bounded by the request deadline, from the request's first byte (a new connection's accept),
however the bytes trickle in: at the deadline the request gets a 408 and the connection is closed. At the cap,
a new connection pushes out the receiving or idle one that has been so the longest (the slowest client goes
first); only when every connection is handling does the new one get a 503. So slow clients cannot hold the
listener: each one waits at most the deadline, and a well-behaved client always finds room.

There is no limit per client address: at the cap the oldest incomplete connection goes, whoever holds it, so
no address has to be believed (behind a reverse proxy every connection comes from the proxy).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any, cast

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from teckochecker.web.framing import RequestFraming

Peer = tuple[str, int]


def _canned(status: bytes, message: str) -> bytes:
    body = b'{"error": "' + message.encode() + b'", "path": ""}'
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


_BUSY = _canned(b"503 Service Unavailable", "too many open connections; try again shortly").replace(
    b"connection: close", b"retry-after: 1\r\nconnection: close"
)
_TOO_SLOW = _canned(b"408 Request Timeout", "the request did not arrive in time")


class Phase(enum.Enum):
    RECEIVING = "receiving"
    HANDLING = "handling"
    IDLE = "idle"


class Listener:
    """The live connections of one listener and its limits; decides which connection makes room."""

    def __init__(
        self, max_connections: int, request_deadline: float, max_header_bytes: int, name: str, logger: logging.Logger
    ) -> None:
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.max_header_bytes = max_header_bytes
        self.name = name
        self.log = logger
        self._connections: dict[Peer, ConnectionGuard] = {}

    def admit(self, guard: ConnectionGuard) -> bool:
        """Register a new connection; at the cap, push out the slowest other one, or refuse (False)."""
        self._connections[guard.peer] = guard
        if len(self._connections) <= self.max_connections:
            return True
        waiting = [c for c in self._connections.values() if c is not guard and c.phase is not Phase.HANDLING]
        if not waiting:
            del self._connections[guard.peer]
            self.log.warning(
                "%s: %d connections, all busy: refusing a new one with 503", self.name, len(self._connections)
            )
            return False
        min(waiting, key=lambda c: c.since).evict()
        return True

    def forget(self, guard: ConnectionGuard) -> None:
        if self._connections.get(guard.peer) is guard:
            del self._connections[guard.peer]

    def find(self, client: Any) -> ConnectionGuard | None:
        """The connection an ASGI scope's ``client`` (host, port) came on."""
        if not isinstance(client, (tuple, list)) or len(client) != 2:
            return None
        return self._connections.get((str(client[0]), int(client[1])))


class ConnectionGuard(asyncio.Protocol):
    """uvicorn's protocol for one connection, wrapped (not subclassed) to hold the listener's limits."""

    listener: Listener  # set on the per-listener subclass that uvicorn is given (guarded_protocol)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # uvicorn builds its protocol with arguments of its own choosing: passed on unread.
        self._inner = H11Protocol(*args, **kwargs)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.peer: Peer = ("", 0)
        self.phase = Phase.RECEIVING
        self.since = self._loop.time()  # when the current phase began
        self._framing = RequestFraming(self.listener.max_header_bytes)
        self._pending = b""  # bytes of the next request, come while this one is answered
        self._heard = False  # a byte of the current request has arrived
        self._answer_begun = False
        self._answer_done = False
        self._deadline: asyncio.TimerHandle | None = None
        self._cut = False

    # ----- asyncio.Protocol -----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, (tuple, list)) else ("", id(self))
        self._inner.connection_made(transport)
        if not self.listener.admit(self):
            self._cut = True
            transport.write(_BUSY)
            transport.close()
            return
        self._start_receiving()

    def data_received(self, data: bytes) -> None:
        if self._cut:
            return
        if self.phase is Phase.IDLE:
            self._start_receiving()
        if self.phase is Phase.RECEIVING:
            self._receive(data)
        else:  # pipelined: uvicorn holds it too, and stops reading until the answer is done
            self._pending += data
        self._inner.data_received(data)

    def eof_received(self) -> None:
        # None: the transport closes its side too, as uvicorn's protocol (which returns nothing) wants.
        self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.forget(self)
        self._cancel_deadline()
        if self.phase is Phase.RECEIVING and self._heard and not self._cut:
            # One line, here: the app then sees a ClientDisconnect, which ``tracking`` drops silently.
            self.listener.log.info(
                "%s: the client at %s left before its request had arrived", self.listener.name, self.peer[0]
            )
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # ----- the request's progress -----

    def _start_receiving(self) -> None:
        self.phase, self.since = Phase.RECEIVING, self._loop.time()
        self._framing = RequestFraming(self.listener.max_header_bytes)
        self._heard = self._answer_begun = self._answer_done = False
        self._cancel_deadline()
        self._deadline = self._loop.call_at(self.since + self.listener.request_deadline, self._on_deadline)

    def _receive(self, data: bytes) -> None:
        self._heard = True
        if self._framing.feed(data):
            self._arrived(self._framing.trailing)

    def _arrived(self, after: bytes) -> None:
        self._cancel_deadline()
        self._pending = after
        if self._answer_done:
            self._become_idle()
        else:
            self.phase, self.since = Phase.HANDLING, self._loop.time()

    def _become_idle(self) -> None:
        self.phase, self.since = Phase.IDLE, self._loop.time()
        if self._pending:  # the next request's first bytes came before this one was answered
            pending, self._pending = self._pending, b""
            self._start_receiving()
            self._receive(pending)

    def answer_begun(self) -> None:
        self._answer_begun = True

    def answer_done(self) -> None:
        self._answer_begun = self._answer_done = True
        if self.phase is Phase.HANDLING:
            self._become_idle()

    # ----- the limits -----

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.phase is Phase.RECEIVING and not self._cut:
            if self._heard:
                self.listener.log.info(
                    "%s: a request from %s did not arrive within %g s: 408, closed",
                    self.listener.name,
                    self.peer[0],
                    self.listener.request_deadline,
                )
            self._close(answer=self._heard)

    def evict(self) -> None:
        """Make room for a new connection: this one is the slowest, or has been idle the longest."""
        if self.phase is Phase.RECEIVING and self._heard:
            self.listener.log.info(
                "%s: at %d connections, closed the slowest (a request from %s incomplete for %.1f s) with 408",
                self.listener.name,
                self.listener.max_connections,
                self.peer[0],
                self._loop.time() - self.since,
            )
        self._close(answer=self.phase is Phase.RECEIVING and self._heard)

    def _close(self, *, answer: bool) -> None:
        self._cut = True
        self._cancel_deadline()
        self.listener.forget(self)
        if self._transport is None or self._transport.is_closing():
            return
        if answer and not self._answer_begun:
            self._transport.write(_TOO_SLOW)
        self._transport.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def guarded_protocol(listener: Listener) -> type[ConnectionGuard]:
    """The protocol class to give uvicorn (``Config(http=...)``) for one listener."""
    return type("GuardedH11Protocol", (ConnectionGuard,), {"listener": listener})


def tracking(app: ASGIApp, listener: Listener) -> ASGIApp:
    """``app``, telling each request's connection guard when its answer begins and ends.

    A ClientDisconnect (the client left while the app read its body) ends here without a traceback: the
    guard has logged the one line about it."""

    async def tracked(scope: Scope, receive: Receive, send: Send) -> None:
        guard = listener.find(scope.get("client")) if scope["type"] == "http" else None
        if guard is None:
            await app(scope, receive, send)
            return

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                guard.answer_begun()
            await send(message)

        try:
            await app(scope, receive, watched_send)
        except ClientDisconnect:
            pass
        finally:
            guard.answer_done()

    return tracked
