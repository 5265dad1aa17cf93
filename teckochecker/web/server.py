"""Runs the HTTP app with uvicorn inside the daemon's own event loop.

The daemon owns the process: its signals (SIGTERM/SIGINT/SIGHUP), its logging and its shutdown order.
So uvicorn gets a socket we bound ourselves, no signal handlers, and no logging config of its own.

The listener holds its own limits (web/limits.py), so that clients can never exhaust the daemon's file
descriptors (which its state store, HTTP clients and config watcher need too) nor hold it with slow requests:
at most MAX_CONNECTIONS open connections, each request fully arrived within REQUEST_DEADLINE of its first
byte, and at the cap the slowest incomplete (or longest idle) connection makes room for a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from teckochecker.errors import TeckoCheckerError
from teckochecker.web.limits import Listener, guarded_protocol, tracking

STOP_TIMEOUT = 2.0
# How often the idle server wakes to refresh its Date header (uvicorn wakes ten times as often).
HEADER_REFRESH = 1.0
START_TIMEOUT = 5.0
# Far more than a Prometheus server, a few operators and a status page need; far fewer than the 1024 file
# descriptors systemd gives a service by default. (uvicorn's limit_concurrency is not enough on its own: it
# answers 503 to requests but keeps every idle connection open.)
MAX_CONNECTIONS = 200
# Also how many connections one accept burst takes from the kernel before the cap can act on them.
LISTEN_BACKLOG = 128
# A request's line, headers and body must all have arrived this long after its first byte (a new
# connection's: after its accept), however slowly they trickle in; later, a 408.
REQUEST_DEADLINE = 10.0
KEEP_ALIVE_TIMEOUT = 5.0
# The request line plus headers must fit (h11's default, made explicit); bigger is refused with a 4xx.
MAX_HEADER_BYTES = 16 * 1024


class _EmbeddedServer(uvicorn.Server):
    """uvicorn.Server minus its signal handling, and with a main loop that sleeps while nothing happens.

    uvicorn >= 0.29 wraps serve() in capture_signals(), which replaces the SIGINT/SIGTERM handlers with
    its own (stopping only the web server) and re-raises the signal afterwards. In the daemon that would
    steal SIGTERM from the daemon's graceful shutdown.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_wanted = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_wanted.set()

    async def main_loop(self) -> None:
        # uvicorn's own loop wakes every 100 ms to notice should_exit and refreshes the Date header on every
        # tenth wake: ten wakeups a second in an idle daemon. Once a second refreshes the header as often
        # (on_tick(0) always does), and request_exit() ends the wait at once, so stopping is no slower.
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEADER_REFRESH):
                    await self._exit_wanted.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # the pre-0.29 name of the same thing
        return None


class WebServer:
    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        logger: logging.Logger,
        *,
        max_connections: int | None = None,
        request_deadline: float = REQUEST_DEADLINE,
        name: str = "HTTP",
        exposure: str = "job data and metrics are readable by anyone who can reach it",
    ) -> None:
        """``max_connections``: None for MAX_CONNECTIONS; fewer under a low descriptor limit (connection_cap).
        ``name`` and ``exposure`` word the log lines (a second listener, the webhook receiver, has its own)."""
        self._name = name
        self._exposure = exposure
        self._max_connections = max_connections
        self._request_deadline = request_deadline
        self._app = app
        self._host = host
        self._port = port
        self._logger = logger
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int:
        """The port actually listened on (the real one when configured as 0)."""
        if self._bound_port is None:
            raise RuntimeError("the web server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.bound_port}"

    async def start(self) -> None:
        """Bind and serve in the background; raises TeckoCheckerError if the address cannot be used."""
        sock = _bind(self._host, self._port)
        self._bound_port = sock.getsockname()[1]
        cap = connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0], self._max_connections)
        listener = Listener(
            cap, self._request_deadline, MAX_HEADER_BYTES, self._name, logging.getLogger("teckochecker.http")
        )
        config = uvicorn.Config(
            tracking(self._app, listener),
            host=self._host,
            port=self._bound_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # None: leave logging alone, so uvicorn's records go through the daemon's (redacting) handlers.
            log_config=None,
            # The audit log names the TCP peer, not whatever an X-Forwarded-For header claims.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=1,
            http=guarded_protocol(listener),
            ws="none",  # no WebSocket upgrade: it would hand the connection to a protocol outside the guard
            backlog=min(LISTEN_BACKLOG, cap),
            timeout_keep_alive=int(KEEP_ALIVE_TIMEOUT),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        self._server = _EmbeddedServer(config)
        serving = self._server.serve(sockets=[sock])
        self._task = asyncio.get_running_loop().create_task(serving, name="http-server")
        self._task.add_done_callback(self._on_exit)
        await self._wait_started(sock)
        if not _is_loopback(self._host):
            self._logger.warning(
                "%s listener on %s is not loopback: %s; put a TLS reverse proxy in front",
                self._name,
                self._host,
                self._exposure,
            )
        self._logger.info("%s listening on %s", self._name, self.url)

    async def _wait_started(self, sock: socket.socket) -> None:
        assert self._server is not None and self._task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not self._server.started:
            if self._task.done():
                sock.close()
                exc = self._task.exception() if not self._task.cancelled() else None
                raise TeckoCheckerError(f"the HTTP server on {self._host}:{self._port} did not start: {exc}")
            if loop.time() > deadline:
                await self.stop()
                raise TeckoCheckerError(f"the HTTP server on {self._host}:{self._port} did not start in time")
            await asyncio.sleep(0.01)

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        # The listener ending on its own (not through stop()) is worth a line: /metrics and the API are gone.
        if self._server is not None and not self._server.should_exit and not task.cancelled():
            self._logger.error("the HTTP server stopped unexpectedly: %s", task.exception())

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, and give up after about STOP_TIMEOUT seconds."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.request_exit()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception:  # already logged by _on_exit; stopping must not fail the daemon's shutdown
            pass
        self._server = self._task = None


def connection_cap(fd_limit: int, wanted: int | None = None) -> int:
    """``wanted`` (MAX_CONNECTIONS if None), or fewer under a low file descriptor limit: a quarter of it for
    open connections and a quarter for one accept burst leave half for the store, the HTTP clients and the
    watcher."""
    wanted = wanted or MAX_CONNECTIONS
    if fd_limit == resource.RLIM_INFINITY or fd_limit <= 0:
        return wanted
    return min(wanted, max(8, fd_limit // 4))


def _bind(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn: an address in use becomes one clear error, not a sys.exit."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        message = f"cannot listen on {where}: cannot resolve {host!r} ({exc.strerror})"
        raise TeckoCheckerError(message) from exc
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restarted daemon rebind while old connections sit in TIME_WAIT; on Linux it does *not*
        # allow two live listeners on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TeckoCheckerError(
                f"cannot listen on {where}: address already in use (is another teckochecker running? change http.port)"
            ) from exc
        raise TeckoCheckerError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
