"""Reading a vendor's HTTP reply without trusting it, for every plugin: the body as a JSON object or
nothing, a message with the secret masked, a transport error in one line.

Each plugin still decides what its vendor's error envelope looks like (OpenAI's ``{"error": {...}}`` is
not Keboola's ``{"error": "...", "exceptionId": ...}``); what they share is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

MASK = "***"


def json_object(response: httpx.Response) -> Mapping[str, Any] | None:
    """The body as a JSON object; None when it is not JSON (an HTML error page) or not an object."""
    try:
        body = response.json()
    except ValueError:  # also UnicodeDecodeError
        return None
    return body if isinstance(body, dict) else None


def masked(text: str, secret: str) -> str:
    """``text`` with ``secret`` masked: a vendor masks it in its own messages, a proxy or a compatible
    endpoint echoing the request may not."""
    return text.replace(secret, MASK) if secret else text


def describe(exc: Exception) -> str:
    """A transport error in one line: its type, and its text when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
