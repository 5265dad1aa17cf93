"""The trigger state machine: start each action once, even across crashes (docs/reliability.md).

    PENDING ──intent committed──▶ SENDING ──start ok──▶ RUNNING ──follow──▶ SUCCEEDED / FAILED
       ▲                            │  │
       │ NotStarted (nothing sent)  │  └─ Rejected ─▶ REJECTED (a person must look)
       └────────────────────────────┤
                                    └─ InDoubt / crash ─▶ IN_DOUBT ──search──▶ adopt (RUNNING)
                                                              └─ empty twice ─▶ PENDING (new attempt)

The intent is committed before the start call, and an in-doubt start is never repeated blindly: the
action's own search decides whether something was started. An empty search counts only once the start can
no longer take effect unseen (intent + the action's start timeout + its search lag). Even so the index may
lag longer than that, so a start that follows such a presumed non-start arms a duplicate watch: the search
is repeated at growing intervals for ``action.duplicate_watch`` seconds, and every further start carrying
the trigger's marker is cancelled (the action decides whether it still can) and reported.

An action whose downstream deduplicates on the trigger id (``Action.repeatable_start``, e.g. a Standard
Webhooks receiver on ``webhook-id``) skips the search: IN_DOUBT goes back to PENDING with back-off.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from teckochecker.conditions import ConditionKind, ConditionLog
from teckochecker.errors import InDoubt, NotStarted, PermanentError, TeckoCheckerError, TransientError
from teckochecker.plugin_api import Action, ActionOutcome, ActionRequest, ActionResult, Cancellation
from teckochecker.retry import backoff_delay
from teckochecker.runtime import JobRuntime
from teckochecker.services import TickServices
from teckochecker.state.models import JobSnapshot, RunSnapshot, RunState
from teckochecker.vendor_replies import storable

# Look at a fired job this often while nothing else is due.
IDLE_RECHECK = 10.0
# How far before the trigger fired a search looks, to absorb clock skew between us and the downstream system.
SEARCH_MARGIN = dt.timedelta(minutes=10)
# Two searches that find nothing must be at least this far apart, even for an action with no index lag.
MIN_SEARCH_SPACING = 1.0
EMPTY_SEARCHES_BEFORE_RETRY = 2
# A target busy with another start of ours: look again this soon.
TARGET_BUSY_RETRY = 5.0
# The duplicate watch searches after search_lag, then twice as long each time, but at least this often.
WATCH_MAX_INTERVAL = 600.0


@dataclass(frozen=True)
class _StepFailure:
    """A run's last failed step, kept until one of its steps goes through."""

    kind: ConditionKind
    reason: str
    # Consecutive failed follow/search reads; back-off only, so losing it on restart is harmless.
    reads: int = 0


