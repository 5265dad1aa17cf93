"""The state store: every read and write of TeckoChecker's state goes through here.

Each public method is one short transaction. Nothing here does network I/O, so no transaction is ever
open across an HTTP call (docs/reliability.md). Methods are synchronous; the daemon runs them on
one worker thread so the event loop never blocks on an fsync.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from teckochecker.config.models import TriggerRule
from teckochecker.errors import NoStateStore, StateStoreError
from teckochecker.plugin_api import CheckReport, TargetState
from teckochecker.state import checks as checks_module
from teckochecker.state import revisions, schema
from teckochecker.state.checks import CheckToRecord as CheckToRecord
from teckochecker.state.checks import PlannedAction as PlannedAction
from teckochecker.state.events import EventKind, append_event
from teckochecker.state.leadership import UNFENCED
from teckochecker.state.location import sqlite_path
from teckochecker.state.models import (
    EXCERPT,
    Duplicate,
    DuplicateWatch,
    Event,
    JobGauges,
    JobOrigin,
    JobSnapshot,
    JobState,
    PutOutcome,
    RegisteredJob,
    RegistryVersion,
    RunSnapshot,
    RunState,
    TargetSnapshot,
)
from teckochecker.state.redaction import Redact, redact_writes
from teckochecker.state.runs import RunTransitions

_JOB_FINAL = [s.value for s in JobState if s.is_final]
# Changed (to a fresh uuid) in the transaction of every put or remove of a registered job.
REGISTRY_TOKEN_META = "registered_jobs_token"
# Written by the daemon: the registered names a file job shadows, and notes for `status` (registered_jobs.py).
CONFLICTS_META = "registered_job_conflicts"
_JOB_NAMED = sa.select(schema.jobs).where(schema.jobs.c.name == sa.bindparam("name"))
_ORIGIN_OF = sa.select(schema.registered_jobs.c.name, schema.registered_jobs.c.origin).where(
    schema.registered_jobs.c.name == sa.bindparam("name")
)
_TARGETS_OF_JOB = (
    sa.select(schema.targets)
    .where(schema.targets.c.job_id == sa.bindparam("job_id"))
    .order_by(schema.targets.c.position)
)
_RUNS_OF_JOB = (
    sa.select(schema.runs).where(schema.runs.c.job_id == sa.bindparam("job_id")).order_by(schema.runs.c.action_index)
)
_WATCHES_OF_JOB = sa.select(schema.duplicate_watches).where(schema.duplicate_watches.c.job_id == sa.bindparam("job_id"))


@dataclass(frozen=True)
class JobPlan:
    """What the store needs to know of a configured job."""

    name: str
    fingerprint: str
    targets: Sequence[str]
    # Seconds from the first observation to the deadline; a changed one moves a watching job's deadline.
    deadline: float | None = None


class StateStore(RunTransitions):
    """Jobs, their targets and event log; the action-run transitions come from RunTransitions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # What opening it did to the schema (state/revisions.py), for the daemon to log; None when read-only.
        self.schema_upgrade: revisions.Upgrade | None = None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        readonly: bool = False,
        redact: Redact | None = None,
        upgrade: bool = True,
        timeouts: schema.StoreTimeouts | None = None,
    ) -> StateStore:
        """``redact`` masks secret values in every text the store writes (the daemon's Redactor.redact).

        A writable store is brought to the head schema revision, or with ``upgrade=False`` must already be
        there; a read-only one may be older, never newer than this code."""
        path = sqlite_path(url)
        if readonly and path is not None and not path.exists():
            raise NoStateStore(f"no state store at {path} (has the daemon run with this config?)")
        try:
            engine = schema.create_engine(url, readonly=readonly, timeouts=timeouts)
            if redact is not None:
                redact_writes(engine, redact)
            store = cls(engine)
            if readonly:
                try:
                    store._check_schema()
                except StateStoreError:
                    engine.dispose()
                    raise
            else:
                store._prepare_schema(upgrade)
        except SQLAlchemyError as exc:
            raise StateStoreError(f"cannot open the state store: {_describe(exc)}") from exc
        return store

    @staticmethod
    def schema_status(url: str) -> revisions.SchemaStatus:
        """The schema revision of the store at ``url``, read without creating or changing anything."""
        path = sqlite_path(url)
        if path is not None and not path.exists():
            raise NoStateStore(f"no state store at {path} yet")
        try:
            engine = schema.create_engine(url, readonly=True)
            try:
                return revisions.current(engine)
            finally:
                engine.dispose()
        except SQLAlchemyError as exc:
            raise StateStoreError(f"cannot open the state store: {_describe(exc)}") from exc

    def close(self) -> None:
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def set_meta(self, key: str, value: str) -> None:
        """Small daemon-wide facts (e.g. the last config reload) that `status` shows."""
        # Not acting on jobs: any replica, leader or standby, may record these (state/leadership.py).
        with self._engine.connect() as conn, conn.execution_options(**{UNFENCED: True}).begin():
            _put_meta(conn, key, value)

    def get_meta(self, key: str) -> str | None:
        m = schema.meta_table
        with self._engine.connect() as conn:
            return conn.execute(sa.select(m.c.value).where(m.c.key == key)).scalar()

    def ping(self) -> None:
        """Reads the tables every job and every PUT needs: a table locked by hand fails this (after the lock
        timeout on PostgreSQL), where SELECT 1 answered and /readyz said ready."""
        with self._engine.connect() as conn:
            conn.execute(sa.select(schema.jobs.c.id).limit(1)).all()
            conn.execute(sa.select(schema.registered_jobs.c.name).limit(1)).all()

    def _prepare_schema(self, upgrade: bool) -> None:
        try:
            if upgrade:
                self.schema_upgrade = revisions.upgrade(self._engine)
            else:
                found = revisions.require_current(self._engine)
                self.schema_upgrade = revisions.Upgrade(found, found)
        except Exception:
            self._engine.dispose()
            raise

    def _check_schema(self) -> None:
        if not sa.inspect(self._engine).has_table("tc_jobs"):
            raise NoStateStore("the state store has no TeckoChecker tables yet (has the daemon run?)")
        revisions.current(self._engine)  # refuses a revision newer than this code

    # ----- configured jobs -----

    def sync_jobs(self, plans: Iterable[JobPlan], now: dt.datetime) -> None:
        """Make the stored jobs match the configured ones; history of removed jobs is kept."""
        plans = list(plans)
        with self._engine.begin() as conn:
            existing = {row.name: row for row in conn.execute(sa.select(schema.jobs))}
            origins = _origins(conn)
            for plan in plans:
                row = existing.get(plan.name)
                origin = origins.get(plan.name, JobOrigin.FILE)
                if row is None:
                    self._insert_job(conn, plan, origin, now)
                else:
                    self._update_job(conn, row, plan, origin, now)
            configured = {p.name for p in plans}
            for name, row in existing.items():
                if name not in configured and not row.removed:
                    conn.execute(
                        sa.update(schema.jobs).where(schema.jobs.c.id == row.id).values(removed=True, updated_at=now)
                    )
                    append_event(
                        conn,
                        row.id,
                        now,
                        EventKind.REMOVED,
                        "job is no longer in the configuration; its history is kept",
                    )

    def _insert_job(self, conn: Connection, plan: JobPlan, origin: JobOrigin, now: dt.datetime) -> None:
        inserted = conn.execute(
            sa.insert(schema.jobs).values(
                name=plan.name,
                origin=origin.value,
                fingerprint=plan.fingerprint,
                state=JobState.WATCHING.value,
                removed=False,
                paused=False,
                created_at=now,
                updated_at=now,
                consecutive_failures=0,
            )
        ).inserted_primary_key
        assert inserted is not None  # an INSERT into a table with a primary key always has one
        job_id = int(inserted[0])
        _insert_targets(conn, job_id, plan.targets, 0)
        append_event(conn, job_id, now, EventKind.REGISTERED, f"job registered with {len(plan.targets)} target(s)")

    def _update_job(self, conn: Connection, row: Row[Any], plan: JobPlan, origin: JobOrigin, now: dt.datetime) -> None:
        changes: dict[str, Any] = {}
        if row.origin != origin.value:
            changes["origin"] = origin.value
        if row.removed:
            changes["removed"] = False
            append_event(conn, row.id, now, EventKind.RESTORED, "job is back in the configuration")
        if row.fingerprint != plan.fingerprint:
            changes["fingerprint"] = plan.fingerprint
            append_event(conn, row.id, now, EventKind.DEFINITION_CHANGED, "job definition changed")
        known = {
            t: position
            for t, position in conn.execute(
                sa.select(schema.targets.c.target, schema.targets.c.position).where(schema.targets.c.job_id == row.id)
            )
        }
        watching = row.state == JobState.WATCHING.value
        if watching:
            # A watching job watches what its definition lists now: a target taken out goes with its facts,
            # so the trigger never waits for it and no action hears of it. A job that fired keeps them all.
            wanted = set(plan.targets)
            gone = [t for t in known if t not in wanted]
            if gone:
                _delete_targets(conn, row.id, gone)
                append_event(
                    conn,
                    row.id,
                    now,
                    EventKind.TARGETS_REMOVED,
                    f"{len(gone)} target(s) removed",
                    {"targets": gone[:20]},
                )
            changes |= _moved_deadline(row, plan)
        added = [t for t in plan.targets if t not in known]
        if added and watching:
            _insert_targets(conn, row.id, added, max(known.values(), default=-1) + 1)
            append_event(
                conn, row.id, now, EventKind.TARGETS_ADDED, f"{len(added)} target(s) added", {"targets": added}
            )
        elif added:
            append_event(
                conn,
                row.id,
                now,
                EventKind.TARGETS_IGNORED,
                f"{len(added)} new target(s) ignored: the job already fired",
            )
        if changes:
            conn.execute(sa.update(schema.jobs).where(schema.jobs.c.id == row.id).values(updated_at=now, **changes))

    # ----- registered jobs (origin api or discovered) -----

    def registered_jobs(self, names: Iterable[str] | None = None) -> list[RegisteredJob]:
        """Every registered job, or only those named (a replica re-reads only what changed)."""
        r = schema.registered_jobs
        query = sa.select(r).order_by(r.c.name)
        with self._engine.connect() as conn:
            if names is None:
                return [_registered(row) for row in conn.execute(query)]
            wanted, found = list(names), []
            for start in range(0, len(wanted), 500):  # bounded IN lists
                chunk = wanted[start : start + 500]
                found += [_registered(row) for row in conn.execute(query.where(r.c.name.in_(chunk)))]
            return found

    def registered_stamps(self) -> dict[str, tuple[str, dt.datetime]]:
        """Each registered job's fingerprint and last update, without the bodies: what changed since a read."""
        r = schema.registered_jobs
        with self._engine.connect() as conn:
            return {n: (f, u) for n, f, u in conn.execute(sa.select(r.c.name, r.c.fingerprint, r.c.updated_at))}

    def registry_version(self) -> RegistryVersion:
        """One cheap query: what a replica compares to know whether to re-read the registered jobs."""
        r, m = schema.registered_jobs, schema.meta_table
        with self._engine.connect() as conn:
            count, latest = conn.execute(sa.select(sa.func.count(), sa.func.max(r.c.updated_at))).one()
            token = conn.execute(sa.select(m.c.value).where(m.c.key == REGISTRY_TOKEN_META)).scalar()
        return RegistryVersion(token, int(count), latest)

    def put_registered_job(
        self,
        name: str,
        origin: JobOrigin,
        body: Mapping[str, Any],
        details: Mapping[str, Any] | None = None,
        *,
        now: dt.datetime,
    ) -> PutOutcome:
        """Create or replace a registered job. The same body (and origin, and details when given) again is
        UNCHANGED and writes nothing, so a retried PUT changes nothing. ``details=None`` keeps the stored ones."""
        r = schema.registered_jobs
        fingerprint = body_fingerprint(body)
        with self._registry_transaction(fenced=origin is not JobOrigin.API) as conn:
            row = conn.execute(sa.select(r).where(r.c.name == name)).first()
            if row is None:
                values: dict[str, Any] = {"name": name, "origin": origin.value, "created_at": now, "updated_at": now}
                values |= {"body": dict(body), "details": dict(details or {}), "fingerprint": fingerprint}
                conn.execute(sa.insert(r).values(**values))
                outcome = PutOutcome.CREATED
            else:
                changes: dict[str, Any] = {}
                if row.fingerprint != fingerprint:
                    changes |= {"body": dict(body), "fingerprint": fingerprint}
                if row.origin != origin.value:
                    changes["origin"] = origin.value
                if details is not None and dict(row.details or {}) != dict(details):
                    changes["details"] = dict(details)
                if not changes:
                    return PutOutcome.UNCHANGED
                conn.execute(sa.update(r).where(r.c.name == name).values(updated_at=now, **changes))
                outcome = PutOutcome.UPDATED
            self._bump_registry_token(conn)
            return outcome

    def remove_registered_job(self, name: str) -> bool:
        """False if there was no such registered job. The job's history in tc_jobs is kept, as for a file job."""
        r = schema.registered_jobs
        with self._registry_transaction(fenced=False) as conn:
            if conn.execute(sa.delete(r).where(r.c.name == name)).rowcount == 0:
                return False
            self._bump_registry_token(conn)
            return True

    def registry_notes(self) -> list[str]:
        """What the daemon last reported about the registered jobs (shadowed by a file job, invalid)."""
        recorded = self.get_meta(CONFLICTS_META)
        return [str(note) for note in json.loads(recorded).get("notes", [])] if recorded else []

    @contextlib.contextmanager
    def _registry_transaction(self, *, fenced: bool) -> Iterator[Connection]:
        # A job registered over the API is declarative input, like a line in a config file: any replica may
        # accept a PUT or DELETE (unfenced), and only the leader acts on it, with fenced writes
        # (state/leadership.py), so a pipeline calling a Service in front of two replicas never gets a 503
        # from the standby. Discovery's group rows are the leader's own state: fenced, so a leader paused
        # mid-pass cannot overwrite its successor's group when it wakes.
        if fenced:
            with self._engine.begin() as conn:
                yield conn
            return
        with self._engine.connect() as conn, conn.execution_options(**{UNFENCED: True}).begin():
            yield conn

    def _bump_registry_token(self, conn: Connection) -> None:
        _put_meta(conn, REGISTRY_TOKEN_META, uuid.uuid4().hex)

    # ----- reading -----

    def job(self, name: str) -> JobSnapshot | None:
        # Statements built once: a firing job is read at each of its ticks, thousands a minute in a burst.
        with self._engine.connect() as conn:
            row = conn.execute(_JOB_NAMED, {"name": name}).first()
            if row is None:
                return None
            origins = {n: JobOrigin(o) for n, o in conn.execute(_ORIGIN_OF, {"name": name})}
            if origins:
                origins = _without_shadowed(conn, origins)
            targets = conn.execute(_TARGETS_OF_JOB, {"job_id": row.id}).all()
            runs = conn.execute(_RUNS_OF_JOB, {"job_id": row.id}).all()
            watches = _watches(conn.execute(_WATCHES_OF_JOB, {"job_id": row.id}))
            return _job_snapshot(row, targets, runs, watches, origins)

    def jobs(self, *, include_removed: bool = True) -> list[JobSnapshot]:
        with self._engine.connect() as conn:
            query = sa.select(schema.jobs).order_by(schema.jobs.c.name)
            if not include_removed:
                query = query.where(schema.jobs.c.removed.is_(False))
            rows = conn.execute(query).all()
            targets = _group(conn.execute(sa.select(schema.targets).order_by(schema.targets.c.position)))
            runs = _group(conn.execute(sa.select(schema.runs).order_by(schema.runs.c.action_index)))
            watches = _watches(conn.execute(sa.select(schema.duplicate_watches)))
            origins = _origins(conn)
            return [_job_snapshot(r, targets.get(r.id, []), runs.get(r.id, []), watches, origins) for r in rows]

    def gauges(self) -> JobGauges:
        """The counts behind the state gauges, as aggregate queries (cheap even with thousands of targets)."""
        j, t = schema.jobs, schema.targets
        live = j.c.removed.is_(False)
        with self._engine.connect() as conn:
            counted = conn.execute(sa.select(j.c.state, sa.func.count()).where(live).group_by(j.c.state))
            jobs = dict.fromkeys((s.value for s in JobState), 0) | {state: n for state, n in counted}
            per_target = conn.execute(
                sa.select(j.c.name, t.c.state, sa.func.count())
                .join(t, t.c.job_id == j.c.id)
                .where(live)
                .group_by(j.c.name, t.c.state)
            ).all()
            sums = conn.execute(
                sa.select(
                    j.c.name,
                    sa.func.coalesce(sa.func.sum(t.c.requests_total), 0),
                    sa.func.coalesce(sa.func.sum(t.c.requests_completed), 0),
                    sa.func.coalesce(sa.func.sum(t.c.requests_failed), 0),
                )
                .join(t, t.c.job_id == j.c.id)
                .where(live)
                .group_by(j.c.name)
            ).all()
            unfinished = [s.value for s in JobState if not s.is_final]
            deadlines = conn.execute(
                sa.select(j.c.name, j.c.deadline_at).where(
                    live, j.c.state.in_(unfinished), j.c.deadline_at.is_not(None)
                )
            ).all()
        return JobGauges(
            jobs=jobs,
            targets={(name, state): n for name, state, n in per_target},
            requests={name: (int(a), int(b), int(c)) for name, a, b, c in sums},
            deadlines={name: at.timestamp() for name, at in deadlines},
        )

    def job_states(self) -> dict[str, JobState]:
        """Every job's state, without loading targets (scheduling thousands of jobs needs only this)."""
        with self._engine.connect() as conn:
            return {
                name: JobState(state)
                for name, state in conn.execute(sa.select(schema.jobs.c.name, schema.jobs.c.state))
            }

    def events(self, name: str, *, limit: int = 100) -> list[Event]:
        with self._engine.connect() as conn:
            job_id = self._job_id(conn, name)
            rows = conn.execute(
                sa.select(schema.events)
                .where(schema.events.c.job_id == job_id)
                .order_by(schema.events.c.id.desc())
                .limit(limit)
            ).all()
        return [Event(r.at, r.kind, r.message, r.data or {}) for r in reversed(rows)]

    def _job_id(self, conn: Connection, name: str) -> int:
        job_id = conn.execute(sa.select(schema.jobs.c.id).where(schema.jobs.c.name == name)).scalar()
        if job_id is None:
            raise StateStoreError(f"no job named {name!r} in the state store")
        return int(job_id)

    # ----- watching -----

    def record_check(
        self,
        name: str,
        report: CheckReport,
        *,
        now: dt.datetime,
        next_check_at: dt.datetime | None,
        deadline: float,
        rule: TriggerRule,
        actions: Sequence[PlannedAction],
    ) -> JobState:
        """Persist what a check saw and, in the same transaction, fire the trigger if its rule holds.

        The inserted action runs are the outbox: a crash after this commit still fires exactly once.
        Returns the job's state afterwards. Only changed targets are written: this runs on every tick.
        """
        return self.record_checks([CheckToRecord(name, report, now, next_check_at, deadline, rule, tuple(actions))])[0]

    def record_checks(self, checks: Sequence[CheckToRecord]) -> list[JobState]:
        """Several jobs' ``record_check`` in one transaction: one commit (one fsync on SQLite) for a burst of
        checks, such as the webhook hints of many batches finishing at once. Each job's observations and its
        outbox rows still commit together; if the transaction fails, none of them is written."""
        with self._engine.begin() as conn:
            return checks_module.record_checks(conn, checks)

    def touch_jobs(self, touches: Sequence[tuple[str, dt.datetime, dt.datetime | None]]) -> None:
        """Record quiet checks (nothing new seen) of many watching jobs in one transaction."""
        j = schema.jobs
        statement = (
            sa.update(j)
            .where(
                j.c.name == sa.bindparam("b_name"),
                j.c.state == JobState.WATCHING.value,
                # A check recorded since (urgent, so possibly written first) has the newer times: keep them.
                sa.or_(j.c.last_checked_at.is_(None), j.c.last_checked_at < sa.bindparam("b_checked")),
            )
            .values(last_checked_at=sa.bindparam("b_checked"), next_check_at=sa.bindparam("b_next"))
        )
        with self._engine.begin() as conn:
            conn.execute(statement, [{"b_name": n, "b_checked": c, "b_next": x} for n, c, x in touches])

    def set_paused(self, name: str, paused: bool, *, now: dt.datetime) -> bool:
        """Pause or resume a job's checks; False if there is no such job. A paused job that already fired
        keeps its actions paused too (nothing new is started)."""
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.name == name)).first()
            if row is None:
                return False
            if bool(row.paused) != paused:
                conn.execute(
                    sa.update(schema.jobs).where(schema.jobs.c.id == row.id).values(paused=paused, updated_at=now)
                )
                append_event(
                    conn,
                    row.id,
                    now,
                    EventKind.PAUSED if paused else EventKind.RESUMED,
                    "job paused" if paused else "job resumed",
                )
            return True

    def note(self, name: str, kind: EventKind, message: str, data: Mapping[str, Any], *, now: dt.datetime) -> bool:
        """Add an event to a job's log from outside a tick (e.g. discovery); False if there is no such job."""
        with self._engine.begin() as conn:
            job_id = conn.execute(sa.select(schema.jobs.c.id).where(schema.jobs.c.name == name)).scalar()
            if job_id is None:
                return False
            append_event(conn, int(job_id), now, kind, message, data)
            return True

    def fail_job(
        self,
        name: str,
        reason: str,
        *,
        now: dt.datetime,
        kind: EventKind = EventKind.JOB_FAILED,
        excerpt: str | None = None,
    ) -> None:
        """End a job that has not fired as failed (deadline passed, credentials rejected, ...). ``excerpt``: what
        the refusing vendor said, kept in the event's data apart from the reason (web/routes.py)."""
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.name == name)).one()
            if row.state != JobState.WATCHING.value:
                return
            conn.execute(
                sa.update(schema.jobs)
                .where(schema.jobs.c.id == row.id)
                .values(
                    state=JobState.FAILED.value, finished_at=now, updated_at=now, last_error=reason, next_check_at=None
                )
            )
            data = {"state": JobState.FAILED.value, **({EXCERPT: excerpt} if excerpt else {})}
            append_event(conn, row.id, now, kind, f"job failed: {reason}", data)


