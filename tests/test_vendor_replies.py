"""The reading both plugins share (teckochecker/vendor_replies.py): a vendor body is JSON object or nothing,
and a secret echoed in a message never comes out."""

from __future__ import annotations

import httpx
import pytest

from teckochecker.vendor_replies import describe, json_object, masked


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"error": {"message": "m"}}', {"error": {"message": "m"}}),
        (b"<html>502 Bad Gateway</html>", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'"just a string"', None),
        (b"\xff\xfe{", None),  # not even UTF-8
    ],
)
def test_json_object_only_for_an_object(content: bytes, expected: object) -> None:
    assert json_object(httpx.Response(500, content=content)) == expected


def test_masked_hides_every_copy_of_the_secret() -> None:
    assert masked("key sk-1 is bad; sk-1 again", "sk-1") == "key *** is bad; *** again"
    assert masked("no secret configured", "") == "no secret configured"


def test_describe_a_transport_error() -> None:
    assert describe(httpx.ConnectError("refused")) == "ConnectError: refused"
    assert describe(httpx.ReadTimeout("")) == "ReadTimeout"
