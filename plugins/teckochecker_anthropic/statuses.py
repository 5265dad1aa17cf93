"""Anthropic Message Batch statuses and what each one means to TeckoChecker.

``processing_status`` says only whether a batch has ended (docs/vendors.md, Anthropic); how it ended is in its
``request_counts``, which stay 0 until the whole batch has ended. The rule for an ended batch, first match:

1. some request ``canceled``  → CANCELLED (someone cancelled the batch; what finished before is kept)
2. some request ``expired``   → EXPIRED   (the 24 h window ran out; partial results, like OpenAI's)
3. every request ``errored``  → FAILED
4. otherwise                  → SUCCEEDED (some requests may have errored: the message says how many)

An ended batch whose counts are missing or add up to nothing is FAILED: nothing can be said to have worked.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from teckochecker.plugin_api import TargetState

__all__ = ["COUNT_FIELDS", "PROCESSING_STATUSES", "TIMESTAMP_FIELDS", "batch_state", "request_counts"]

# Only "ended" is terminal; "canceling" (one "l") still finishes requests in flight.
PROCESSING_STATUSES = MappingProxyType(
    {"in_progress": TargetState.RUNNING, "canceling": TargetState.RUNNING, "ended": TargetState.SUCCEEDED}
)
COUNT_FIELDS = ("processing", "succeeded", "errored", "canceled", "expired")
TIMESTAMP_FIELDS = ("created_at", "expires_at", "ended_at", "cancel_initiated_at", "archived_at")


def request_counts(batch: Mapping[str, Any]) -> dict[str, int] | None:
    """The five counts, or None when the object does not carry all of them as integers."""
    counts = batch.get("request_counts")
    if not isinstance(counts, dict):
        return None
    values = {name: counts.get(name) for name in COUNT_FIELDS}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
        return None
    return {name: int(v) for name, v in values.items() if v is not None}


def batch_state(processing_status: str, counts: Mapping[str, int] | None) -> tuple[TargetState, str | None]:
    """The normalized state of a batch and, when worth saying, why; UNKNOWN for a status Anthropic adds later."""
    state = PROCESSING_STATUSES.get(processing_status, TargetState.UNKNOWN)
    if state is not TargetState.SUCCEEDED:
        return state, None
    total = sum(counts.values()) if counts else 0
    if not counts or total == 0:
        return TargetState.FAILED, "the batch ended without any request counted"
    if counts["canceled"]:
        return TargetState.CANCELLED, f"{counts['canceled']} of {total} requests were canceled"
    if counts["expired"]:
        return TargetState.EXPIRED, f"{counts['expired']} of {total} requests expired before they ran"
    if counts["errored"] == total:
        return TargetState.FAILED, f"all {total} requests errored"
    if counts["errored"]:
        return TargetState.SUCCEEDED, f"{counts['errored']} of {total} requests errored"
    return TargetState.SUCCEEDED, None
