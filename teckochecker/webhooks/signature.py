"""Standard Webhooks signatures (docs/vendors.md, webhooks), as OpenAI signs its webhooks.

A delivery carries ``webhook-id``, ``webhook-timestamp`` (unix seconds of this attempt) and
``webhook-signature`` (space-separated ``v1,<base64 HMAC-SHA256>`` entries). The signed content is
``{id}.{timestamp}.{raw body}`` and the HMAC key is the base64-*decoded* part of the ``whsec_`` secret.

The ``standardwebhooks`` package computes the signature (its ``Webhook.sign``: key decoding and signed
content). Its ``Webhook.verify`` is not used, for written reasons: it reads the wall clock itself
(``datetime.now``), where the daemon's clock is injected; and it raises ``ValueError``/``binascii.Error``/
``UnicodeDecodeError`` rather than its own error for a signature entry without a comma, bad base64 or a
body that is not UTF-8, which would turn a malformed delivery into a 500. So the headers are checked here,
every entry is compared with ``hmac.compare_digest``, and the timestamp against the injected clock.

The signature is checked before the timestamp, so a forgery counts as a bad signature whatever time it
claims, and "stale" means a genuinely signed delivery outside the window (a replay, or a skewed clock).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from standardwebhooks.webhooks import Webhook

from teckochecker.clock import Clock
from teckochecker.errors import SecretError
from teckochecker.webhooks.deliveries import DeliveryOutcome

SECRET_PREFIX = "whsec_"
# The Standard Webhooks spec: the secret is 24 to 64 random bytes.
MIN_KEY_BYTES = 24
# The reference library's window, in both directions.
TOLERANCE = 300.0
# More entries than any rotation needs; a header with thousands would only cost HMAC comparisons.
MAX_SIGNATURES = 16
_MESSAGE_ID = re.compile(r"^[\x21-\x7e]{1,256}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
# The last second of the year 9999, the last a datetime holds.
MAX_TIMESTAMP = 253_402_300_799


class Rejected(Exception):
    """A delivery that must change nothing: its outcome (for the metric) and why (for the log and the answer)."""

    def __init__(self, outcome: DeliveryOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(frozen=True)
class SignedDelivery:
    message_id: str
    timestamp: int


def signing_key(name: str, value: str) -> Webhook:
    """The verifier for one configured secret. Raises SecretError naming the secret, never its value.

    Only the full ``whsec_...`` value is accepted: the OpenAI SDK uses a value without the prefix as raw
    bytes while OpenAI signs with the decoded key, so a pasted half would verify nothing (the contract's
    "whsec_ prefix pitfall"). Refusing it at start says so at once instead of 401 for every delivery."""
    if not value.startswith(SECRET_PREFIX):
        raise SecretError(
            f"secret {name!r} is not a webhook signing secret: paste the whole value OpenAI shows, "
            f"starting with {SECRET_PREFIX!r}"
        )
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise SecretError(f"secret {name!r}: the part after {SECRET_PREFIX!r} is not valid base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise SecretError(
            f"secret {name!r}: the key is {len(key)} bytes; a webhook secret has at least {MIN_KEY_BYTES}"
        )
    return Webhook(key)


def signing_keys(names: Sequence[str], secret: Callable[[str], str]) -> list[Webhook]:
    """The verifiers for the named secrets, resolved now. Raises SecretError naming the first bad one."""
    return [signing_key(name, secret(name)) for name in names]


SigningKeys = Callable[[], Sequence[Webhook]]


class SignatureVerifier:
    """Checks one delivery against every current signing key (several while a secret is rotated)."""

    def __init__(self, keys: SigningKeys, clock: Clock, tolerance: float = TOLERANCE) -> None:
        self._keys = keys
        self._clock = clock
        self._tolerance = tolerance

    def verify(self, headers: dict[str, str], body: bytes) -> SignedDelivery:
        """The delivery's id and timestamp; raises Rejected (malformed, bad_signature or stale)."""
        message_id = headers.get("webhook-id", "")
        timestamp_text = headers.get("webhook-timestamp", "")
        if not _MESSAGE_ID.match(message_id):
            raise Rejected(DeliveryOutcome.MALFORMED, "missing or invalid webhook-id header")
        if not _TIMESTAMP.match(timestamp_text):
            raise Rejected(DeliveryOutcome.MALFORMED, "missing or invalid webhook-timestamp header (unix seconds)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(DeliveryOutcome.MALFORMED, "the body is not UTF-8 text") from None
        given = _signatures(headers.get("webhook-signature", ""))
        if not given:
            raise Rejected(DeliveryOutcome.BAD_SIGNATURE, "no v1 signature in the webhook-signature header")
        timestamp = int(timestamp_text)
        if timestamp > MAX_TIMESTAMP:
            # No clock's delivery: past the year 9999 it is not even a date the signature can be computed for.
            raise Rejected(DeliveryOutcome.MALFORMED, "webhook-timestamp is not a time (unix seconds)")
        if not self._matches(message_id, timestamp, text, given):
            raise Rejected(DeliveryOutcome.BAD_SIGNATURE, "no signature matches a configured signing secret")
        skew = self._clock.now().timestamp() - timestamp
        if abs(skew) > self._tolerance:
            direction = "old" if skew > 0 else "far in the future"
            raise Rejected(DeliveryOutcome.STALE, f"webhook-timestamp is {abs(skew):.0f} s {direction}")
        return SignedDelivery(message_id, timestamp)

    def _matches(self, message_id: str, timestamp: int, text: str, given: Sequence[bytes]) -> bool:
        signed_at = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
        matched = False
        for key in self._keys():
            expected = base64.b64decode(key.sign(message_id, signed_at, text).split(",", 1)[1])
            for signature in given:
                # Every pair is compared, match or not: the time taken says nothing about which one matched.
                matched |= hmac.compare_digest(expected, signature)
        return matched


def _signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` entries; other versions (``v1a``: asymmetric) and undecodable entries are skipped."""
    found = []
    for entry in header.split()[:MAX_SIGNATURES]:
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return found
