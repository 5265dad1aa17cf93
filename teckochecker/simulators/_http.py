"""Loopback HTTP plumbing shared by the fake vendor servers.

Why the stdlib server and not a framework: fault modes need the raw socket (a TCP reset is SO_LINGER(1, 0)
plus close, a hang is a request held until stop()), and the stdlib gives that with no event-loop coupling
to the code under test, which runs its own asyncio loop.

A fake is a subclass of `LoopbackFake`: it declares named listeners (one per vendor host) and implements
`handle(request) -> Outcome`. Everything else (binding 127.0.0.1:0, keep-alive, Content-Length, request
recording, prompt stop with idle or hanging connections) lives here.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import json
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

# A hang is capped so a test that forgets stop() cannot leave a thread blocked forever.
MAX_HANG_SECONDS = 300.0


@dataclass
class RecordedRequest:
    """One request as the fake received it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request was fully read
    service: str = ""  # which listener got it ("openai", "stack", "queue")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response. `truncate_to` sends only that many body bytes, then closes."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate_to: int | None = None


@dataclass(frozen=True)
class Reset:
    """Answer with a TCP RST before any response byte."""


@dataclass(frozen=True)
class Hang:
    """Send nothing until the fake stops; then close the connection without a response."""


@dataclass(frozen=True)
class HugeReply:
    """An answer of ``size`` body bytes (a JSON-looking filler), written in chunks as it goes and never built
    in memory: a fake can answer 400 MB without holding them. ``chunked`` leaves out Content-Length (sent
    with Transfer-Encoding: chunked), so only reading the body shows how large it is."""

    status: int
    size: int
    chunked: bool = True
    content_type: str = "application/json"


# One chunk of filler: a JSON string's inside, so a client that parsed as it read would still be reading.
_FILLER = b"x" * (64 * 1024)


@dataclass(frozen=True)
class _Route:
    method: str | None
    path: str
    reply: Reply | HugeReply

    def matches(self, request: RecordedRequest) -> bool:
        """Same method (when given) and path; a path ending in ``*`` matches every path it starts."""
        if self.method not in (None, request.method):
            return False
        prefix = self.path.removesuffix("*")
        return request.path == self.path or (self.path.endswith("*") and request.path.startswith(prefix))


Outcome = Reply | Reset | Hang | HugeReply


@dataclass(frozen=True)
class Latency:
    """How long the fake takes over every request before answering: ``mean`` ± ``jitter`` seconds (uniform,
    never below 0), like a real vendor far away. Written ``300ms±200ms`` (``+-`` too) or ``1s``."""

    mean: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (self.mean >= 0 and self.jitter >= 0):  # `not >=` refuses nan too
            raise ValueError(f"latency must be >= 0 (got {self.mean}±{self.jitter})")

    @classmethod
    def parse(cls, text: str) -> Latency:
        from teckochecker.config.durations import parse_duration

        if text.strip() == "0":
            return cls(0.0)
        mean, separator, jitter = text.replace("+-", "±").partition("±")
        return cls(parse_duration(mean), parse_duration(jitter) if separator else 0.0)

    def sample(self, rng: random.Random) -> float:
        return max(0.0, self.mean + rng.uniform(-self.jitter, self.jitter)) if self.jitter else self.mean

    def __str__(self) -> str:
        return f"{self.mean * 1000:.0f}ms±{self.jitter * 1000:.0f}ms"


REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def too_many_requests(
    *, retry_after: str | None = None, retry_after_ms: str | None = None, retry_at: float | None = None
) -> Reply:
    """A 429 whose wait hint is whatever a test wants: ``retry-after`` as given (``"0"``, ``"-5"``,
    ``"soon"``), ``retry-after-ms``, or ``retry_at`` (unix seconds, maybe in the past) as an HTTP date."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    if retry_at is not None:
        headers["retry-after"] = email.utils.formatdate(retry_at, usegmt=True)
    return json_reply(429, {"error": {"type": "rate_limit_error", "message": "slow down"}}, headers)


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """Stable JSON (key order as built, compact separators) with the JSON content type."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status, body, {"content-type": "application/json", **(headers or {})})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real vendors
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        with contextlib.suppress(OSError):  # the socket may already be gone after a reset
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the fakes record requests; stderr noise helps nobody

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        request = self._read_request()
        try:
            outcome = self.server.fake_handler(request)
        except Exception as exc:  # a bug in a fake must surface as a 500, not a silent dropped socket
            outcome = json_reply(500, {"error": f"fake server bug: {exc!r}"})
        try:
            self._deliver(outcome)
        except OSError:  # the client gave up first (its timeout, a reset): nothing left to answer
            self.close_connection = True

    def _read_request(self) -> RecordedRequest:
        split = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        return RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=self._read_body(headers),
            at=time.monotonic(),
            service=self.server.service,
        )

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        for _ in range(100_000):  # bounded: a fake never needs more chunks than this
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        return b"".join(parts)

    def _deliver(self, outcome: Outcome) -> None:
        if isinstance(outcome, Reset):
            self._reset()
        elif isinstance(outcome, Hang):
            self.server.stopping.wait(MAX_HANG_SECONDS)
            self.close_connection = True
        elif isinstance(outcome, HugeReply):
            self._write_huge(outcome)
        else:
            delay = outcome.delay + self.server.latency()
            if delay > 0 and self.server.stopping.wait(delay):
                self.close_connection = True
                return
            self._write(outcome)

    def _reset(self) -> None:
        # SO_LINGER on with timeout 0 makes close() send RST instead of FIN: the client sees
        # "connection reset by peer" with no response byte, exactly the in-doubt case.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _write(self, reply: Reply) -> None:
        body = reply.body
        lines = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}"]
        headers = {"date": email.utils.formatdate(usegmt=True), **reply.headers}
        headers["content-length"] = str(len(body))
        if self.close_connection:
            headers["connection"] = "close"
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if reply.truncate_to is not None:
            # Promise the full length, send less, close: the client sees a truncated body.
            self.wfile.write(head + body[: reply.truncate_to])
            self.close_connection = True
            return
        self.wfile.write(head + (b"" if self.command == "HEAD" else body))

    def _write_huge(self, reply: HugeReply) -> None:
        head = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}", f"content-type: {reply.content_type}"]
        head.append("transfer-encoding: chunked" if reply.chunked else f"content-length: {reply.size}")
        # A client that stops reading closes the connection; the next write then fails, and that is the end.
        self.close_connection = True
        head.append("connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        left = reply.size
        try:
            while left > 0 and not self.server.stopping.is_set():
                chunk = _FILLER[: min(left, len(_FILLER))]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if reply.chunked else chunk)
                left -= len(chunk)
        finally:
            # What the client took before it closed (plus what the sockets' buffers hold): says whether it drained.
            self.server.count_huge_bytes(reply.size - left)
        if reply.chunked:
            self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # handler threads never keep the test process alive
    block_on_close = False  # stop() closes sockets itself instead of joining threads
    # socketserver's default backlog of 5 refuses a daemon that opens its 10 pooled connections at once.
    request_queue_size = 128

    def __init__(
        self,
        port: int,
        service: str,
        handler: Callable[[RecordedRequest], Outcome],
        stopping: threading.Event,
        latency: Callable[[], float],
    ) -> None:
        self.service = service
        self.latency = latency
        self.fake_handler = handler
        self.stopping = stopping
        self._connections: set[socket.socket] = set()
        self.huge_bytes_written = 0
        self._conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (a SIGKILLed daemon) resets its sockets: expected, not a fake's error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def count_huge_bytes(self, count: int) -> None:
        with self._conn_lock:
            self.huge_bytes_written += count

    def track(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.discard(conn)

    def close_all_connections(self) -> None:
        """Unblock handler threads parked on idle keep-alive sockets, so a stopped fake answers nothing."""
        with self._conn_lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)


