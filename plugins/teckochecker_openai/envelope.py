"""The vendor's JSON error envelope: what makes an error response OpenAI's own answer.

OpenAI answers an error with ``{"error": {"message", "type", "param", "code"}}``; Azure (through
``base_url``) with Microsoft's ``{"error": {"code", "message", ...}}``. Only such a body is the vendor
speaking. An HTML page, an empty body or any other JSON comes from something in between (a proxy, a
gateway, a captive portal) and says nothing about the key or the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from teckochecker.vendor_replies import json_object, masked

if TYPE_CHECKING:
    import httpx  # at run time only where a request is made: validate-config and status load this module


__all__ = ["VendorError", "vendor_error"]


@dataclass(frozen=True)
class VendorError:
    message: str
    code: str | None = None
    type: str | None = None


def vendor_error(response: httpx.Response, secret: str) -> VendorError | None:
    """The envelope of an error response, with the key masked; None when the body is not one."""
    body = json_object(response)
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return None
    message, code, type_ = error.get("message"), error.get("code"), error.get("type")
    code = code if isinstance(code, str) and code else None
    type_ = type_ if isinstance(type_, str) and type_ else None
    if not isinstance(message, str) or not message or (code is None and type_ is None):
        return None
    return VendorError(message=masked(message, secret), code=code, type=type_)
