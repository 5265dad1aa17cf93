"""Talking to the Keboola Queue API: finding it, and reading its answers.

The Queue API lives on its own host. The stack's Storage API index names it; guessing it from the
connection host is only the fallback (docs/vendors.md, Keboola).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from teckochecker.plugin_api import ReplyKind
from teckochecker.vendor_replies import describe, json_object, masked

if TYPE_CHECKING:
    import httpx  # at run time only where a request is made: validate-config and status load this module


__all__ = [
    "INDEX_PATH",
    "DiscoveryFailed",
    "ErrorBody",
    "discover_queue_url",
    "error_body",
    "guess_queue_url",
    "parse_time",
]

# ``exclude=components`` skips the large component list; the index needs no token.
INDEX_PATH = "v2/storage"
INDEX_PARAMS = {"exclude": "components"}


class DiscoveryFailed(Exception):
    """The stack index did not name a Queue API; the message says why (it holds no secret)."""


async def discover_queue_url(client: httpx.AsyncClient) -> str:
    """The Queue API base URL named by the stack index (``client`` has the stack URL as its base)."""
    import httpx

    try:
        response = await client.get(INDEX_PATH, params=INDEX_PARAMS, extensions=ReplyKind.INDEX.extensions)
    except httpx.RequestError as exc:
        raise DiscoveryFailed(describe(exc)) from exc
    if response.status_code != 200:
        raise DiscoveryFailed(f"HTTP {response.status_code}")
    try:
        services = response.json().get("services")
    except (ValueError, AttributeError) as exc:
        raise DiscoveryFailed("the body is not a JSON object") from exc
    for service in services if isinstance(services, list) else ():
        if isinstance(service, dict) and service.get("id") == "queue" and _is_http_url(service.get("url")):
            return str(service["url"]).rstrip("/")
    raise DiscoveryFailed("no 'queue' service in the index")


def guess_queue_url(stack_url: str) -> str | None:
    """``https://connection.X`` → ``https://queue.X``, on the parsed host only; None when no swap applies.

    A plain string replace would also rewrite any other "connection" in the URL.
    """
    parts = urllib.parse.urlsplit(stack_url)
    host = parts.hostname or ""
    if not host.startswith("connection.") or parts.scheme not in ("http", "https"):
        return None
    netloc = "queue." + host.removeprefix("connection.")
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}"


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class ErrorBody:
    message: str | None = None
    exception_id: str | None = None


def error_body(response: httpx.Response, secret: str) -> ErrorBody:
    """Keboola's ``{"error": "...", "code": ..., "exceptionId": ...}`` envelope, if the body is one."""
    body = json_object(response)
    if body is None:
        return ErrorBody()
    message = body.get("error") or body.get("message")
    exception_id = body.get("exceptionId")
    return ErrorBody(
        message=masked(message, secret) if isinstance(message, str) else None,
        exception_id=exception_id if isinstance(exception_id, str) else None,
    )


def parse_time(value: Any) -> dt.datetime | None:
    """Keboola timestamps come as ``2022-01-25T16:34:40+00:00`` or ``2019-06-21T09:12:33.001Z``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