class _Listener:
    """One bound port. Remembers its port so a restarted fake keeps its URLs."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(
        self, handler: Callable[[RecordedRequest], Outcome], stopping: threading.Event, latency: Callable[[], float]
    ) -> None:
        self._server = _Server(self.port, self.service, handler, stopping, latency)
        self.port = self._server.server_address[1]
        # A short poll interval keeps shutdown() (which waits for the serve loop) prompt.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.service}-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_all_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def huge_bytes_written(self) -> int:
        return self._server.huge_bytes_written if self._server is not None else 0

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"fake {self.service} server is not started")
        return f"http://127.0.0.1:{self.port}"


class LoopbackFake:
    """Base of a fake vendor: named loopback listeners, one state lock, a request log.

    Subclasses call `super().__init__(services=(...))` and implement `handle`. `stop()` returns promptly
    even with hanging or idle keep-alive connections. `start()` after `stop()` rebinds the same ports, so a
    test can take a vendor down and bring it back at the same URL.
    """

    def __init__(
        self,
        services: tuple[str, ...],
        *,
        record_requests: bool = True,
        latency: Latency | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._latency = latency or Latency(0.0)
        self._rng = rng or random.Random()
        self._listeners = {name: _Listener(name) for name in services}
        self._stopping = threading.Event()
        self._record = record_requests
        self._running = False
        self._request_total = 0
        self._huge: list[_Route] = []
        self._fixed: list[_Route] = []
        # (method, path) → requests received, kept even when requests are not recorded.
        self._per_path: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests: list[RecordedRequest] = []

    def start(self) -> Self:
        if self._running:
            return self
        self._stopping = threading.Event()
        started: list[_Listener] = []
        try:
            for listener in self._listeners.values():
                listener.start(self._receive, self._stopping, self._answer_delay)
                started.append(listener)
        except BaseException:
            for listener in started:
                listener.stop()
            raise
        self._running = True
        return self

    def stop(self) -> None:
        # Release hung and delayed handlers first, then stop accepting and cut every open connection.
        self._stopping.set()
        for listener in self._listeners.values():
            listener.stop()
        self._running = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _url(self, service: str) -> str:
        return self._listeners[service].url

    def _answer_delay(self) -> float:
        with self._lock:  # random.Random is not meant to be shared by threads unlocked
            return self._latency.sample(self._rng)

    def answer_huge(
        self,
        path: str,
        size: int,
        *,
        status: int = 200,
        method: str | None = None,
        chunked: bool = True,
        content_type: str = "application/json",
    ) -> None:
        """From now on answer every request to ``path`` (and ``method``, when given) with ``size`` body bytes
        and ``status``, streamed (see HugeReply); a path ending in ``*`` matches every path it starts.
        ``stop_huge`` turns it off."""
        route = _Route(method.upper() if method else None, path, HugeReply(status, size, chunked, content_type))
        with self._lock:
            self._huge.append(route)

    def huge_bytes_written(self) -> int:
        """Body bytes of huge answers written so far (on every listener; reset when the fake restarts)."""
        return sum(listener.huge_bytes_written() for listener in self._listeners.values())

    def stop_huge(self) -> None:
        with self._lock:
            self._huge.clear()

    def answer_always(self, path: str, reply: Reply, *, method: str | None = None) -> None:
        """From now on answer every request to ``path`` (and ``method``, when given) with ``reply``, forever
        (e.g. ``too_many_requests(retry_after="0")``); a path ending in ``*`` matches every path it starts.
        ``stop_answering`` turns it off."""
        with self._lock:
            self._fixed.append(_Route(method.upper() if method else None, path, reply))

    def stop_answering(self) -> None:
        with self._lock:
            self._fixed.clear()

    def requests_to(self, path: str, method: str = "GET") -> int:
        """Requests received for exactly ``method`` and ``path`` (query left out) since the fake was made."""
        with self._lock:
            return self._per_path[(method.upper(), path)]

    def _route_reply(self, routes: list[_Route], request: RecordedRequest) -> Reply | HugeReply | None:
        with self._lock:
            for route in routes:
                if route.matches(request):
                    return route.reply
        return None

    def _receive(self, request: RecordedRequest) -> Outcome:
        with self._lock:
            self._request_total += 1
            self._per_path[(request.method, request.path)] += 1
            if self._record:
                self.requests.append(request)
        for routes in (self._fixed, self._huge):
            if (reply := self._route_reply(routes, request)) is not None:
                return reply
        return self.handle(request)

    def handle(self, request: RecordedRequest) -> Outcome:
        raise NotImplementedError
