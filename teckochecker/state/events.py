"""The append-only event log of a job: every status change, trigger, action result and error."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from teckochecker.state import schema


class EventKind(str, enum.Enum):
    """Every kind of event the log holds. The values are what the store keeps and the API serves."""

    # The job's definition (the config) and its operator
    REGISTERED = "registered"
    RESTORED = "restored"
    REMOVED = "removed"
    DEFINITION_CHANGED = "definition_changed"
    TARGETS_ADDED = "targets_added"
    TARGETS_IGNORED = "targets_ignored"
    TARGETS_REMOVED = "targets_removed"
    # A discovered job's group of batches: first listed, grew, complete, late batches; or bad metadata
    GROUP_CHANGED = "group_changed"
    GROUP_FAILED = "group_failed"
    PAUSED = "paused"
    RESUMED = "resumed"
    # Watching the targets
    TARGET_CHANGED = "target_changed"
    CHECK_FAILED = "check_failed"
    TRIGGER_FIRED = "trigger_fired"
    # The job's end
    JOB_FINISHED = "job_finished"
    JOB_FAILED = "job_failed"
    DEADLINE_PASSED = "deadline_passed"
    # The actions, through the effectively-once protocol
    ACTION_SKIPPED = "action_skipped"
    ACTION_INTENT = "action_intent"
    ACTION_STARTED = "action_started"
    ACTION_ADOPTED = "action_adopted"
    ACTION_NOT_STARTED = "action_not_started"
    ACTION_IN_DOUBT = "action_in_doubt"
    ACTION_SEARCH_EMPTY = "action_search_empty"
    ACTION_PROGRESS = "action_progress"
    ACTION_FINISHED = "action_finished"
    ACTION_FAILED = "action_failed"
    ACTION_REJECTED = "action_rejected"
    ACTION_ERROR = "action_error"
    # A second job of ours found downstream after a presumed non-start
    DUPLICATE_START = "duplicate_start"
    DUPLICATE_WATCH = "duplicate_watch"
    DUPLICATE_WATCH_CLOSED = "duplicate_watch_closed"


def append_event(
    conn: Connection,
    job_id: int,
    at: dt.datetime,
    kind: EventKind,
    message: str,
    data: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(sa.insert(schema.events).values(**event_row(job_id, at, kind, message, data)))


def event_row(
    job_id: int, at: dt.datetime, kind: EventKind, message: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The row of one event, for ``append_event`` or for many events inserted at once."""
    # EventKind(kind) refuses a kind that is not listed above, even from a caller that ignores the types.
    return {"job_id": job_id, "at": at, "kind": EventKind(kind).value, "message": message, "data": dict(data or {})}
