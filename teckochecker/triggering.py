"""The trigger state machine: start each action once, even across crashes (design/reliability.md §1.3).

    PENDING ──intent committed──▶ SENDING ──start ok──▶ RUNNING ──follow──▶ SUCCEEDED / FAILED
       ▲                            │  │
       │ NotStarted (nothing sent)  │  └─ Rejected ─▶ REJECTED (a person must look)
       └────────────────────────────┤
                                    └─ InDoubt / crash ─▶ IN_DOUBT ──search──▶ adopt (RUNNING)
                                                              └─ empty twice ─▶ PENDING (new attempt)

The intent is committed before the start call, and an in-doubt start is never repeated blindly: the
action's own search decides whether something was started.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from teckochecker.conditions import ConditionKind, ConditionLog
from teckochecker.errors import InDoubt, NotStarted, PermanentError, TransientError
from teckochecker.plugin_api import Action, ActionOutcome, ActionRequest, ActionResult
from teckochecker.retry import backoff_delay
from teckochecker.runtime import JobRuntime
from teckochecker.services import TickServices
from teckochecker.state.models import JobSnapshot, RunSnapshot, RunState

# Look at a fired job this often while nothing else is due.
IDLE_RECHECK = 10.0
# How far before the intent a search looks, to absorb clock skew between us and the downstream system.
SEARCH_MARGIN = dt.timedelta(minutes=10)
# Two searches that find nothing must be at least this far apart, even for an action with no index lag.
MIN_SEARCH_SPACING = 1.0
EMPTY_SEARCHES_BEFORE_RETRY = 2
# A target busy with another start of ours: look again this soon.
TARGET_BUSY_RETRY = 5.0


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
        self._failures: dict[int, _StepFailure] = {}
        self._conditions = ConditionLog(services.logger)

    async def advance(self, job: JobRuntime, snap: JobSnapshot) -> float | None:
        """Move every unfinished action of a fired job one step. Returns seconds until the next step is
        due, or None once the job is finished."""
        request_targets = tuple(t.as_observation() for t in snap.targets)
        waits = []
        for run in snap.runs:
            if run.state.is_final:
                continue
            action = job.actions.get(run.action_index)
            request = ActionRequest(job.name, run.trigger_id, run.created_at, request_targets)
            if action is None or action.type_name != run.action_type:
                waits.append(await self._orphaned(run))
                continue
            waits.append(await self._step(action, run, request))
        self._report(job.name, snap.runs)
        final = await self._db.run(self._store.finish_job_if_done, job.name, now=self._clock.now())
        if final is not None:
            self._conditions.forget(job.name)
            self._log.info("job %s: %s", job.name, final.value)
            return None
        return max(0.0, min(waits)) if waits else IDLE_RECHECK

    async def _step(self, action: Action, run: RunSnapshot, request: ActionRequest) -> float:
        now = self._clock.now()
        if run.next_try_at is not None and now < run.next_try_at and run.state is not RunState.SENDING:
            return (run.next_try_at - now).total_seconds()
        if run.state is RunState.PENDING:
            return await self._start(action, run, request)
        if run.state is RunState.SENDING:
            # Only a previous process can have left a run here (a tick never sees its own start under way).
            return await self._mark_in_doubt(action, run, "the daemon stopped while the start was under way")
        if run.state is RunState.IN_DOUBT:
            return await self._reconcile(action, run, request)
        return await self._follow(action, run)

    async def _start(self, action: Action, run: RunSnapshot, request: ActionRequest) -> float:
        if not await self._db.run(self._store.begin_run, run.id, now=self._clock.now()):
            return TARGET_BUSY_RETRY
        self._crash.hit("after_intent_commit")
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
            await self._db.run(
                self._store.run_not_started,
                run.id,
                str(exc),
                now=self._clock.now(),
                next_try_at=self._clock.now() + dt.timedelta(seconds=delay),
            )
            return delay
        except PermanentError as exc:
            self._count(action, "rejected")
            await self._db.run(self._store.run_finished, run.id, RunState.REJECTED, str(exc), now=self._clock.now())
            self._log.error("action %s of job %s rejected: %s", run.action_index, request.job_name, exc)
            return 0.0
        except (InDoubt, TransientError) as exc:
            self._count(action, "in_doubt")
            return await self._mark_in_doubt(action, run, str(exc))
        except Exception as exc:  # an unexpected plugin error after the call may have gone out: in doubt
            self._log.exception("action %s of job %s failed while starting", run.action_index, request.job_name)
            self._count(action, "in_doubt")
            return await self._mark_in_doubt(action, run, f"action plugin error: {exc}")
        finally:
            self._metrics.action_duration.labels(action.type_name).observe(self._clock.monotonic() - started)
        self._count(action, "started")
        self._failures.pop(run.id, None)
        self._crash.hit("after_start_response")
        await self._db.run(self._store.run_started, run.id, result, now=self._clock.now())
        self._record_finish(action, result)
        return action.follow_interval if result.outcome is ActionOutcome.RUNNING else 0.0

    async def _mark_in_doubt(self, action: Action, run: RunSnapshot, message: str) -> float:
        now = self._clock.now()
        wait = max(action.search_lag, MIN_SEARCH_SPACING)
        due = (run.intent_at or now) + dt.timedelta(seconds=wait)
        await self._db.run(self._store.run_in_doubt, run.id, message, now=now, next_try_at=due)
        self._log.warning("job action %s in doubt (%s); will search in %.0fs", run.id, message, wait)
        return max(0.0, (due - now).total_seconds())

    async def _reconcile(self, action: Action, run: RunSnapshot, request: ActionRequest) -> float:
        since = (run.intent_at or run.created_at) - SEARCH_MARGIN
        try:
            found = await action.find_started(request, since)
        except TransientError as exc:
            return await self._defer(run, f"search failed: {exc}", exc.retry_after)
        except PermanentError as exc:
            await self._fail(run, f"cannot tell whether it started: search refused: {exc}")
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
            return await self._adopt(action, run, list(found))
        spacing = max(action.search_lag, MIN_SEARCH_SPACING)
        count = await self._db.run(
            self._store.run_search_empty, run.id, now=now, next_try_at=now + dt.timedelta(seconds=spacing)
        )
        if count >= EMPTY_SEARCHES_BEFORE_RETRY:
            await self._db.run(
                self._store.run_not_started, run.id, f"{count} searches found nothing started", now=now, next_try_at=now
            )
            return 0.0
        return spacing

    async def _adopt(self, action: Action, run: RunSnapshot, found: list[ActionResult]) -> float:
        first, duplicates = found[0], found[1:]
        await self._db.run(self._store.run_started, run.id, first, now=self._clock.now(), how="adopted")
        self._count(action, "adopted")
        self._record_finish(action, first)
        self._crash.hit("after_adopt")
        for duplicate in duplicates:
            self._metrics.duplicate_starts.labels(action.type_name).inc()
            cancelled = await action.cancel(duplicate)
            self._log.error(
                "job action %s: duplicate downstream start %s found; %s",
                run.id,
                duplicate.external_id,
                "cancelled it" if cancelled else "could NOT cancel it: a person must look",
            )
        return 0.0 if first.outcome.is_finished else action.follow_interval

    async def _follow(self, action: Action, run: RunSnapshot) -> float:
        self._crash.hit("during_follow")
        try:
            result = await action.follow(run.as_result())
        except TransientError as exc:
            return await self._defer(run, f"following {run.external_id} failed: {exc}", exc.retry_after)
        except PermanentError as exc:
            await self._fail(run, f"cannot follow {run.external_id}: {exc}")
            return 0.0
        self._failures.pop(run.id, None)
        await self._db.run(self._store.run_progress, run.id, result, now=self._clock.now())
        self._record_finish(action, result)
        return 0.0 if result.outcome.is_finished else action.follow_interval

    async def _fail(self, run: RunSnapshot, message: str) -> None:
        """End a run as failed without a downstream result, for a person to look at."""
        await self._db.run(self._store.run_finished, run.id, RunState.FAILED, message, now=self._clock.now())

    def _count(self, action: Action, outcome: str) -> None:
        self._metrics.actions.labels(action.type_name, outcome).inc()

    def _record_finish(self, action: Action, result: ActionResult) -> None:
        if result.outcome.is_finished:
            self._count(action, result.outcome.value)
            self._metrics.downstream_jobs.labels(action.type_name, result.vendor_status or result.outcome.value).inc()

    async def _defer(self, run: RunSnapshot, message: str, retry_after: float | None) -> float:
        previous = self._failures.get(run.id)
        attempt = (previous.reads if previous else 0) + 1
        kind = ConditionKind.RECONCILE if run.state is RunState.IN_DOUBT else ConditionKind.ACTION
        self._failures[run.id] = _StepFailure(kind, message, attempt)
        delay = backoff_delay(attempt, retry_after, rng=self._rng)
        now = self._clock.now()
        await self._db.run(
            self._store.defer_run, run.id, message, now=now, next_try_at=now + dt.timedelta(seconds=delay)
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

    async def _orphaned(self, run: RunSnapshot) -> float:
        await self._fail(run, "its action was removed from the configuration before it finished")
        return 0.0
