"""The outbound guard's place in httpx: checked before a request is sent, checked again where it connects,
and never led elsewhere by a redirect.

- ``GuardedTransport`` asks ``OutboundGuard.check`` before handing a request on, so a refused one never
  reaches the concurrency bound, the pool or the network.
- ``CheckedConnectTransport`` connects through ``CheckedBackend``: for a host no file names, it resolves the
  name itself, has every address checked, and connects to a checked address, so DNS cannot answer one thing
  to the check and another to the connect. TLS SNI and the Host header stay the name (httpcore takes both from
  the URL, not from the address connected to).
- ``NoRedirectClient`` never follows a ``Location``, whatever a caller passes: a 3xx is an answer.
"""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import Iterable

import httpcore
import httpx

from teckochecker.outbound_guard import OutboundGuard

__all__ = ["CheckedBackend", "CheckedConnectTransport", "GuardedTransport", "NoRedirectClient"]


class GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, guard: OutboundGuard) -> None:
        self._inner = inner
        self._guard = guard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._guard.check(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, with the address of every connection to a host no file names checked."""

    def __init__(self, guard: OutboundGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._guard.names_host(host, port):
            # The files name it: it may be reached wherever the name resolves (an internal proxy, a fake).
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        addresses = await _resolve(host, port, timeout)
        for address in addresses:
            self._guard.check_address(host, port, address)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # _resolve returns at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the daemon connects to no unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, each once."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout} s") from None
    except OSError as exc:  # socket.gaierror: no such name
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return addresses


class CheckedConnectTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, connecting through ``CheckedBackend`` (same TLS, limits and retries as the plain one)."""

    def __init__(self, guard: OutboundGuard, *, limits: httpx.Limits, retries: int = 0) -> None:
        super().__init__(limits=limits, retries=retries)
        # httpx has no parameter for the network backend: the pool it built is replaced by one built the same
        # way that connects through the check. tests/test_outbound_guard.py fails if httpx stops using it.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=CheckedBackend(guard),
        )


class NoRedirectClient(httpx.AsyncClient):
    """An AsyncClient that never follows a redirect, even when a caller asks it to."""

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: typing.Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: typing.Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        return await super().send(request, stream=stream, auth=auth, follow_redirects=False)
