"""Reading an outbound request's reply with a size cap: another server decides how much it sends, the
daemon decides how much it reads.

The body is streamed and counted; past the cap of the reply's kind (``plugin_api.ReplyKind``, chosen per
request) the connection is closed unread (draining 400 MB to keep a connection alive would cost what the cap
saves) and the request fails as a transport error does, so every plugin's existing handling of an unreachable
server applies: retried with back-off, never a verdict about a batch or a job.

Compressed answers are not asked for (``Accept-Encoding: identity``): the cap counts the bytes read, and a
gzip body of 400 KB can unpack to 400 MB. A server that compresses anyway is refused the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

import httpx

from teckochecker.boundedread import format_size
from teckochecker.plugin_api import REPLY_KIND_EXTENSION, ReplyKind

# Sized for the largest honest answer of each kind with room to spare, and small enough that a hostile one
# costs the daemon a few MB. A listing page holds at most 100 objects of up to ~10 KB (OpenAI's metadata
# allows 16 keys of 512 characters); a Keboola job with its configuration data is the largest single object.
REPLY_CAPS: Mapping[ReplyKind, int] = {
    ReplyKind.LISTING: 8 * 1024 * 1024,
    ReplyKind.OBJECT: 2 * 1024 * 1024,
    ReplyKind.INDEX: 2 * 1024 * 1024,
    ReplyKind.RECEIVER: 64 * 1024,
    ReplyKind.OTHER: 4 * 1024 * 1024,
    ReplyKind.ERROR: 64 * 1024,
}

# Asked of every server: the cap must count the bytes the daemon keeps, not compressed ones.
ACCEPT_ENCODING = "identity"


class ReplyTooLarge(httpx.ReadError):
    """A reply larger than its cap: a transport error (httpx.RequestError), so it is handled as one."""


def reply_cap(request: httpx.Request, status_code: int, caps: Mapping[ReplyKind, int] = REPLY_CAPS) -> int:
    """The cap for the reply to ``request``: its kind's (``OTHER`` when it names none or an unknown one),
    and never more than the ``ERROR`` cap for a status of 300 or more."""
    try:
        kind = ReplyKind(request.extensions.get(REPLY_KIND_EXTENSION, ReplyKind.OTHER.value))
    except ValueError:
        kind = ReplyKind.OTHER
    cap = caps[kind]
    return min(cap, caps[ReplyKind.ERROR]) if status_code >= 300 else cap


async def read_capped(
    request: httpx.Request, response: httpx.Response, caps: Mapping[ReplyKind, int] = REPLY_CAPS
) -> None:
    """Read ``response``'s body into it, at most its cap; ReplyTooLarge (connection closed) past it."""
    cap = reply_cap(request, response.status_code, caps)
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    try:
        body = await _at_most(request, response, stream, cap)
    finally:
        # Closed before its end, httpcore drops the connection rather than reading the rest.
        await stream.aclose()
    response.stream = httpx.ByteStream(body)
    await response.aread()


async def _at_most(request: httpx.Request, response: httpx.Response, stream: AsyncIterable[bytes], cap: int) -> bytes:
    host = request.url.host
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ReplyTooLarge(
            f"the reply from {host} is compressed ({encoding}) though it was not asked to be; its size "
            f"could not be capped at {format_size(cap)}",
            request=request,
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _too_large(request, cap)
    chunks: list[bytes] = []
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > cap:
            raise _too_large(request, cap)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(request: httpx.Request, cap: int) -> ReplyTooLarge:
    return ReplyTooLarge(
        f"the reply from {request.url.host} is larger than the limit of {format_size(cap)}; not read further",
        request=request,
    )
