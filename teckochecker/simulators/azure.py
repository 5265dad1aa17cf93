"""A fake Azure OpenAI resource's batch API on 127.0.0.1, following docs/vendors.md, Azure.

Both URL shapes of one resource: the classic ``{endpoint}/openai/batches?api-version=YYYY-MM-DD`` (a missing
or unknown api-version is Azure's 404 "Resource not found") and the v1 ``{endpoint}/openai/v1/batches``.
Auth is the ``api-key`` header or ``Authorization: Bearer <Entra token>``. Errors use Microsoft's envelope
``{"error": {"code", "message"}}``. The batch objects and their state machine are the fake OpenAI's.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

from ._http import Outcome, RecordedRequest, Reply, json_reply
from .openai import FakeOpenAI

__all__ = ["API_VERSIONS", "FakeAzureOpenAI"]

# The GA authoring version of the spec the contract read, and a preview.
API_VERSIONS = frozenset({"2024-10-21", "2025-04-01-preview"})
_MS_CODES = {
    400: "invalidPayload",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    405: "methodNotAllowed",
    409: "conflict",
    429: "tooManyRequests",
}
_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)


class FakeAzureOpenAI(FakeOpenAI):
    """The fake OpenAI batches behind Azure's URLs, auth and error envelope."""

    def __init__(
        self, *, api_key: str = "azure-test-key", entra_token: str | None = None, record_requests: bool = True
    ) -> None:
        # The OpenAI fake underneath checks a key of its own, which only this class ever sends.
        self._inner_key = "inner-" + secrets.token_hex(8)
        super().__init__(api_key=self._inner_key, record_requests=record_requests)
        self._azure_key = api_key
        self._entra_token = entra_token

    @property
    def endpoint(self) -> str:
        """The resource endpoint as the Azure portal shows it (https://<resource>.openai.azure.com)."""
        return self._url("openai")

    @property
    def classic_base_url(self) -> str:
        return self.endpoint + "/openai"

    @property
    def v1_base_url(self) -> str:
        return self.endpoint + "/openai/v1"

    def handle(self, request: RecordedRequest) -> Outcome:
        path = request.path
        if path.startswith("/openai/v1/batches"):
            rest = path.removeprefix("/openai/v1")
        elif path.startswith("/openai/batches"):
            if request.query.get("api-version", [None])[-1] not in API_VERSIONS:
                return _ms_error(404, "Resource not found", code="404")
            rest = path.removeprefix("/openai")
        else:
            return _ms_error(404, "Resource not found", code="404")
        if not self._authorized(request.headers):
            return _ms_error(401, _DENIED, code="401")
        headers = {k: v for k, v in request.headers.items() if k not in ("api-key", "authorization")}
        headers["authorization"] = f"Bearer {self._inner_key}"
        return super().handle(dataclasses.replace(request, path="/v1" + rest, headers=headers))

    def _authorized(self, headers: dict[str, str]) -> bool:
        key = headers.get("api-key")
        if key is not None:
            return secrets.compare_digest(key.encode(), self._azure_key.encode())
        bearer = headers.get("authorization", "")
        if self._entra_token is None or not bearer.startswith("Bearer "):
            return False
        return secrets.compare_digest(bearer[7:].strip().encode(), self._entra_token.encode())

    def _error(self, status: int, payload: dict[str, Any]) -> Reply:
        message = payload.get("error", {}).get("message") or "error"
        return _ms_error(status, message)

    def _finish_injected(self, reply: Reply, target: str | None) -> Reply:
        if reply.body:
            return super()._finish_injected(reply, target)
        message = "Resource not found" if reply.status == 404 else f"HTTP {reply.status}"
        body = json.dumps({"error": {"code": _code(reply.status), "message": message}}).encode()
        return Reply(reply.status, body, {"content-type": "application/json", **reply.headers})


def _code(status: int) -> str:
    return _MS_CODES.get(status, "internalFailure" if status >= 500 else "badRequest")


def _ms_error(status: int, message: str, *, code: str | None = None) -> Reply:
    headers = {"apim-request-id": secrets.token_hex(16)}
    return json_reply(status, {"error": {"code": code or _code(status), "message": message}}, headers)
