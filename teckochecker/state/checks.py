"""Recording checks: what a group of checks saw, and the triggers that fire on it, in one transaction.

A webhook burst brings hundreds of checks a second to the store's one thread, each a job row, its targets,
one changed target, one event and the job's new check time. Written a statement at a time, SQLAlchemy's
work per statement (building, keying and binding it: about 100 µs) cost more than SQLite itself. So the
rows of the whole group are read with two queries, and the common writes (target changes, their events, the
jobs' check times) go out at the end as one executemany each, on statements built once. The rarer writes
(a trigger firing, a job abandoned, a failed check's event) are made at once, after what is buffered, so a
job's events keep their order. Each job's observations and its outbox rows still commit together.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from teckochecker import rules
from teckochecker.conditions import reason_key
from teckochecker.config.models import Condition, TriggerRule
from teckochecker.errors import StateStoreError
from teckochecker.plugin_api import CheckReport, Observation, TargetState
from teckochecker.state import schema
from teckochecker.state.events import EventKind, append_event, event_row
from teckochecker.state.holds import group_hold
from teckochecker.state.models import EXCERPT, JobState, RunState, first_observation, request_counts


@dataclass(frozen=True)
class PlannedAction:
    index: int
    type: str
    target_key: str
    when: Condition


@dataclass(frozen=True)
class CheckToRecord:
    """One job's ``record_check`` arguments, for ``record_checks`` (several jobs in one transaction)."""

    name: str
    report: CheckReport
    now: dt.datetime
    next_check_at: dt.datetime | None
    deadline: float
    rule: TriggerRule
    actions: tuple[PlannedAction, ...]


_t, _j = schema.targets, schema.jobs
# Every column a check may change, always all of them (executemany needs one shape): unchanged ones get the
# value read. The bind names differ from the column names, as SQLAlchemy wants in an UPDATE's SET.
_TARGET_COLUMNS = (
    "state",
    "vendor_status",
    "details",
    "message",
    "observed_at",
    "terminal_at",
    "requests_total",
    "requests_completed",
    "requests_failed",
)
_UPDATE_TARGET = (
    sa.update(_t)
    .where(_t.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}") for name in _TARGET_COLUMNS})
)
_JOB_COLUMNS = (
    "last_checked_at",
    "next_check_at",
    "updated_at",
    "first_observed_at",
    "deadline_at",
    "consecutive_failures",
    "last_error",
)
_UPDATE_JOB = (
    sa.update(_j)
    .where(_j.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}") for name in _JOB_COLUMNS})
)
_JOBS_NAMED = sa.select(_j).where(_j.c.name.in_(sa.bindparam("names", expanding=True)))
_TARGETS_OF = sa.select(_t).where(_t.c.job_id.in_(sa.bindparam("ids", expanding=True)))


def record_checks(conn: Connection, checks: Sequence[CheckToRecord]) -> list[JobState]:
    """Each check's job state afterwards. A job checked twice in ``checks`` sees its first check's writes."""
    states: list[JobState] = []
    start = 0
    while start < len(checks):
        end, names = start, set()
        while end < len(checks) and checks[end].name not in names:
            names.add(checks[end].name)
            end += 1
        writer = _GroupWriter(conn, checks[start:end])
        states += [writer.record(check) for check in checks[start:end]]
        writer.flush()
        start = end
    return states


