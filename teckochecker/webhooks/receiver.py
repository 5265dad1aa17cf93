"""``POST /webhooks/openai``: OpenAI's batch events, verified and turned into "check this batch now".

The event is a hint, never a verdict: it carries only the batch id (docs/vendors.md, webhooks), so the daemon
fetches that batch through the job's own source, records what it sees and fires as a poll would. A
delivery is answered at once; the check itself runs as the job's next tick (RunningJobs.hint), which
serializes it with the job's polls and coalesces repeated hints for one batch. An unverified delivery
changes nothing, is counted by outcome, and gets a 4xx, never a 500. A verified delivery that is not a batch
event we can act on (another event type, whatever its ``data``; a body that is not a JSON object; a batch
event without a usable ``data.id``) is acknowledged as ``unwatched`` and changes nothing: refusing it would
only make the vendor retry a signed event for days.

This app runs on a listener of its own (webhooks.listen / webhooks.port), so only this path can be put
behind a TLS reverse proxy while metrics and the API stay on loopback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from teckochecker.clock import Clock
from teckochecker.config.models import MAX_TARGET_LENGTH
from teckochecker.errors import SecretError
from teckochecker.metrics import Metrics
from teckochecker.webhooks.deliveries import DeliveryOutcome, RecentIds
from teckochecker.webhooks.signature import Rejected, SignatureVerifier

PATH = "/webhooks/openai"
CHANNEL = "openai"
# A batch event is about 200 bytes; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024
BATCH_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"})
_STATUS = {
    DeliveryOutcome.MALFORMED: 400,
    DeliveryOutcome.BAD_SIGNATURE: 401,
    DeliveryOutcome.STALE: 401,
}

# (channel, batch id, monotonic time of receipt) → how many running jobs were asked to check it now.
Hint = Callable[[str, str, float], int]


class _Oversized(Exception):
    pass


class OpenAIWebhooks:
    """Handles one delivery: read (bounded), verify, de-duplicate, hint. Counts every outcome."""

    def __init__(
        self,
        verifier: SignatureVerifier,
        hint: Hint,
        metrics: Metrics,
        clock: Clock,
        logger: logging.Logger,
        *,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._verifier = verifier
        self._hint = hint
        self._leading = leading
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._recent = RecentIds()
        for outcome in DeliveryOutcome:  # every series exists from the start, so rate() sees the first one
            metrics.webhook_deliveries.labels(outcome.value)

    async def deliver(self, request: Request) -> Response:
        received = self._clock.monotonic()
        try:
            body = await _read_body(request)
        except _Oversized:
            return self._refuse(Rejected(DeliveryOutcome.MALFORMED, f"the body is over {MAX_BODY_BYTES} bytes"), 413)
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            signed = self._verifier.verify(headers, body)
        except Rejected as rejected:
            return self._refuse(rejected, _STATUS[rejected.outcome])
        except SecretError as exc:  # a signing secret became unreadable or invalid since the start
            self._log.error("webhook delivery not checked: %s", exc)
            return _answer(503, "the receiver cannot read its signing secret; try again later")
        if not self._leading():
            # A standby runs no job: acknowledging would drop the hint. OpenAI retries a non-2xx delivery,
            # and behind a proxy to every replica a retry may reach the leader; the poll is the safety net.
            self._metrics.webhook_deliveries.labels(DeliveryOutcome.STANDBY.value).inc()
            return _answer(503, "this replica stands by (it runs no job); deliver to the leader or retry")
        if signed.message_id in self._recent:
            return self._acknowledge(DeliveryOutcome.DUPLICATE)
        self._recent.remember(signed.message_id)
        batch_id, event_type = _batch_event(body)
        if event_type in BATCH_EVENTS and batch_id is None:
            # Signed by the vendor yet unreadable as the batch event it names: its format may have changed,
            # and only the poll will see this batch end.
            self._log.warning(
                "webhook %s (%s) has no usable data.id (at most %d characters); acknowledged and ignored",
                signed.message_id,
                event_type,
                MAX_TARGET_LENGTH,
            )
        if batch_id is None or not self._hint(CHANNEL, batch_id, received):
            self._log.debug("webhook %s (%s) concerns no running job", signed.message_id, event_type)
            return self._acknowledge(DeliveryOutcome.UNWATCHED)
        return self._acknowledge(DeliveryOutcome.ACCEPTED)

    def _refuse(self, rejected: Rejected, status: int) -> Response:
        self._metrics.webhook_deliveries.labels(rejected.outcome.value).inc()
        # Grouped by template in the log's repeat limiter: a flood of forgeries is a few lines and a count.
        self._log.warning("webhook delivery refused (%s): %s", rejected.outcome.value, rejected.reason)
        return _answer(status, rejected.reason)

    def _acknowledge(self, outcome: DeliveryOutcome) -> Response:
        self._metrics.webhook_deliveries.labels(outcome.value).inc()
        return JSONResponse({"received": True, "outcome": outcome.value})


def create_webhook_app(webhooks: OpenAIWebhooks) -> Starlette:
    """Only the webhook path; every other path is a 404, so the listener exposes nothing else."""
    return Starlette(
        routes=[Route(PATH, webhooks.deliver, methods=["POST"])],
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _answer(exc.status_code, str(exc.detail), exc.headers)


def _answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Oversized
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Oversized
    return bytes(body)


def _batch_event(body: bytes) -> tuple[str | None, str | None]:
    """The batch id of a batch event (None for any other event, or a batch event without a usable data.id)
    and the event type (None when the verified body is not a JSON object with a string ``type``)."""
    try:
        event: Any = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: '[' nested past the parser's depth (not a 500)
        return None, None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None, None
    kind: str = event["type"]
    data = event.get("data")
    batch_id = data.get("id") if isinstance(data, dict) else None
    if kind not in BATCH_EVENTS or not isinstance(batch_id, str) or not 0 < len(batch_id) <= MAX_TARGET_LENGTH:
        return None, kind
    return batch_id, kind
