"""The daemon's outbound HTTP: pooled clients per key, one bound on concurrent requests across all."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx

from teckochecker import __version__
from teckochecker.metrics import Metrics, status_class
from teckochecker.outbound_guard import OutboundGuard
from teckochecker.outbound_transport import CheckedConnectTransport, GuardedTransport, NoRedirectClient
from teckochecker.reply_caps import ACCEPT_ENCODING, read_capped

USER_AGENT = f"teckochecker/{__version__}"


class BoundedTransport(httpx.AsyncBaseTransport):
    """Lets at most N requests be in flight at once, whichever client sends them."""

    def __init__(self, inner: httpx.AsyncBaseTransport, semaphore: asyncio.Semaphore, metrics: Metrics) -> None:
        self._inner = inner
        self._semaphore = semaphore
        self._metrics = metrics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        async with self._semaphore:
            try:
                response = await self._inner.handle_async_request(request)
                # Read the body inside the bound, so that the slot is not given up before the work is done;
                # never more of it than its cap (reply_caps.py).
                await read_capped(request, response)
            except Exception:
                self._metrics.http_requests.labels(host, "error").inc()
                raise
        self._metrics.http_requests.labels(host, status_class(response.status_code)).inc()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class HttpClientPool:
    """Implements plugin_api.HttpClients. Build it inside the running event loop.

    The daemon passes its ``guard`` (outbound_guard.py): every request is checked before it is sent and where
    it connects (outbound_transport.py builds that transport; ``transport_factory`` serves a pool without a
    guard). Without one (a test of the pool itself) nothing is checked."""

    def __init__(
        self,
        concurrency: int,
        metrics: Metrics,
        *,
        guard: OutboundGuard | None = None,
        transport_factory: type[httpx.AsyncHTTPTransport] = httpx.AsyncHTTPTransport,
    ) -> None:
        self._metrics = metrics
        self._guard = guard
        self._semaphore = asyncio.Semaphore(concurrency)
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._transport_factory = transport_factory
        self._concurrency = concurrency

    def client(
        self,
        key: str,
        *,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = 30.0,
    ) -> httpx.AsyncClient:
        existing = self._clients.get(key)
        if existing is not None:
            return existing
        limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency)
        guard = self._guard
        inner = (
            self._transport_factory(limits=limits, retries=0)
            if guard is None
            else CheckedConnectTransport(guard, limits=limits, retries=0)
        )
        transport: httpx.AsyncBaseTransport = BoundedTransport(inner, self._semaphore, self._metrics)
        client = NoRedirectClient(
            base_url=base_url,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING, **(headers or {})},
            timeout=timeout,
            transport=transport if guard is None else GuardedTransport(transport, guard),
            follow_redirects=False,
            # An HTTP(S)_PROXY from the environment would be a transport of its own, past the guard and the
            # bound, to a place no config file names.
            trust_env=False,
        )
        self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