class ActionDriver:
    def __init__(self, services: TickServices) -> None:
        self._store = services.store
        self._metrics = services.metrics
        self._db = services.worker
        self._clock = services.clock
        self._crash = services.crashpoints
        self._log = services.logger
        self._rng = services.rng
        self._may_act = services.may_act
        self._failures: dict[int, _StepFailure] = {}
        self._conditions = ConditionLog(services.logger)

    async def advance(self, job: JobRuntime, snap: JobSnapshot, notified_at: float | None = None) -> float | None:
        """Move every unfinished action of a fired job one step. Returns seconds until the next step is
        due, or None once the job is finished. ``notified_at``: the monotonic receipt of the notification
        that let the job fire just now, if one did (its first action's start is timed from it)."""
        request_targets = tuple(t.as_observation() for t in snap.targets)
        waits = []
        for run in snap.runs:
            # Only the first action's start is timed from the notification: the others wait for it.
            timed_from, notified_at = (notified_at, None) if run.state is RunState.PENDING else (None, notified_at)
            action = job.actions.get(run.action_index)
            orphaned = _orphaned_because(action, run)
            if orphaned is not None:
                action = None
            request = ActionRequest(job.name, run.trigger_id, run.created_at, request_targets)
            if run.watch is not None and run.watch.is_open:
                waits.append(await self._watch(action, run, request))
            if run.state.is_final:
                continue
            if action is None:
                waits.append(await self._orphaned(run, orphaned or _REMOVED))
                continue
            waits.append(await self._step(action, run, request, timed_from))
        self._report(job.name, snap.runs)
        final = await self._db.run(self._store.finish_job_if_done, job.name, now=self._clock.now())
        if final is not None:
            self._conditions.forget(job.name)
            self._log.info("job %s: %s", job.name, final.value)
            return None
        return max(0.0, min(waits)) if waits else IDLE_RECHECK

    async def _step(
        self, action: Action, run: RunSnapshot, request: ActionRequest, notified_at: float | None = None
    ) -> float:
        now = self._clock.now()
        if run.next_try_at is not None and now < run.next_try_at and run.state is not RunState.SENDING:
            return (run.next_try_at - now).total_seconds()
        if run.state is RunState.PENDING:
            return await self._start(action, run, request, notified_at)
        if run.state is RunState.SENDING:
            # Only a previous process can have left a run here (a tick never sees its own start under way).
            return await self._mark_in_doubt(action, run, "the daemon stopped while the start was under way")
        if run.state is RunState.IN_DOUBT and action.repeatable_start:
            return await self._start_again(run, run.message or "the start was in doubt", None)
        if run.state is RunState.IN_DOUBT:
            return await self._reconcile(action, run, request)
        return await self._follow(action, run)

    async def _start(
        self, action: Action, run: RunSnapshot, request: ActionRequest, notified_at: float | None = None
    ) -> float:
        # The store calls of a start go ahead of the others waiting (StoreWorker.run_urgent): between the
        # intent and the recorded start, nothing else of this job may run, and a burst must not delay them.
        if not await self._db.run_urgent(self._store.begin_run, run.id, now=self._clock.now()):
            return TARGET_BUSY_RETRY
        self._crash.hit("after_intent_commit")
        if not self._may_act():
            # The lease may pass before the start lands (a long pause, or renewals failing): start nothing.
            # The run stays SENDING, so whoever leads next reconciles it by search, never starts it blindly.
            self._log.warning(
                "action %s of job %s not started: leadership unconfirmed", run.action_index, request.job_name
            )
            return TARGET_BUSY_RETRY
        if run.attempt == 1:
            # From the check that saw the last target finish (it created this run) to the start call.
            self._metrics.trigger_delay.observe(max(0.0, (self._clock.now() - run.created_at).total_seconds()))
        started = self._clock.monotonic()
        try:
            result = await action.start(request)
        except NotStarted as exc:
            self._count(action, "not_started")
            self._failures[run.id] = _StepFailure(ConditionKind.ACTION, f"start failed, nothing was sent: {exc}")
            delay = backoff_delay(run.attempt, exc.retry_after, rng=self._rng)
            self._log_excerpt(run, exc)
            await self._db.run_urgent(
                self._store.run_not_started,
                run.id,
                str(exc),
                now=self._clock.now(),
                next_try_at=self._clock.now() + dt.timedelta(seconds=delay),
                excerpt=exc.excerpt,
            )
            return delay
        except PermanentError as exc:
            self._count(action, "rejected")
            await self._db.run_urgent(
                self._store.run_finished,
                run.id,
                RunState.REJECTED,
                str(exc),
                now=self._clock.now(),
                excerpt=exc.excerpt,
            )
            self._log.error("action %s of job %s rejected: %s", run.action_index, request.job_name, exc)
            self._log_excerpt(run, exc)
            return 0.0
        except (InDoubt, TransientError) as exc:
            self._count(action, "in_doubt")
            self._log_excerpt(run, exc)
            if action.repeatable_start:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                return await self._start_again(run, str(exc), retry_after, exc.excerpt)
            return await self._mark_in_doubt(action, run, str(exc), exc.excerpt)
        except Exception as exc:  # an unexpected plugin error after the call may have gone out: in doubt
            self._log.exception("action %s of job %s failed while starting", run.action_index, request.job_name)
            self._count(action, "in_doubt")
            return await self._mark_in_doubt(action, run, f"action plugin error: {exc}")
        finally:
            self._metrics.action_duration.labels(action.type_name).observe(self._clock.monotonic() - started)
        self._count(action, "started")
        self._failures.pop(run.id, None)
        self._crash.hit("after_start_response")
        now = self._clock.now()
        until, first = self._watch_window(action, now)
        await self._db.run_urgent(self._store.run_started, run.id, result, now=now, watch_until=until, watch_next=first)
        if notified_at is not None and run.attempt == 1:
            # Here, not at the end of the tick: what follows the start (the job's other actions, the
            # finished-job check in the store's normal lane) is not part of a webhook's way to the POST.
            self._metrics.webhook_to_action.observe(max(0.0, self._clock.monotonic() - notified_at))
        self._record_finish(action, result)
        return action.follow_interval if result.outcome is ActionOutcome.RUNNING else 0.0

    async def _start_again(
        self, run: RunSnapshot, message: str, retry_after: float | None, excerpt: str | None = None
    ) -> float:
        """An in-doubt start of an action whose downstream deduplicates on the trigger id: no search, just
        another attempt after a back-off (a second arrival is dropped by the receiver)."""
        self._failures[run.id] = _StepFailure(ConditionKind.ACTION, f"start in doubt, sending again: {message}")
        delay = backoff_delay(run.attempt, retry_after, rng=self._rng)
        now = self._clock.now()
        await self._db.run(
            self._store.run_not_started,
            run.id,
            f"{message}; sending it again is safe (the receiver deduplicates on the trigger id)",
            now=now,
            next_try_at=now + dt.timedelta(seconds=delay),
            excerpt=excerpt,
        )
        return delay

    async def _mark_in_doubt(self, action: Action, run: RunSnapshot, message: str, excerpt: str | None = None) -> float:
        now = self._clock.now()
        wait = max(action.search_lag, MIN_SEARCH_SPACING)
        due = (run.intent_at or now) + dt.timedelta(seconds=wait)
        await self._db.run(self._store.run_in_doubt, run.id, message, now=now, next_try_at=due, excerpt=excerpt)
        self._log.warning("job action %s in doubt (%s); will search in %.0fs", run.id, message, wait)
        return max(0.0, (due - now).total_seconds())

    async def _reconcile(self, action: Action, run: RunSnapshot, request: ActionRequest) -> float:
        try:
            found = await action.find_started(request, _search_since(run))
        except TransientError as exc:
            self._log_excerpt(run, exc)
            return await self._defer(run, f"search failed: {exc}", exc.retry_after, exc.excerpt)
        except PermanentError as exc:
            self._log_excerpt(run, exc)
            await self._fail(run, f"cannot tell whether it started: search refused: {exc}", exc.excerpt)
            return 0.0
        self._failures.pop(run.id, None)
        now = self._clock.now()
        if found is None:
            await self._fail(
                run,
                "it may or may not have started, and this action cannot search for it; "
                "not started again to avoid a duplicate",
            )
            return 0.0
        if found:
            return await self._adopt(action, run, request, list(found))
        spacing = max(action.search_lag, MIN_SEARCH_SPACING)
        # Until the start call's own timeout and then the index lag have passed, the job may still appear.
        settled = (run.intent_at or run.created_at) + dt.timedelta(seconds=action.start_timeout + action.search_lag)
        counts = now >= settled
        next_try_at = now + dt.timedelta(seconds=spacing) if counts else settled
        count = await self._db.run(
            self._store.run_search_empty, run.id, now=now, next_try_at=next_try_at, counts=counts
        )
        if count >= EMPTY_SEARCHES_BEFORE_RETRY:
            await self._db.run(
                self._store.run_not_started,
                run.id,
                f"{count} searches found nothing started",
                now=now,
                next_try_at=now,
                presumed=True,
            )
            return 0.0
        return (next_try_at - now).total_seconds()

    async def _adopt(
        self, action: Action, run: RunSnapshot, request: ActionRequest, found: list[ActionResult]
    ) -> float:
        first, duplicates = found[0], found[1:]
        now = self._clock.now()
        watch_until, watch_next = self._watch_window(action, now)
        await self._db.run(
            self._store.run_started,
            run.id,
            first,
            now=now,
            how="adopted",
            watch_until=watch_until,
            watch_next=watch_next,
        )
        self._count(action, "adopted")
        self._record_finish(action, first)
        self._crash.hit("after_adopt")
        known = run.watch.known if run.watch is not None else frozenset()
        await self._handle_duplicates(action, run, request, [d for d in duplicates if d.external_id not in known])
        return 0.0 if first.outcome.is_finished else action.follow_interval

    def _watch_window(self, action: Action, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
        """run_started's watch_until and watch_next, which arm a waiting duplicate watch (ignored otherwise)."""
        if action.duplicate_watch <= 0:
            return None, None
        first = dt.timedelta(seconds=_watch_interval(action, 0))
        return now + dt.timedelta(seconds=action.duplicate_watch), now + first

    async def _watch(self, action: Action | None, run: RunSnapshot, request: ActionRequest) -> float:
        """One step of a duplicate watch: search when due, deal with what is new, close after the window."""
        watch = run.watch
        assert watch is not None and watch.until is not None
        now = self._clock.now()
        if action is None:
            await self._db.run(self._store.close_watch, run.id, "its action was removed; stopped watching", now=now)
            return IDLE_RECHECK
        if watch.next_search_at is not None and now < watch.next_search_at:
            return (watch.next_search_at - now).total_seconds()
        try:
            found = await action.find_started(request, _search_since(run))
        except (TransientError, PermanentError) as exc:
            self._log.warning("job action %s: duplicate search failed: %s", run.id, exc)
            self._log_excerpt(run, exc)
            if now >= watch.until:
                await self._db.run(
                    self._store.close_watch, run.id, f"duplicate watch ended; its last search failed: {exc}", now=now
                )
                return IDLE_RECHECK
            return await self._next_watch_search(action, run, now)
        if found is None:
            await self._db.run(self._store.close_watch, run.id, "this action cannot search; stopped watching", now=now)
            return IDLE_RECHECK
        fresh = [f for f in found if f.external_id != run.external_id and f.external_id not in watch.known]
        await self._handle_duplicates(action, run, request, fresh)
        if now >= watch.until:
            count = len(watch.duplicates) + len(fresh)
            message = f"duplicate watch ended after {watch.searches + 1} searches; {count} duplicate(s) found"
            await self._db.run(self._store.close_watch, run.id, message, now=now)
            return IDLE_RECHECK
        return await self._next_watch_search(action, run, now)

    async def _next_watch_search(self, action: Action, run: RunSnapshot, now: dt.datetime) -> float:
        assert run.watch is not None and run.watch.until is not None
        due = min(run.watch.until, now + dt.timedelta(seconds=_watch_interval(action, run.watch.searches + 1)))
        await self._db.run(self._store.watch_searched, run.id, now=now, next_search_at=due)
        return (due - now).total_seconds()

    async def _handle_duplicates(
        self, action: Action, run: RunSnapshot, request: ActionRequest, duplicates: list[ActionResult]
    ) -> None:
        """Cancel (as far as the action may) and report each duplicate once; one the action cannot decide on
        now is left for the next search."""
        for duplicate in duplicates:
            try:
                cancellation = await action.cancel(request, duplicate)
            except TransientError as exc:
                self._log.warning(
                    "job action %s: duplicate %s: %s; will look again", run.id, duplicate.external_id, exc
                )
                self._log_excerpt(run, exc)
                continue
            except PermanentError as exc:
                cancellation = Cancellation(False, f"could not cancel it ({exc}); a person must look")
            self._metrics.duplicate_starts.labels(action.type_name).inc()
            await self._db.run(self._store.record_duplicate, run.id, duplicate, cancellation, now=self._clock.now())
            self._log.error(
                "job action %s: duplicate downstream start %s found; %s: %s",
                run.id,
                duplicate.external_id,
                "cancelled it" if cancellation.cancelled else "NOT cancelled",
                cancellation.note,
            )

    async def _follow(self, action: Action, run: RunSnapshot) -> float:
        self._crash.hit("during_follow")
        try:
            result = await action.follow(run.as_result())
        except TransientError as exc:
            self._log_excerpt(run, exc)
            return await self._defer(run, f"following {run.external_id} failed: {exc}", exc.retry_after, exc.excerpt)
        except PermanentError as exc:
            self._log_excerpt(run, exc)
            await self._fail(run, f"cannot follow {run.external_id}: {exc}", exc.excerpt)
            return 0.0
        self._failures.pop(run.id, None)
        result = _storable_result(result)
        await self._db.run(self._store.run_progress, run.id, result, now=self._clock.now())
        self._record_finish(action, result)
        return 0.0 if result.outcome.is_finished else action.follow_interval

    async def _fail(self, run: RunSnapshot, message: str, excerpt: str | None = None) -> None:
        """End a run as failed without a downstream result, for a person to look at."""
        await self._db.run(
            self._store.run_finished, run.id, RunState.FAILED, message, now=self._clock.now(), excerpt=excerpt
        )

    def _log_excerpt(self, run: RunSnapshot, exc: TeckoCheckerError) -> None:
        """The refusing server's words, which the stored message leaves out (the log's sinks redact secrets)."""
        if exc.excerpt:
            self._log.warning("job action %s: %s; the answer began: %r", run.id, exc, exc.excerpt)

    def _count(self, action: Action, outcome: str) -> None:
        self._metrics.actions.labels(action.type_name, outcome).inc()

    def _record_finish(self, action: Action, result: ActionResult) -> None:
        if result.outcome.is_finished:
            self._count(action, result.outcome.value)
            self._metrics.downstream_jobs.labels(action.type_name, result.vendor_status or result.outcome.value).inc()

    async def _defer(
        self, run: RunSnapshot, message: str, retry_after: float | None, excerpt: str | None = None
    ) -> float:
        previous = self._failures.get(run.id)
        attempt = (previous.reads if previous else 0) + 1
        kind = ConditionKind.RECONCILE if run.state is RunState.IN_DOUBT else ConditionKind.ACTION
        self._failures[run.id] = _StepFailure(kind, message, attempt)
        delay = backoff_delay(attempt, retry_after, rng=self._rng)
        now = self._clock.now()
        await self._db.run(
            self._store.defer_run,
            run.id,
            message,
            now=now,
            next_try_at=now + dt.timedelta(seconds=delay),
            excerpt=excerpt,
        )
        return delay

    def _report(self, job_name: str, runs: Sequence[RunSnapshot]) -> None:
        """Log the job's failing action steps and deferred searches once per change (teckochecker.conditions)."""
        for run in runs:
            if run.state.is_final:
                self._failures.pop(run.id, None)
        live = [run for run in runs if not run.state.is_final]
        for kind in (ConditionKind.ACTION, ConditionKind.RECONCILE):
            failing = {
                f"run {run.id}": failure.reason
                for run in live
                if (failure := self._failures.get(run.id)) is not None and failure.kind is kind
            }
            self._conditions.update(job_name, kind, failing, len(live))

    async def _orphaned(self, run: RunSnapshot, reason: str) -> float:
        await self._fail(run, reason)
        return 0.0


_REMOVED = "its action was removed from the configuration before it finished"


def _orphaned_because(action: Action | None, run: RunSnapshot) -> str | None:
    """Why a fired run can no longer be driven by the action now configured at its place, if it cannot.

    A run is followed, searched for and (while nothing was sent) started by the action it fired with: after a
    restart, a failover or a PUT that raced the fire, the definition in force may name another downstream
    target, and an in-doubt start there would be searched for in the wrong place and sent again. Such a run
    fails instead, saying so; the job it belongs to finished firing with the definition it fired with.
    """
    if action is None:
        return _REMOVED
    if action.type_name != run.action_type:
        return f"its action's type changed from {run.action_type} to {action.type_name} after it fired"
    if run.target_key and action.target_key != run.target_key:
        return (
            f"its action's target changed from {run.target_key} to {action.target_key} after it fired; "
            "nothing is started there (check the first target by hand if its start was in doubt)"
        )
    return None


def _search_since(run: RunSnapshot) -> dt.datetime:
    # From before the trigger fired, not this attempt's intent: an earlier attempt's start is ours too.
    return run.created_at - SEARCH_MARGIN


def _watch_interval(action: Action, searches: int) -> float:
    spacing = max(action.search_lag, MIN_SEARCH_SPACING)
    return float(min(WATCH_MAX_INTERVAL, spacing * 2 ** min(searches, 30)))


def _storable_result(result: ActionResult) -> ActionResult:
    return dataclasses.replace(
        result,
        vendor_status=storable(result.vendor_status),
        message=storable(result.message),
        details=storable(result.details),
    )
