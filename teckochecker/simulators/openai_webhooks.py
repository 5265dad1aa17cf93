"""The fake OpenAI's webhook deliveries (docs/vendors.md, webhooks).

When a batch reaches completed, failed, expired or cancelled, the fake POSTs a thin, signed event
(``{"id","object":"event","type":"batch.<status>","created_at","data":{"id"}}``) to the configured URL,
with the Standard Webhooks headers. Delivery follows the contract where it is simple: any 2xx is delivered;
anything else (or no answer) is retried with exponential back-off, the same ``webhook-id`` and a fresh
timestamp and signature per attempt; no ordering between events. Sent from worker threads, so a slow
receiver never holds the fake's API.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass

import httpx
from standardwebhooks.webhooks import Webhook

# Attempts per event, and the first pause between two (doubled each time, capped). The real service
# retries for up to 72 h; a test needs a few seconds.
MAX_ATTEMPTS = 5
FIRST_RETRY = 0.5
MAX_RETRY = 8.0
TIMEOUT = 10.0


@dataclass(frozen=True)
class WebhookEvent:
    message_id: str  # webhook-id: the same on every attempt
    body: bytes
    batch_id: str  # empty for an event that concerns no batch
    type: str
    created: float  # time.monotonic() when the batch reached the status (for latency figures)


@dataclass(frozen=True)
class DeliveryAttempt:
    event: WebhookEvent
    attempt: int
    status: int | None  # None: no answer (refused, reset, timed out)
    at: float  # time.monotonic() when the answer came


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt, signed with ``secret`` (``whsec_...``)."""
    signed_at = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    signature = Webhook(secret).sign(message_id, signed_at, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)",
    }


def batch_event(batch_id: str, status: str, created_at: int) -> WebhookEvent:
    kind = f"batch.{status}"
    body = {
        "id": "evt_" + secrets.token_hex(16),
        "object": "event",
        "created_at": created_at,
        "type": kind,
        "data": {"id": batch_id},
    }
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return WebhookEvent("wh_" + secrets.token_hex(16), encoded, batch_id, kind, time.monotonic())


def other_event(kind: str, data: object, created_at: int) -> WebhookEvent:
    """A signed event of another kind than a batch's (``realtime.call.incoming``, ``live.call.incoming``,
    ``safety_identifier.blocked``, ...): OpenAI sends those to the same endpoint, with a ``data`` of other
    fields or no object at all. ``batch_id`` is empty: it concerns no batch."""
    body = {
        "id": "evt_" + secrets.token_hex(16),
        "object": "event",
        "created_at": created_at,
        "type": kind,
        "data": data,
    }
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return WebhookEvent("wh_" + secrets.token_hex(16), encoded, "", kind, time.monotonic())


class WebhookSender:
    """Delivers events to one URL from ``workers`` threads; ``attempts`` records every try."""

    def __init__(self, url: str, secret: str, *, workers: int = 4, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.url = url
        self._secret = secret
        self._max_attempts = max_attempts
        self._queue: queue.Queue[WebhookEvent | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.attempts: list[DeliveryAttempt] = []
        self._threads = [
            threading.Thread(target=self._work, name=f"fake-openai-webhooks-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def send(self, event: WebhookEvent) -> None:
        self._queue.put(event)

    def delivered(self) -> list[DeliveryAttempt]:
        """The attempts answered with a 2xx."""
        with self._lock:
            return [a for a in self.attempts if a.status is not None and 200 <= a.status < 300]

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def stop(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _work(self) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            while True:
                event = self._queue.get()
                try:
                    if event is None:
                        return
                    self._deliver(client, event)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, event: WebhookEvent) -> None:
        pause = FIRST_RETRY
        for attempt in range(1, self._max_attempts + 1):
            headers = sign(self._secret, event.message_id, int(time.time()), event.body)
            try:
                status: int | None = client.post(self.url, content=event.body, headers=headers).status_code
            except httpx.HTTPError:
                status = None
            with self._lock:
                self.attempts.append(DeliveryAttempt(event, attempt, status, time.monotonic()))
            if status is not None and 200 <= status < 300:
                return
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, MAX_RETRY)


def flood_unknown_batches(sender: WebhookSender, *, per_minute: float, seconds: float) -> int:
    """Queue signed ``batch.completed`` events for batches nobody created, evenly spaced at ``per_minute`` for
    ``seconds`` (what an attacker holding the signing secret, or a busy shared account, could send). Blocks
    for ``seconds``; returns how many were queued. Each id is new, so no delivery is a duplicate."""
    gap = 60.0 / per_minute
    started = time.monotonic()
    sent = 0
    while (due := started + sent * gap) < started + seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        sender.send(batch_event(f"batch_unknown_{secrets.token_hex(8)}", "completed", int(time.time())))
        sent += 1
    return sent
