"""Anthropic's JSON error envelope: what makes an error response Anthropic's own answer.

``{"type": "error", "error": {"type": "not_found_error", "message": "..."}, "request_id": "req_..."}``
(docs/vendors.md, Anthropic). Only such a body is the vendor speaking; an HTML page or other JSON comes from
something in between and says nothing about the key or the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from teckochecker.vendor_replies import json_object, masked

if TYPE_CHECKING:
    import httpx

__all__ = ["VendorError", "vendor_error"]


@dataclass(frozen=True)
class VendorError:
    type: str
    message: str
    # error.details.error_code, e.g. enforced_spend_limit_reached on a 429 that waiting does not lift.
    detail_code: str | None = None


def vendor_error(response: httpx.Response, secret: str) -> VendorError | None:
    """The envelope of an error response, with the key masked; None when the body is not one."""
    body = json_object(response)
    error = body.get("error") if body is not None and body.get("type") == "error" else None
    if not isinstance(error, dict):
        return None
    type_, message = error.get("type"), error.get("message")
    if not isinstance(type_, str) or not type_ or not isinstance(message, str):
        return None
    details = error.get("details")
    code = details.get("error_code") if isinstance(details, dict) else None
    return VendorError(type_, masked(message, secret) or type_, code if isinstance(code, str) else None)
