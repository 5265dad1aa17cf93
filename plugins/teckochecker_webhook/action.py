"""The ``webhook`` action: POST one signed JSON document per fired trigger to any URL.

Signed with Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256
of ``id.timestamp.body`` with the ``whsec_`` secret). ``webhook-id`` is the trigger id, the same on every
attempt, so a receiver that deduplicates on it (as the standard asks) sees one delivery however often it
is sent. That makes a repeated start harmless: the action sets ``repeatable_start`` and the core retries an
in-doubt POST with back-off instead of searching for it (a receiver cannot be searched).

2xx: delivered. 4xx other than 408/429, or a redirect (never followed): rejected, a person must look.
Anything else (408, 429, 5xx, no answer): retried by the core with back-off, honouring ``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import urllib.parse
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from teckochecker.errors import InDoubt, NotStarted, PermanentError, Rejected
from teckochecker.plugin_api import (
    SIGNED_WITH,
    Action,
    ActionOutcome,
    ActionRequest,
    ActionResult,
    Destination,
    Duration,
    OptionsModel,
    PluginContext,
    ReplyKind,
    SecretName,
    http_url,
)
from teckochecker.retry import parse_retry_after
from teckochecker.vendor_replies import describe, masked
from teckochecker_webhook.document import encode, webhook_document

if TYPE_CHECKING:
    import httpx  # at run time only where a request is made: validate-config and status load this module

__all__ = ["WebhookAction", "WebhookOptions"]

CONNECT_TIMEOUT = 5.0
# How much of a refusal's body is kept (apart from the run's message, which says only status and host: the
# excerpt is logged and shown to readers with a token): enough to say why, not a whole error page.
BODY_EXCERPT = 200
# The receiver's "not now" answers; every other 4xx is a refusal that sending again will not change.
RETRIED_4XX = frozenset({408, 429})
SECRET_PREFIX = "whsec_"


class WebhookOptions(OptionsModel):
    url: Destination
    # A secret name whose value is the Standard Webhooks secret: "whsec_" + base64 of 24-64 random bytes.
    secret: SecretName
    # Read timeout of the POST; connecting is always bounded by 5 s.
    timeout: Duration = Field(default=15.0, gt=0, le=300)
    # Extra facts for the receiver, passed as data.variables.
    variables: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "https://hooks.example.com/teckochecker")


class WebhookAction(Action):
    type_name = "webhook"
    Options = WebhookOptions
    options: WebhookOptions
    repeatable_start = True
    # Nothing to search, follow or watch: the POST's answer is the whole outcome.
    duplicate_watch = 0.0

    def __init__(self, options: OptionsModel, context: PluginContext) -> None:
        super().__init__(options, context)
        self.start_timeout = self.options.timeout + CONNECT_TIMEOUT

    @property
    def target_key(self) -> str:
        # Without query and user info: the key is stored with the run, and those may hold a receiver's token.
        return f"webhook:{_safe(self.options.url)}"

    async def start(self, request: ActionRequest) -> ActionResult:
        import httpx

        url = self.options.url
        body = encode(webhook_document(request, self.options.variables))
        headers = {"Content-Type": "application/json", **self._signature(request.trigger_id, body)}
        try:
            response = await self._client().post(
                url,
                content=body,
                headers=headers,
                timeout=httpx.Timeout(self.options.timeout, connect=CONNECT_TIMEOUT),
                # The signature is made with the secret: it may go only where the files bind that secret.
                extensions={**ReplyKind.RECEIVER.extensions, SIGNED_WITH: (self.options.secret,)},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotStarted(f"could not connect to the webhook at {_safe(url)}: {describe(exc)}") from exc
        except httpx.RequestError as exc:
            raise InDoubt(f"the webhook at {_safe(url)} may or may not have received it: {describe(exc)}") from exc
        return self._delivered(request, response)

    def _delivered(self, request: ActionRequest, response: httpx.Response) -> ActionResult:
        import httpx

        code, url = response.status_code, _safe(self.options.url)
        if 200 <= code < 300:
            return ActionResult(
                external_id=request.trigger_id,
                outcome=ActionOutcome.SUCCEEDED,
                vendor_status=f"HTTP {code}",
                created_at=self.context.clock.now(),
                details={"http_status": code, "url": url},
            )
        excerpt = self._excerpt(response)
        # The standard reason phrase, not the one the receiver sent: that is its text too.
        status = f"HTTP {code} {httpx.codes.get_reason_phrase(code)}".rstrip()
        if 300 <= code < 400:
            raise Rejected(
                f"the webhook at {url} redirected ({status}); redirects are not followed: configure the final URL"
            )
        if 400 <= code < 500 and code not in RETRIED_4XX:
            raise Rejected(f"the webhook at {url} refused the delivery ({status})", excerpt=excerpt)
        retry_after = parse_retry_after(response.headers, now=self.context.clock.now())
        # Not accepted; whether it was processed does not matter, as the receiver deduplicates on webhook-id.
        message = f"the webhook at {url} did not accept the delivery ({status})"
        raise NotStarted(message, retry_after=retry_after, excerpt=excerpt)

    def _signature(self, message_id: str, body: bytes) -> dict[str, str]:
        from standardwebhooks import Webhook

        signer = Webhook(self._key())
        # The library reads the time as UTC whatever its zone says; hand it UTC.
        now = self.context.clock.now().astimezone(dt.UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(message_id, now, body.decode()),
        }

    def _key(self) -> bytes:
        """The HMAC key: the base64 after "whsec_". Checked strictly (the library would skip stray
        characters and sign with a different key than the receiver's); the value is never shown."""
        value = self.context.secret(self.options.secret).strip()
        try:
            key = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not value.startswith(SECRET_PREFIX) or not key:
            raise PermanentError(
                f"secret {self.options.secret!r} is not a Standard Webhooks secret: it must be 'whsec_' followed by "
                "base64 (e.g. from `openssl rand -base64 32`)"
            )
        return key

    def _excerpt(self, response: httpx.Response) -> str | None:
        text = response.text.strip()[:BODY_EXCERPT] if response.content else ""
        return masked(text, self.context.secret(self.options.secret)) if text else None

    def _client(self) -> httpx.AsyncClient:
        parts = urllib.parse.urlsplit(_safe(self.options.url))
        origin = f"{parts.scheme}://{parts.netloc}"
        # Redirects are never followed (the pool's clients do not): a 3xx is an answer, not a detour. The POST
        # goes to the full URL (user info and query included); the pooled client is per origin.
        return self.context.http.client(f"webhook:{origin}", base_url=origin)


def _safe(url: str) -> str:
    """The URL without its query and user info, which may carry a token of the receiver's."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
