"""Action runs through the effectively-once protocol (docs/reliability.md): each transition is one
short transaction of its own, committed before or after the downstream call as the protocol says."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from teckochecker import rules
from teckochecker.plugin_api import ActionResult, Cancellation, TargetState
from teckochecker.state import schema
from teckochecker.state.events import EventKind, append_event
from teckochecker.state.models import EXCERPT, JobState, RunState

# run_finished ends a run without a downstream result: refused at the start, or no longer resolvable.
_FINISHED_RUN_EVENTS = {RunState.REJECTED: EventKind.ACTION_REJECTED, RunState.FAILED: EventKind.ACTION_FAILED}


class RunTransitions:
    """The run half of the state store (StateStore inherits it); needs ``self._engine``."""

    _engine: Engine

    def begin_run(self, run_id: int, *, now: dt.datetime) -> bool:
        """Commit the intent to start (PENDING → SENDING) before the start call. False if another
        unresolved start holds the same downstream target; try again later."""
        try:
            with self._engine.begin() as conn:
                run = _run_row(conn, run_id)
                if run.state != RunState.PENDING.value:
                    return False
                conn.execute(
                    sa.update(schema.runs)
                    .where(schema.runs.c.id == run_id)
                    .values(state=RunState.SENDING.value, intent_at=now, updated_at=now)
                )
                append_event(
                    conn,
                    run.job_id,
                    now,
                    EventKind.ACTION_INTENT,
                    f"action {run.action_index} ({run.action_type}): starting, attempt {run.attempt}",
                    {"trigger_id": run.trigger_id, "attempt": run.attempt},
                )
                return True
        except IntegrityError:
            return False

    def run_started(
        self,
        run_id: int,
        result: ActionResult,
        *,
        now: dt.datetime,
        how: str = "started",
        watch_until: dt.datetime | None = None,
        watch_next: dt.datetime | None = None,
    ) -> None:
        """Record the start (or adoption) and, in the same transaction, arm the duplicate watch that an
        earlier presumed non-start left waiting (none without ``watch_until``)."""
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            if run.state not in (RunState.SENDING.value, RunState.IN_DOUBT.value, RunState.PENDING.value):
                return
            _set_result(conn, run_id, result, now)
            verb = "adopted" if how == "adopted" else "started"
            kind = EventKind.ACTION_ADOPTED if how == "adopted" else EventKind.ACTION_STARTED
            append_event(
                conn,
                run.job_id,
                now,
                kind,
                f"action {run.action_index} ({run.action_type}) {verb} {result.external_id}"
                + (f" ({result.url})" if result.url else ""),
                {"external_id": result.external_id, "url": result.url, "status": result.vendor_status},
            )
            _arm_watch(conn, run, now, watch_until, watch_next)

    def run_not_started(
        self,
        run_id: int,
        message: str,
        *,
        now: dt.datetime,
        next_try_at: dt.datetime,
        presumed: bool = False,
        excerpt: str | None = None,
    ) -> None:
        """A non-start: back to PENDING for a new attempt. ``presumed``: searches found nothing, but the index
        may lag longer than we waited, so the next start leaves a duplicate watch behind."""
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            w = schema.duplicate_watches
            if presumed and conn.execute(sa.select(w.c.run_id).where(w.c.run_id == run_id)).first() is None:
                conn.execute(sa.insert(w).values(run_id=run_id, job_id=run.job_id, searches=0, duplicates=[]))
            conn.execute(
                sa.update(schema.runs)
                .where(schema.runs.c.id == run_id)
                .values(
                    state=RunState.PENDING.value,
                    attempt=run.attempt + 1,
                    next_try_at=next_try_at,
                    message=message,
                    details=_with_excerpt(run.details, excerpt),
                    search_empty_count=0,
                    intent_at=None,
                    updated_at=now,
                )
            )
            append_event(
                conn,
                run.job_id,
                now,
                EventKind.ACTION_NOT_STARTED,
                f"action {run.action_index} ({run.action_type}) did not start: {message}; trying again",
                _excerpt_data(excerpt),
            )

    def run_in_doubt(
        self, run_id: int, message: str, *, now: dt.datetime, next_try_at: dt.datetime, excerpt: str | None = None
    ) -> None:
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            if run.state not in (RunState.SENDING.value, RunState.IN_DOUBT.value):
                return
            conn.execute(
                sa.update(schema.runs)
                .where(schema.runs.c.id == run_id)
                .values(
                    state=RunState.IN_DOUBT.value,
                    message=message,
                    details=_with_excerpt(run.details, excerpt),
                    next_try_at=next_try_at,
                    updated_at=now,
                )
            )
            append_event(
                conn,
                run.job_id,
                now,
                EventKind.ACTION_IN_DOUBT,
                f"action {run.action_index} ({run.action_type}) may or may not have started ({message}); "
                "searching downstream before any new start",
                _excerpt_data(excerpt),
            )

    def run_search_empty(self, run_id: int, *, now: dt.datetime, next_try_at: dt.datetime, counts: bool = True) -> int:
        """A search found nothing. It ``counts`` toward a new attempt only once the start can no longer take
        effect unseen; returns the count so far."""
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            count = int(run.search_empty_count) + (1 if counts else 0)
            conn.execute(
                sa.update(schema.runs)
                .where(schema.runs.c.id == run_id)
                .values(search_empty_count=count, next_try_at=next_try_at, updated_at=now)
            )
            text = f"action {run.action_index} ({run.action_type}): search {count} found nothing started"
            if not counts:
                text = (
                    f"action {run.action_index} ({run.action_type}): search found nothing yet; the start may "
                    f"still take effect or be hidden by the index, so it does not count (next {next_try_at:%H:%M:%S}Z)"
                )
            append_event(conn, run.job_id, now, EventKind.ACTION_SEARCH_EMPTY, text)
            return count

    def watch_searched(self, run_id: int, *, now: dt.datetime, next_search_at: dt.datetime) -> None:
        w = schema.duplicate_watches
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(w)
                .where(w.c.run_id == run_id)
                .values(searches=w.c.searches + 1, next_search_at=next_search_at)
            )

    def close_watch(self, run_id: int, message: str, *, now: dt.datetime) -> None:
        w = schema.duplicate_watches
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            closed = conn.execute(
                sa.update(w).where(w.c.run_id == run_id, w.c.closed_at.is_(None)).values(closed_at=now)
            ).rowcount
            if closed:
                append_event(
                    conn,
                    run.job_id,
                    now,
                    EventKind.DUPLICATE_WATCH_CLOSED,
                    f"action {run.action_index} ({run.action_type}): {message}",
                )

    def record_duplicate(
        self, run_id: int, duplicate: ActionResult, cancellation: Cancellation, *, now: dt.datetime
    ) -> None:
        """A second downstream start for the run's trigger, and what was done about it: on the run (shown by
        show, the API and the status page) and in the event log."""
        w = schema.duplicate_watches
        entry = {
            "external_id": duplicate.external_id,
            "vendor_status": duplicate.vendor_status,
            "cancelled": cancellation.cancelled,
            "note": cancellation.note,
            "found_at": now.isoformat(),
        }
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            row = conn.execute(sa.select(w).where(w.c.run_id == run_id)).first()
            if row is None:  # found while adopting, without a watch: keep the record all the same
                conn.execute(
                    sa.insert(w).values(
                        run_id=run_id,
                        job_id=run.job_id,
                        armed_at=now,
                        until=now,
                        closed_at=now,
                        searches=0,
                        duplicates=[entry],
                    )
                )
            elif all(d["external_id"] != duplicate.external_id for d in row.duplicates or []):
                conn.execute(sa.update(w).where(w.c.run_id == run_id).values(duplicates=[*row.duplicates, entry]))
            else:
                return
            verdict = "cancelled" if cancellation.cancelled else "NOT cancelled"
            append_event(
                conn,
                run.job_id,
                now,
                EventKind.DUPLICATE_START,
                f"action {run.action_index} ({run.action_type}): duplicate start {duplicate.external_id} "
                f"({duplicate.vendor_status or 'status unknown'}) found; {verdict}: {cancellation.note}",
                {
                    "external_id": duplicate.external_id,
                    "url": duplicate.url,
                    "status": duplicate.vendor_status,
                    "cancelled": cancellation.cancelled,
                },
            )

    def run_finished(
        self, run_id: int, state: RunState, message: str, *, now: dt.datetime, excerpt: str | None = None
    ) -> None:
        """End a run without a downstream result (rejected, or unresolvable)."""
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            conn.execute(
                sa.update(schema.runs)
                .where(schema.runs.c.id == run_id)
                .values(
                    state=state.value,
                    message=message,
                    details=_with_excerpt(run.details, excerpt),
                    finished_at=now,
                    updated_at=now,
                )
            )
            append_event(
                conn,
                run.job_id,
                now,
                _FINISHED_RUN_EVENTS[state],
                f"action {run.action_index} ({run.action_type}) {state.value}: {message}",
                _excerpt_data(excerpt),
            )

    def run_progress(self, run_id: int, result: ActionResult, *, now: dt.datetime) -> None:
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            if run.state != RunState.RUNNING.value:
                return
            state = _set_result(conn, run_id, result, now)
            if state.is_final or result.vendor_status != run.vendor_status:
                text = f"action {run.action_index} ({run.action_type}) {result.external_id}: {result.vendor_status}"
                if result.message and state.is_final:
                    text += f": {result.message}"
                append_event(
                    conn,
                    run.job_id,
                    now,
                    EventKind.ACTION_FINISHED if state.is_final else EventKind.ACTION_PROGRESS,
                    text,
                    {"external_id": result.external_id, "status": result.vendor_status, "outcome": state.value},
                )

    def defer_run(
        self, run_id: int, message: str, *, now: dt.datetime, next_try_at: dt.datetime, excerpt: str | None = None
    ) -> None:
        with self._engine.begin() as conn:
            run = _run_row(conn, run_id)
            conn.execute(
                sa.update(schema.runs)
                .where(schema.runs.c.id == run_id)
                .values(
                    next_try_at=next_try_at,
                    message=message,
                    details=_with_excerpt(run.details, excerpt),
                    updated_at=now,
                )
            )
            append_event(
                conn,
                run.job_id,
                now,
                EventKind.ACTION_ERROR,
                f"action {run.action_index} ({run.action_type}): {message}; trying again",
                _excerpt_data(excerpt),
            )

    def finish_job_if_done(self, name: str, *, now: dt.datetime) -> JobState | None:
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.name == name)).one()
            if row.state != JobState.FIRING.value:
                return None
            run_states = [
                RunState(s)
                for (s,) in conn.execute(sa.select(schema.runs.c.state).where(schema.runs.c.job_id == row.id))
            ]
            if not all(s.is_final for s in run_states):
                return None
            w = schema.duplicate_watches
            watching = conn.execute(
                sa.select(w.c.run_id).where(w.c.job_id == row.id, w.c.armed_at.is_not(None), w.c.closed_at.is_(None))
            ).first()
            if watching is not None:  # a duplicate may still surface: the job is not done before its watch
                return None
            target_states = [
                TargetState(s)
                for (s,) in conn.execute(sa.select(schema.targets.c.state).where(schema.targets.c.job_id == row.id))
            ]
            final = rules.final_job_state(target_states, run_states)
            conn.execute(
                sa.update(schema.jobs)
                .where(schema.jobs.c.id == row.id)
                .values(state=final.value, finished_at=now, updated_at=now, next_check_at=None)
            )
            append_event(
                conn,
                row.id,
                now,
                EventKind.JOB_FINISHED,
                f"job {final.value.replace('_', ' ')}",
                {"state": final.value},
            )
            return final


def _set_result(conn: Connection, run_id: int, result: ActionResult, now: dt.datetime) -> RunState:
    state = RunState.from_outcome(result.outcome)
    conn.execute(
        sa.update(schema.runs)
        .where(schema.runs.c.id == run_id)
        .values(
            state=state.value,
            external_id=result.external_id,
            external_url=result.url,
            vendor_status=result.vendor_status,
            message=result.message,
            details=dict(result.details),
            updated_at=now,
            finished_at=now if state.is_final else None,
        )
    )
    return state


def _arm_watch(
    conn: Connection, run: Row[Any], now: dt.datetime, until: dt.datetime | None, next_search_at: dt.datetime | None
) -> None:
    w = schema.duplicate_watches
    pending = (w.c.run_id == run.id) & w.c.armed_at.is_(None)
    if conn.execute(sa.select(w.c.run_id).where(pending)).first() is None:
        return
    if until is None or until <= now:
        conn.execute(sa.update(w).where(pending).values(armed_at=now, until=now, closed_at=now))
        return
    conn.execute(sa.update(w).where(pending).values(armed_at=now, until=until, next_search_at=next_search_at))
    append_event(
        conn,
        run.job_id,
        now,
        EventKind.DUPLICATE_WATCH,
        f"action {run.action_index} ({run.action_type}): an earlier start may have happened unseen; "
        f"searching for a duplicate until {until:%Y-%m-%d %H:%M:%S}Z",
        {"until": until.isoformat()},
    )


def _with_excerpt(details: Mapping[str, Any] | None, excerpt: str | None) -> dict[str, Any]:
    """The run's details with the excerpt of the answer behind its new message (none: the old one goes)."""
    kept = {key: value for key, value in (details or {}).items() if key != EXCERPT}
    return {**kept, EXCERPT: excerpt} if excerpt else kept


def _excerpt_data(excerpt: str | None) -> dict[str, Any] | None:
    return {EXCERPT: excerpt} if excerpt else None


def _run_row(conn: Connection, run_id: int) -> Row[Any]:
    return conn.execute(sa.select(schema.runs).where(schema.runs.c.id == run_id)).one()
