"""A webhook receiver on 127.0.0.1 that does what Standard Webhooks asks of one (docs/vendors.md, webhooks):
verify ``webhook-signature`` over ``id.timestamp.body`` with the shared secret, refuse a timestamp outside
±5 minutes, and deduplicate on ``webhook-id`` (a repeated id is acknowledged and not processed again).

``deliveries`` holds every verified, first-time message; ``attempts`` every POST, verified or not. Tests
script answers with ``inject`` (e.g. a 503 and then a success) to drive the sender's retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from ._http import LoopbackFake, Outcome, RecordedRequest, Reply, Reset, json_reply

__all__ = ["Delivery", "FakeWebhookReceiver"]


@dataclass(frozen=True)
class Delivery:
    """One verified message, processed once."""

    message_id: str
    timestamp: str
    payload: Any
    body: bytes


@dataclass
class _Injection:
    outcome: Outcome
    times: int
    # Whether the receiver processes the message before answering (a 500 after the work was done).
    process: bool


class FakeWebhookReceiver(LoopbackFake):
    def __init__(self, *, secret: str, path: str = "/hooks/teckochecker") -> None:
        super().__init__(("webhook",))
        self._verifier = Webhook(secret)
        self._path = path
        self._injections: list[_Injection] = []
        self.deliveries: list[Delivery] = []
        self.duplicates: list[str] = []
        self.refused: list[str] = []

    @property
    def url(self) -> str:
        return self._url("webhook") + self._path

    def inject(
        self,
        status: int | None = None,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        reset: bool = False,
        process: bool = False,
    ) -> None:
        """The next `times` POSTs get this answer (or a TCP reset) instead of 204; with `process` the message
        is processed first, as a receiver that fails after doing the work would."""
        outcome: Outcome = Reset() if reset else Reply(status or 500, body, dict(headers or {}))
        with self._lock:
            self._injections.append(_Injection(outcome, times, process))

    @property
    def attempts(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def handle(self, request: RecordedRequest) -> Outcome:
        if request.method != "POST" or request.path != self._path:
            return json_reply(404, {"error": "not found"})
        with self._lock:
            injection = self._take_injection()
            if injection is not None:
                if injection.process:
                    self._receive_message(request)
                return injection.outcome
            return self._receive_message(request)

    def _receive_message(self, request: RecordedRequest) -> Reply:
        try:
            payload = self._verifier.verify(request.body, request.headers)
        except (WebhookVerificationError, ValueError) as exc:
            self.refused.append(str(exc))
            return json_reply(400, {"error": f"signature: {exc}"})
        message_id = request.headers["webhook-id"]
        if any(d.message_id == message_id for d in self.deliveries):
            self.duplicates.append(message_id)
            return Reply(204)
        self.deliveries.append(Delivery(message_id, request.headers["webhook-timestamp"], payload, bytes(request.body)))
        return Reply(204)

    def _take_injection(self) -> _Injection | None:
        if not self._injections:
            return None
        injection = self._injections[0]
        injection.times -= 1
        if injection.times <= 0:
            self._injections.pop(0)
        return injection
