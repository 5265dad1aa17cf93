"""Every reply the daemon's outbound HTTP reads is read with a cap, chosen per request by its kind."""

from __future__ import annotations

import asyncio
import gzip
import time

import httpx
import pytest
from fakes import FakeOpenAI

from teckochecker.http import HttpClientPool
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import REPLY_KIND_EXTENSION, ReplyKind
from teckochecker.reply_caps import REPLY_CAPS, ReplyTooLarge, reply_cap

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MiB = 1024 * 1024


def _get(fake: FakeOpenAI, path: str, kind: ReplyKind | None, metrics: Metrics | None = None) -> httpx.Response:
    async def main() -> httpx.Response:
        pool = HttpClientPool(2, metrics or Metrics())
        try:
            client = pool.client("k", base_url=fake.base_url, headers=AUTH)
            return await client.get(path, extensions=kind.extensions if kind else None)
        finally:
            await pool.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("chunked", [True, False])
def test_a_reply_over_its_cap_fails_as_a_transport_error_naming_host_and_cap(chunked: bool) -> None:
    metrics = Metrics()
    with FakeOpenAI(api_key=KEY) as fake:
        fake.answer_huge("/v1/batches/batch_big", REPLY_CAPS[ReplyKind.OBJECT] + 1, chunked=chunked)
        with pytest.raises(ReplyTooLarge) as caught:
            _get(fake, "batches/batch_big", ReplyKind.OBJECT, metrics)
    assert isinstance(caught.value, httpx.RequestError)  # every plugin already handles those as transient
    assert str(caught.value) == "the reply from 127.0.0.1 is larger than the limit of 2 MiB; not read further"
    assert metrics.http_requests.labels("127.0.0.1", "error")._value.get() == 1


def test_a_reply_up_to_its_cap_is_read_whole() -> None:
    with FakeOpenAI(api_key=KEY) as fake:
        fake.answer_huge("/v1/batches", REPLY_CAPS[ReplyKind.LISTING])
        response = _get(fake, "batches", ReplyKind.LISTING)
    assert response.status_code == 200
    assert len(response.content) == REPLY_CAPS[ReplyKind.LISTING]


def test_the_kind_sets_the_cap() -> None:
    """3 MiB: more than a single object may be, less than a listing page may be."""
    with FakeOpenAI(api_key=KEY) as fake:
        fake.answer_huge("/v1/batches", 3 * MiB)
        assert len(_get(fake, "batches", ReplyKind.LISTING).content) == 3 * MiB
        with pytest.raises(ReplyTooLarge, match="limit of 2 MiB"):
            _get(fake, "batches", ReplyKind.OBJECT)


def test_an_error_answer_is_read_with_the_error_cap_whatever_its_kind() -> None:
    with FakeOpenAI(api_key=KEY) as fake:
        fake.answer_huge("/v1/batches", REPLY_CAPS[ReplyKind.ERROR] + 1, status=403)
        with pytest.raises(ReplyTooLarge, match="limit of 64 KiB"):
            _get(fake, "batches", ReplyKind.LISTING)
        fake.stop_huge()
        fake.answer_huge("/v1/batches", REPLY_CAPS[ReplyKind.ERROR], status=403)
        assert _get(fake, "batches", ReplyKind.LISTING).status_code == 403


def test_a_request_without_a_kind_gets_the_default_cap() -> None:
    with FakeOpenAI(api_key=KEY) as fake:
        fake.answer_huge("/v1/batches", REPLY_CAPS[ReplyKind.OTHER] + 1)
        with pytest.raises(ReplyTooLarge, match="limit of 4 MiB"):
            _get(fake, "batches", None)


def test_an_unknown_kind_is_read_as_other() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/", extensions={REPLY_KIND_EXTENSION: "everything"})
    assert reply_cap(request, 200) == REPLY_CAPS[ReplyKind.OTHER]


def test_compression_is_not_asked_for_and_refused_when_sent_anyway() -> None:
    """The cap counts the bytes kept: a small gzip body could unpack to any size."""
    with FakeOpenAI(api_key=KEY) as fake:
        batch = fake.add_batch(status="in_progress")
        assert _get(fake, f"batches/{batch}", ReplyKind.OBJECT).json()["id"] == batch
        assert fake.requests[-1].headers["accept-encoding"] == "identity"
        fake.inject(200, body=gzip.compress(b"{}" + b" " * MiB), headers={"content-encoding": "gzip"})
        with pytest.raises(ReplyTooLarge, match=r"compressed \(gzip\) though it was not asked to be"):
            _get(fake, f"batches/{batch}", ReplyKind.OBJECT)


def test_the_pool_goes_on_after_a_reply_over_its_cap() -> None:
    """The over-cap connection is closed, not reused half-read: the next request on the pool is answered."""
    with FakeOpenAI(api_key=KEY) as fake:
        batch = fake.add_batch(status="in_progress")
        fake.answer_huge(f"/v1/batches/{batch}", 64 * MiB)

        async def main() -> httpx.Response:
            pool = HttpClientPool(1, Metrics())
            try:
                client = pool.client("k", base_url=fake.base_url, headers=AUTH)
                with pytest.raises(ReplyTooLarge):
                    await client.get(f"batches/{batch}", extensions=ReplyKind.OBJECT.extensions)
                fake.stop_huge()
                return await client.get(f"batches/{batch}", extensions=ReplyKind.OBJECT.extensions)
            finally:
                await pool.aclose()

        assert asyncio.run(main()).json()["id"] == batch


def test_an_over_cap_reply_is_not_drained() -> None:
    """Past the cap the connection is closed: the server is stopped from sending, not read to its end."""
    with FakeOpenAI(api_key=KEY) as fake:
        fake.answer_huge("/v1/batches/batch_big", 1024 * MiB)
        with pytest.raises(ReplyTooLarge):
            _get(fake, "batches/batch_big", ReplyKind.OBJECT)
        deadline = time.monotonic() + 10
        while fake.huge_bytes_written() == 0:  # counted once the fake's write fails
            assert time.monotonic() < deadline, "the fake is still writing: the client drained the answer"
            time.sleep(0.01)
        # The cap, plus what the two sockets' buffers held when the connection was closed.
        assert fake.huge_bytes_written() < REPLY_CAPS[ReplyKind.OBJECT] + 32 * MiB
