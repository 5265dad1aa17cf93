"""The daemon's outbound HTTP: one bound on requests in flight across every pooled client, and metrics."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from fakes import FakeOpenAI

from teckochecker.http import HttpClientPool
from teckochecker.metrics import Metrics


def test_concurrency_is_bounded_across_clients_and_counted() -> None:
    metrics = Metrics()
    with FakeOpenAI(api_key="sk-test-key") as fake:
        ids = [fake.add_batch(status="in_progress") for _ in range(12)]
        fake.inject(200, times=12, delay=0.2)  # every answer takes 0.2 s

        async def main() -> float:
            pool = HttpClientPool(3, metrics)
            auth = {"Authorization": "Bearer sk-test-key"}

            async def get(i: int, batch: str) -> None:
                client = pool.client(f"k{i % 2}", base_url=fake.base_url, headers=auth)  # two clients, one bound
                (await client.get(f"batches/{batch}")).raise_for_status()

            started = asyncio.get_running_loop().time()
            await asyncio.gather(*(get(i, b) for i, b in enumerate(ids)))
            elapsed = asyncio.get_running_loop().time() - started
            await pool.aclose()
            return elapsed

        elapsed = asyncio.run(main())
    # 12 answers of 0.2 s each, at most 3 in flight across both clients: 4 rounds, about 0.8 s.
    assert elapsed >= 0.75
    assert metrics.http_requests.labels("127.0.0.1", "2xx")._value.get() == 12


def test_failed_requests_are_counted_as_errors() -> None:
    metrics = Metrics()

    async def main() -> None:
        pool = HttpClientPool(2, metrics)
        client = pool.client("x", base_url="http://127.0.0.1:9")  # nothing listens on the discard port
        with contextlib.suppress(httpx.ConnectError):
            await client.get("/")
        await pool.aclose()

    asyncio.run(main())
    assert metrics.http_requests.labels("127.0.0.1", "error")._value.get() == 1