def _delete_targets(conn: Connection, job_id: int, names: Sequence[str]) -> None:
    t = schema.targets
    for start in range(0, len(names), 500):  # bounded statements: a job may lose thousands at once
        conn.execute(sa.delete(t).where(t.c.job_id == job_id, t.c.target.in_(names[start : start + 500])))


def _moved_deadline(row: Row[Any], plan: JobPlan) -> dict[str, Any]:
    """A watching job's deadline runs from its first observation: a changed ``deadline`` moves it."""
    if plan.deadline is None or row.first_observed_at is None or row.deadline_at is None:
        return {}
    deadline_at = row.first_observed_at + dt.timedelta(seconds=plan.deadline)
    return {"deadline_at": deadline_at} if abs((deadline_at - row.deadline_at).total_seconds()) > 0.001 else {}


def _insert_targets(conn: Connection, job_id: int, names: Sequence[str], start: int) -> None:
    if names:
        conn.execute(
            sa.insert(schema.targets),
            [
                {
                    "job_id": job_id,
                    "target": t,
                    "position": start + i,
                    "state": TargetState.PENDING.value,
                    "details": {},
                }
                for i, t in enumerate(names)
            ],
        )


def _group(rows: Iterable[Row[Any]]) -> dict[int, list[Row[Any]]]:
    grouped: dict[int, list[Row[Any]]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(row)
    return grouped


def _watches(rows: Iterable[Row[Any]]) -> dict[int, DuplicateWatch]:
    return {
        w.run_id: DuplicateWatch(
            armed_at=w.armed_at,
            until=w.until,
            next_search_at=w.next_search_at,
            searches=w.searches,
            closed_at=w.closed_at,
            duplicates=tuple(
                Duplicate(d["external_id"], d.get("vendor_status"), d["cancelled"], d["note"], _parse_at(d["found_at"]))
                for d in w.duplicates or []
            ),
        )
        for w in rows
    }


def _parse_at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _origins(conn: Connection, name: str | None = None) -> dict[str, JobOrigin]:
    """Where each registered job came from; a name a file job shadows (the daemon records those) is the
    file's, as that is the job that runs."""
    r = schema.registered_jobs
    query = sa.select(r.c.name, r.c.origin) if name is None else sa.select(r.c.name, r.c.origin).where(r.c.name == name)
    origins = {n: JobOrigin(o) for n, o in conn.execute(query)}
    return _without_shadowed(conn, origins) if origins else origins


def _without_shadowed(conn: Connection, origins: dict[str, JobOrigin]) -> dict[str, JobOrigin]:
    m = schema.meta_table
    recorded = conn.execute(sa.select(m.c.value).where(m.c.key == CONFLICTS_META)).scalar()
    for shadowed in json.loads(recorded).get("shadowed", []) if recorded else []:
        origins.pop(shadowed, None)
    return origins


def _job_snapshot(
    row: Row[Any],
    targets: Sequence[Row[Any]],
    runs: Sequence[Row[Any]],
    watches: Mapping[int, DuplicateWatch],
    origins: Mapping[str, JobOrigin],
) -> JobSnapshot:
    return JobSnapshot(
        name=row.name,
        # The registry first (a job registered a moment ago, not yet synced); a removed job keeps its own.
        origin=origins.get(row.name) or (JobOrigin(row.origin) if row.removed else JobOrigin.FILE),
        state=JobState(row.state),
        fingerprint=row.fingerprint,
        removed=bool(row.removed),
        paused=bool(row.paused),
        created_at=row.created_at,
        first_observed_at=row.first_observed_at,
        deadline_at=row.deadline_at,
        last_checked_at=row.last_checked_at,
        next_check_at=row.next_check_at,
        finished_at=row.finished_at,
        last_error=row.last_error,
        consecutive_failures=row.consecutive_failures,
        targets=tuple(
            TargetSnapshot(t.target, TargetState(t.state), t.vendor_status, t.details or {}, t.message, t.observed_at)
            for t in targets
        ),
        runs=tuple(
            RunSnapshot(
                id=r.id,
                action_index=r.action_index,
                action_type=r.action_type,
                state=RunState(r.state),
                trigger_id=r.trigger_id,
                attempt=r.attempt,
                created_at=r.created_at,
                intent_at=r.intent_at,
                next_try_at=r.next_try_at,
                search_empty_count=r.search_empty_count,
                external_id=r.external_id,
                external_url=r.external_url,
                vendor_status=r.vendor_status,
                message=r.message,
                details=r.details or {},
                watch=watches.get(r.id),
                target_key=r.target_key,
            )
            for r in runs
        ),
    )


def _put_meta(conn: Connection, key: str, value: str) -> None:
    """Insert or replace one tc_meta row in one statement. An UPDATE-then-INSERT raced between replicas
    starting together (both inserting the same key: a unique violation that stopped one of them)."""
    m = schema.meta_table
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(m)
    conn.execute(
        insert.values(key=key, value=value).on_conflict_do_update(index_elements=[m.c.key], set_={"value": value})
    )


def body_fingerprint(body: Mapping[str, Any]) -> str:
    """The same body, whatever its key order, has the same fingerprint."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _registered(row: Row[Any]) -> RegisteredJob:
    return RegisteredJob(
        name=row.name,
        origin=JobOrigin(row.origin),
        body=row.body,
        fingerprint=row.fingerprint,
        created_at=row.created_at,
        updated_at=row.updated_at,
        details=row.details or {},
    )


def _describe(exc: SQLAlchemyError) -> str:
    # The driver's own message, without SQLAlchemy's SQL echo and background link.
    orig = getattr(exc, "orig", None)
    return str(orig or exc).split("\n")[0]