class _GroupWriter:
    """Checks of distinct jobs: their rows read together, their common writes buffered until ``flush``."""

    def __init__(self, conn: Connection, checks: Sequence[CheckToRecord]) -> None:
        self._conn = conn
        self._jobs = {row.name: row for row in conn.execute(_JOBS_NAMED, {"names": [c.name for c in checks]})}
        self._targets: dict[int, dict[str, Row[Any]]] = {row.id: {} for row in self._jobs.values()}
        if self._targets:
            for target in conn.execute(_TARGETS_OF, {"ids": list(self._targets)}):
                self._targets[target.job_id][target.target] = target
        self._target_updates: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._job_updates: list[dict[str, Any]] = []

    def flush(self) -> None:
        # Targets and events before the jobs, as a job's own writes were ordered when made one by one.
        if self._target_updates:
            self._conn.execute(_UPDATE_TARGET, self._target_updates)
        if self._events:
            self._conn.execute(sa.insert(schema.events), self._events)
        if self._job_updates:
            self._conn.execute(_UPDATE_JOB, self._job_updates)
        self._target_updates, self._events, self._job_updates = [], [], []

    def record(self, check: CheckToRecord) -> JobState:
        name, report, now = check.name, check.report, check.now
        row = self._jobs.get(name)
        if row is None:
            raise StateStoreError(f"no job named {name!r} in the state store")
        if row.state != JobState.WATCHING.value:
            return JobState(row.state)
        rows = self._targets[row.id]
        states = {target: TargetState(t.state) for target, t in rows.items()}
        for obs in report.observations:
            if obs.target in rows:
                states[obs.target] = self._observe(row.id, rows[obs.target], obs, now)
        changes: dict[str, Any] = {
            "last_checked_at": now,
            "next_check_at": check.next_check_at,
            "updated_at": now,
            "first_observed_at": row.first_observed_at,
            "deadline_at": row.deadline_at,
        }
        if row.first_observed_at is None and report.observations:
            changes |= first_observation(now, check.deadline)
        changes |= self._check_errors(row, report, now)
        decision = rules.evaluate(check.rule, list(states.values()))
        if decision.verdict is rules.Verdict.FIRE and group_hold(self._conn, name, rows) is not None:
            decision = rules.Decision(rules.Verdict.WAIT)
        if decision.verdict is rules.Verdict.WAIT:
            self._job_updates.append({f"b_{k}": v for k, v in changes.items()} | {"b_id": row.id})
            return JobState.WATCHING
        self.flush()
        if decision.verdict is rules.Verdict.FIRE:
            _fire(self._conn, row.id, list(states.values()), check.actions, now, decision.reason)
            state = JobState.FIRING
            changes |= {"state": state.value, "next_check_at": now}
        else:
            state = JobState.FAILED
            changes |= {"state": state.value, "finished_at": now, "last_error": decision.reason}
            append_event(
                self._conn,
                row.id,
                now,
                EventKind.JOB_FINISHED,
                f"job failed: {decision.reason}; no action was run",
                {"state": state.value},
            )
        self._conn.execute(sa.update(_j).where(_j.c.id == row.id).values(**changes))
        return state

    def _observe(self, job_id: int, row: Row[Any], obs: Observation, now: dt.datetime) -> TargetState:
        """Buffer one observation's writes if it is news; returns the target's state afterwards. Final
        states stick."""
        current = TargetState(row.state)
        if current.is_terminal:
            return current
        details = dict(obs.details)
        # The first vendor word for a target that is still where it started is not news.
        changed = row.state != obs.state.value or (
            row.vendor_status is not None and row.vendor_status != obs.vendor_status
        )
        if (
            not changed
            and row.vendor_status == obs.vendor_status
            and row.details == details
            and row.message == obs.message
        ):
            return current
        values: dict[str, Any] = {
            "state": obs.state.value,
            "vendor_status": obs.vendor_status,
            "details": details,
            "message": obs.message,
            "observed_at": now,
            "terminal_at": now if obs.state.is_terminal else row.terminal_at,
            "requests_total": row.requests_total,
            "requests_completed": row.requests_completed,
            "requests_failed": row.requests_failed,
        }
        counts = request_counts(details)
        if counts is not None:
            values |= {
                "requests_total": counts.total,
                "requests_completed": counts.completed,
                "requests_failed": counts.failed,
            }
        self._target_updates.append({f"b_{k}": v for k, v in values.items()} | {"b_id": row.id})
        if changed:
            text = f"{obs.target}: {row.vendor_status or row.state} → {obs.vendor_status or obs.state.value}"
            if obs.message:
                text += f" ({obs.message})"
            self._events.append(
                event_row(
                    job_id,
                    now,
                    EventKind.TARGET_CHANGED,
                    text,
                    {"target": obs.target, "state": obs.state.value, "vendor_status": obs.vendor_status},
                )
            )
        return TargetState(obs.state)

    def _check_errors(self, row: Row[Any], report: CheckReport, now: dt.datetime) -> dict[str, Any]:
        if not report.transient_errors:
            return {"consecutive_failures": 0, "last_error": None}
        error = _first_error(report.transient_errors)
        # One record per change of condition, not per attempt: the same failure again adds no event (the
        # job's failure count and the metrics still count every attempt).
        if not (row.consecutive_failures and _same_condition(row.last_error, error, report.transient_errors)):
            count = len(report.transient_errors)
            sample = dict(list(report.transient_errors.items())[:20])
            data: dict[str, Any] = {"errors": sample}
            if excerpts := {target: report.excerpts[target] for target in sample if target in report.excerpts}:
                data[EXCERPT] = excerpts  # what the vendor said, for readers with a token (web/routes.py)
            self._events.append(
                event_row(row.id, now, EventKind.CHECK_FAILED, f"{count} target(s) could not be checked", data)
            )
        return {"consecutive_failures": row.consecutive_failures + 1, "last_error": error}


def _fire(
    conn: Connection,
    job_id: int,
    states: Sequence[TargetState],
    actions: Sequence[PlannedAction],
    now: dt.datetime,
    reason: str,
) -> None:
    """The outbox: one pending run per action (or a skipped one), committed with the check that fired."""
    append_event(conn, job_id, now, EventKind.TRIGGER_FIRED, f"trigger fired: {reason}")
    for action in actions:
        holds = rules.condition_holds(action.when, states)
        state = RunState.PENDING if holds else RunState.SKIPPED
        conn.execute(
            sa.insert(schema.runs).values(
                job_id=job_id,
                action_index=action.index,
                action_type=action.type,
                target_key=action.target_key,
                trigger_id=str(uuid.uuid4()),
                state=state.value,
                attempt=1,
                created_at=now,
                updated_at=now,
                next_try_at=now,
                search_empty_count=0,
                details={},
                finished_at=None if holds else now,
            )
        )
        if not holds:
            append_event(
                conn,
                job_id,
                now,
                EventKind.ACTION_SKIPPED,
                f"action {action.index} ({action.type}) skipped: condition {action.when.value} does not hold",
            )


def _same_condition(before: str | None, now: str, members: Iterable[str]) -> bool:
    """Whether two failures are one condition: the same reason, whichever target and count it names."""
    return before is not None and reason_key(before, members) == reason_key(now, members)


def _first_error(errors: Mapping[str, str]) -> str:
    target, message = next(iter(errors.items()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{target}: {message}{more}"
