"""web/framing.py frames a request exactly as h11 (uvicorn's parser) does, however its bytes are split: the
connection guard must never believe a request arrived that uvicorn still waits for."""

from __future__ import annotations

import h11
import pytest

from teckochecker.web.framing import RequestFraming

MAX_HEAD = 16 * 1024
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabc",
    b"POST /h HTTP/1.1\r\nHost: x\r\ncontent-length:5\r\n\r\nabcdeGET",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET",
    # Not plain: left to h11, which waits for the body or refuses (uvicorn then answers 400 and closes).
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 5\r\n\r\nabc",
    b"POST /h HTTP/1.1\nHost: x\nContent-Length: 5\n\nabc",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nabc",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabc",
    b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r",
]


def h11_says(data: bytes) -> tuple[bool, bytes | None]:
    """(arrived, the bytes after it); None after it when h11 refuses the request."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.EndOfMessage):
                return True, conn.trailing_data[0]
    except h11.RemoteProtocolError:
        return True, None
    return False, b""


@pytest.mark.parametrize("data", REQUESTS)
def test_the_framing_agrees_with_h11_however_the_bytes_are_split(data: bytes) -> None:
    arrived, after = h11_says(data)
    for split in range(1, len(data) + 1):
        framing = RequestFraming(MAX_HEAD)
        if framing.feed(data[:split]):
            got = (True, framing.trailing + data[split:])
        else:
            got = (framing.feed(data[split:]) if split < len(data) else False, framing.trailing)
        assert got[0] == arrived, (data, split)
        if after is not None:
            assert got[1] == (after if arrived else b""), (data, split)


def test_a_head_over_the_limit_is_done_with_at_once() -> None:
    framing = RequestFraming(1024)
    assert not framing.feed(b"GET / HTTP/1.1\r\nX-Filler: ")
    assert framing.feed(b"a" * 2048)  # h11 refuses it; uvicorn answers and closes
