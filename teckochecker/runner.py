"""One tick of one job: check the targets, persist what was seen, fire the trigger, drive the actions.

A tick is a plain coroutine over (job, store, clock): it could run under a lease on another replica.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from teckochecker.conditions import ConditionKind, ConditionLog
from teckochecker.errors import PermanentError, TransientError
from teckochecker.groupcommit import CheckRecorder
from teckochecker.plugin_api import CheckReport, Observation
from teckochecker.retry import backoff_delay
from teckochecker.runtime import JobRuntime
from teckochecker.services import TickServices
from teckochecker.state.events import EventKind
from teckochecker.state.models import EXCERPT, JobSnapshot, JobState
from teckochecker.state.store import CheckToRecord
from teckochecker.triggering import ActionDriver
from teckochecker.vendor_replies import storable
from teckochecker.watchcache import WatchCache


@dataclass(frozen=True)
class TickResult:
    # Run this job again after this many seconds instead of at its next interval.
    next_in: float | None = None
    # The job reached a final state: unschedule it.
    done: bool = False
    # This tick saw the trigger's rule hold and moved the job to firing (its first action step ran too).
    fired: bool = False


class JobRunner:
    def __init__(self, services: TickServices) -> None:
        self._store = services.store
        self._metrics = services.metrics
        self._db = services.worker
        self._clock = services.clock
        self._crash = services.crashpoints
        self._log = services.logger
        self._rng = services.rng
        self._actions = ActionDriver(services)
        self._conditions = ConditionLog(services.logger)
        self._cache = WatchCache()
        self._checks = CheckRecorder(services.store, services.worker)

    def forget(self, name: str | None = None) -> None:
        """Drop cached state after a change made outside a tick (reload, pause, resume)."""
        self._cache.forget(name)

    def pending_targets(self, name: str) -> list[str] | None:
        """The targets job ``name`` still waits for as last stored, or None when that needs a read."""
        snap = self._cache.get(name)
        return None if snap is None else snap.pending_targets

    async def flush(self) -> None:
        """Write when quiet checks happened (batched: these carry no news)."""
        touches = self._cache.take_touches()
        if touches:
            await self._db.run(self._store.touch_jobs, touches)

    async def tick(self, job: JobRuntime, fresh: Collection[str] = (), notified_at: float | None = None) -> TickResult:
        """One step of the job. ``fresh``: targets a push notification named; then only those (of the ones
        still pending) are checked, straight from the vendor, instead of every pending target.
        ``notified_at``: the monotonic receipt of the last of those notifications; when this tick fires the
        job, its first action start is timed from it (teckochecker_webhook_to_action_seconds)."""
        snap = self._cache.get(job.name)
        if snap is None:
            snap = await self._db.run(self._store.job, job.name)
            if snap is not None:
                self._cache.keep(snap)
        if snap is None or snap.state.is_final:
            return TickResult(done=True)
        if snap.paused:
            return TickResult()
        next_in: float | None = None
        state = snap.state
        fired = False
        if state is JobState.WATCHING:
            state, next_in = await self._watch(job, snap, fresh)
            if state is JobState.FIRING:
                fired = True
                snap = await self._reload(job.name)
        if state is JobState.FIRING:
            next_in = await self._actions.advance(job, snap, notified_at if fired else None)
            if next_in is None:
                self._conditions.forget(job.name)
                return TickResult(done=True, fired=fired)
        if state.is_final:
            self._conditions.forget(job.name)
        return TickResult(next_in=next_in, done=state.is_final, fired=fired)

    async def _watch(
        self, job: JobRuntime, snap: JobSnapshot, fresh: Collection[str] = ()
    ) -> tuple[JobState, float | None]:
        now = self._clock.now()
        if snap.deadline_at is not None and now >= snap.deadline_at:
            unfinished = len(snap.pending_targets)
            reason = f"deadline passed ({snap.deadline_at:%Y-%m-%d %H:%M:%S}Z) with {unfinished} target(s) unfinished"
            await self._db.run(self._store.fail_job, job.name, reason, now=now, kind=EventKind.DEADLINE_PASSED)
            self._metrics.job_deadline_exceeded.labels(job.name).inc()
            self._log.warning("job %s: %s", job.name, reason)
            return JobState.FAILED, None
        if snap.consecutive_failures and snap.next_check_at and now < snap.next_check_at - dt.timedelta(seconds=1):
            # Still backing off (e.g. the vendor asked us to wait longer than the interval).
            return snap.state, (snap.next_check_at - now).total_seconds()
        targets: Sequence[str] = snap.pending_targets
        if fresh:
            targets = tuple(t for t in targets if t in fresh)
            if not targets:  # already seen finished (a repeated or late event): nothing to ask
                return snap.state, None
        report = await self._check(job, targets, now, fresh=bool(fresh))
        if report is None:
            self._cache.forget(job.name)
            return JobState.FAILED, None
        self._conditions.update(job.name, ConditionKind.CHECK, report.transient_errors, len(targets))
        next_in = None
        if report.transient_errors:
            next_in = backoff_delay(snap.consecutive_failures + 1, report.retry_after, rng=self._rng)
        interval = job.definition.interval
        next_check_at = now + dt.timedelta(seconds=next_in if next_in is not None else interval)
        # Nothing left to observe but still watching: something held the trigger (a discovered job's group),
        # so the rule is evaluated again at every check, never skipped as "no news".
        quiet = snap.pending_targets and not self._cache.is_news(snap, report.observations)
        if not report.transient_errors and quiet:
            self._cache.touch(snap, now, next_check_at)
            return JobState.WATCHING, None
        check = CheckToRecord(
            job.name,
            report,
            now,
            next_check_at,
            job.definition.deadline,
            job.definition.trigger,
            tuple(job.planned_actions()),
        )
        self._cache.forget(job.name)
        epoch = self._cache.epoch(job.name)
        state = await self._checks.record(check)
        if state is JobState.WATCHING and not report.transient_errors:
            self._cache.recorded(snap, report.observations, now, next_check_at, epoch, job.definition.deadline)
        self._crash.hit("after_check_commit")
        if state is JobState.FIRING:
            self._log.info("job %s: trigger fired", job.name)
        return state, next_in

    async def _check(
        self, job: JobRuntime, targets: Sequence[str], now: dt.datetime, *, fresh: bool
    ) -> CheckReport | None:
        source_type = job.definition.source.type
        started = self._clock.monotonic()
        report = await self._call_source(job, targets, now, fresh=fresh)
        self._metrics.source_check_duration.labels(source_type).observe(self._clock.monotonic() - started)
        outcome = "permanent_error" if report is None else ("transient_error" if report.transient_errors else "ok")
        self._metrics.source_checks.labels(source_type, outcome).inc()
        return report

    async def _call_source(
        self, job: JobRuntime, pending: Sequence[str], now: dt.datetime, *, fresh: bool
    ) -> CheckReport | None:
        try:
            report = await (job.source.check_fresh(pending) if fresh else job.source.check(pending))
        except TransientError as exc:
            self._log_excerpts(job.name, {"": exc.excerpt} if exc.excerpt else {})
            return CheckReport(
                transient_errors=dict.fromkeys(pending, str(exc)),
                retry_after=exc.retry_after,
                excerpts=dict.fromkeys(pending, exc.excerpt) if exc.excerpt else {},
            )
        except PermanentError as exc:
            await self._db.run(self._store.fail_job, job.name, str(exc), now=now, excerpt=exc.excerpt)
            self._log.error("job %s stopped: %s", job.name, exc)
            self._log_excerpts(job.name, {"": exc.excerpt} if exc.excerpt else {})
            return None
        except Exception as exc:  # a plugin bug must not take the daemon down; it is retried like an outage
            self._log.exception("job %s: source plugin %s failed", job.name, job.definition.source.type)
            return CheckReport(transient_errors=dict.fromkeys(pending, f"source plugin error: {exc}"))
        wanted = set(pending)
        observations = tuple(_storable_observation(o) for o in report.observations if o.target in wanted)
        for obs in observations:
            if obs.state.value == "unknown":
                self._log.warning(
                    "job %s: target %s has an undocumented status %r", job.name, obs.target, obs.vendor_status
                )
        excerpts = {t: storable(e) for t, e in report.excerpts.items() if t in report.transient_errors}
        self._log_excerpts(job.name, excerpts)
        for obs in observations:
            if isinstance(excerpt := obs.details.get(EXCERPT), str):
                self._log_excerpts(job.name, {obs.target: excerpt})
        return CheckReport(observations, storable(report.transient_errors), report.retry_after, excerpts)

    def _log_excerpts(self, job_name: str, excerpts: Mapping[str, str]) -> None:
        """What vendors said about targets: kept out of the stored messages, so logged here (the log's sinks
        redact secrets) and stored apart for readers with a token."""
        for target, excerpt in list(excerpts.items())[:5]:
            about = f" about {target}" if target else ""
            self._log.info("job %s: the vendor's answer%s began: %r", job_name, about, excerpt)

    async def _reload(self, name: str) -> JobSnapshot:
        # Urgent: the job just fired, and its first action starts from this snapshot.
        snap = await self._db.run_urgent(self._store.job, name)
        assert snap is not None
        return snap


def _storable_observation(obs: Observation) -> Observation:
    return dataclasses.replace(
        obs, vendor_status=storable(obs.vendor_status), message=storable(obs.message), details=storable(obs.details)
    )
