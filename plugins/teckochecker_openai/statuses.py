"""OpenAI batch statuses and what each one means to TeckoChecker."""

from __future__ import annotations

from types import MappingProxyType

from teckochecker.plugin_api import TargetState

# Every status the OpenAI SDK and spec document (docs/vendors.md, OpenAI batches). "cancelling" is not terminal:
# a cancelled batch may still finish partial work for up to 10 minutes, so it is RUNNING until "cancelled".
BATCH_STATUSES = MappingProxyType(
    {
        "validating": TargetState.PENDING,
        "in_progress": TargetState.RUNNING,
        "finalizing": TargetState.RUNNING,
        "cancelling": TargetState.RUNNING,
        "completed": TargetState.SUCCEEDED,
        "failed": TargetState.FAILED,
        "expired": TargetState.EXPIRED,
        "cancelled": TargetState.CANCELLED,
    }
)


def batch_state(status: str) -> TargetState:
    """The normalized state of a vendor status; UNKNOWN (never an exception) for one OpenAI adds later."""
    return BATCH_STATUSES.get(status, TargetState.UNKNOWN)


# The status timestamps of a Batch object, each set when the batch enters that state.
TIMESTAMP_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
