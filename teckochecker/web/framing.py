"""Where one HTTP/1.1 request ends on the wire, decided exactly as h11 (uvicorn's parser) decides it.

The connection guard (web/limits.py) must know when a request has fully arrived: believing it too early
would let a slow client escape the deadline. Running h11 over every request a second time doubled the
listener's parsing cost, so the plain, common request (CRLF line ends, a valid request line, at most one
Content-Length value, no Transfer-Encoding, no folded header) is framed by a quick scan, and anything else,
chunked bodies included, by h11 itself.
"""

from __future__ import annotations

import re

import h11

# h11's own end-of-head rule (a blank line, with or without its CR).
_HEAD_END = re.compile(rb"\n\r?\n")
_REQUEST_LINE = re.compile(rb"[A-Z]+ [\x21-\x7e]+ HTTP/1\.[01]")


class RequestFraming:
    """Fed a request's bytes as they come; ``feed`` says when the whole request (head and body) is in."""

    def __init__(self, max_header_bytes: int) -> None:
        self._max_header_bytes = max_header_bytes
        self._head = b""  # until the head's blank line has come
        self._body_due: int | None = None  # after a plain head: body bytes still to come
        self._h11: h11.Connection | None = None
        self.trailing = b""  # once arrived: the bytes that came after the request (the next one's start)

    def feed(self, data: bytes) -> bool:
        """True once the request has fully arrived (or is one h11 refuses: uvicorn answers it and closes)."""
        if self._h11 is not None:
            return self._feed_h11(data)
        if self._body_due is not None:
            return self._feed_body(data)
        self._head += data
        end = _HEAD_END.search(self._head)
        if end is None:
            return self._to_h11() if len(self._head) > self._max_header_bytes else False
        start, stop = end.span()
        plain = start > 0 and self._head[start - 1 : stop] == b"\r\n\r\n" and start <= self._max_header_bytes
        length = _plain_length(self._head[: start - 1]) if plain else None
        if length is None:
            return self._to_h11()
        rest, self._head = self._head[stop:], b""
        self._body_due = length
        return self._feed_body(rest)

    def _feed_body(self, data: bytes) -> bool:
        assert self._body_due is not None
        if len(data) < self._body_due:
            self._body_due -= len(data)
            return False
        self.trailing = data[self._body_due :]
        self._body_due = 0
        return True

    def _to_h11(self) -> bool:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)
        head, self._head = self._head, b""
        return self._feed_h11(head)

    def _feed_h11(self, data: bytes) -> bool:
        assert self._h11 is not None
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return True
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.EndOfMessage):
                self.trailing = self._h11.trailing_data[0]
                return True


def _plain_length(head: bytes) -> int | None:
    """The body length of a plain request head (without its final CRLF); None when it is not plain."""
    lines = head.split(b"\r\n")
    unbroken = head.replace(b"\r\n", b"")
    if not _REQUEST_LINE.fullmatch(lines[0]) or b"\n" in unbroken or b"\r" in unbroken:
        return None
    lengths = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or line[:1] in (b" ", b"\t"):
            return None  # folded, nameless or odd: h11 decides
        name = name.lower()
        if name == b"content-length":
            value = value.strip(b" \t")
            if not value.isdigit():
                return None
            lengths.add(int(value))
        elif b"content-length" in name or b"transfer-encoding" in name:
            return None
    if len(lengths) > 1:
        return None
    return lengths.pop() if lengths else 0
