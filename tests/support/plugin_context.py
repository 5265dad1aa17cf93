"""What plugin tests hand a plugin instead of the daemon: a fixed clock and a tiny HTTP client pool."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping

import httpx

# Like the daemon, bound concurrent connections per client.
LIMITS = httpx.Limits(max_connections=4)


class FixedClock:
    def now(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)

    def monotonic(self) -> float:
        return 1000.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


class Clients:
    """A tiny stand-in for the daemon's pool: one httpx.AsyncClient per key."""

    def __init__(self) -> None:
        self.clients: dict[str, httpx.AsyncClient] = {}

    def client(
        self,
        key: str,
        *,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = 30.0,
    ) -> httpx.AsyncClient:
        if key not in self.clients:
            self.clients[key] = httpx.AsyncClient(
                base_url=base_url, headers=headers, timeout=timeout, trust_env=False, limits=LIMITS
            )
        return self.clients[key]

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()
