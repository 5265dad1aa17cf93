"""What became of one webhook delivery, and the delivery ids already handled.

A vendor retries a delivery it thinks failed, with the same ``webhook-id``; a replay (or a retry of one we
did answer) is acknowledged and ignored. The memory is bounded and lost on restart, which is harmless:
a delivery is only a hint to check a batch now, and checking a finished batch again changes nothing.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

# Ids remembered per receiver (about 150 bytes each): far more than the deliveries of a vendor's retry window
# for any one batch burst; an id pushed out only costs one more (harmless) check.
RECENT_IDS = 10_000


class DeliveryOutcome(str, enum.Enum):
    """The ``outcome`` label of teckochecker_webhook_deliveries_total."""

    ACCEPTED = "accepted"  # verified, and at least one job was asked to check the batch now
    DUPLICATE = "duplicate"  # a webhook-id already handled: acknowledged, nothing done
    BAD_SIGNATURE = "bad_signature"  # unsigned, or no signature matches a configured secret: 401
    STALE = "stale"  # correctly signed, but the timestamp is outside ±5 min: 401
    MALFORMED = "malformed"  # missing headers, oversized, not UTF-8, not an event we can read: 400/413
    UNWATCHED = "unwatched"  # verified, but no running job watches that batch (or not a batch event)
    STANDBY = "standby"  # verified, but this replica stands by (runs no job): 503, so the sender retries


class RecentIds:
    """The last ``capacity`` delivery ids, oldest forgotten first."""

    def __init__(self, capacity: int = RECENT_IDS) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def remember(self, message_id: str) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
