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


def storable(value: Any) -> Any:
    """``value`` with each string no encoding can hold escaped (``\\ud800``). A vendor's JSON may hold
    ``"\\ud800"``, half of a UTF-16 pair, in any field: stored as it is, it failed the commit of a check (and
    of every check grouped with it) or of an action's progress, on every try."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, Mapping):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
