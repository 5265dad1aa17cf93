"""Keboola Queue job statuses and the action outcome each one means."""

from __future__ import annotations

from types import MappingProxyType

from teckochecker.plugin_api import ActionOutcome

# docs/vendors.md, Keboola. "warning" is a finished job whose child failed: our policy is success with
# warnings, so the job counts as done but stays visible. "cancelled" did nothing, yet the run we wanted
# did not happen either, so it is a failure.
JOB_STATUSES = MappingProxyType(
    {
        "created": ActionOutcome.RUNNING,
        "waiting": ActionOutcome.RUNNING,
        "processing": ActionOutcome.RUNNING,
        "terminating": ActionOutcome.RUNNING,
        "success": ActionOutcome.SUCCEEDED,
        "warning": ActionOutcome.SUCCEEDED_WITH_WARNINGS,
        "error": ActionOutcome.FAILED,
        "terminated": ActionOutcome.FAILED,
        "cancelled": ActionOutcome.FAILED,
    }
)


def job_outcome(status: str | None, is_finished: bool) -> ActionOutcome | None:
    """The outcome of a job, or None when its status is undocumented and it is not finished."""
    outcome = JOB_STATUSES.get(status or "")
    if is_finished and (outcome is None or outcome is ActionOutcome.RUNNING):
        # Keboola sets isFinished exactly when a job is final; a final status we cannot name is no success.
        return ActionOutcome.FAILED
    return outcome
