"""The jobs the daemon runs now: their plugin objects, their place in the schedule, and their ticks.

The composition root (app.py) builds one; a reload hands it the difference to apply; the control object
asks it to run a job now. A tick itself is the runner's (runner.py); here is only when ticks happen, how
many steps one may take, and how they end on shutdown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from teckochecker.clock import Clock
from teckochecker.config.validate import JobDefinition
from teckochecker.errors import Fenced
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import PluginContext
from teckochecker.reload import JobDiff
from teckochecker.runner import JobRunner, TickResult
from teckochecker.runtime import JobRuntime
from teckochecker.scheduling import Ticker
from teckochecker.services import TickServices
from teckochecker.state.guard import StoreGuard
from teckochecker.state.models import JobState

# Sooner than this, the next step of a job runs within the current tick.
MIN_RESCHEDULE = 0.5
MAX_STEPS_PER_TICK = 20
# A scheduled tick this late means the loop is stuck: stop feeding the systemd watchdog.
WATCHDOG_OVERDUE = 60.0
# A reload applies this many jobs between two turns of the event loop.
APPLY_CHUNK = 100
# Hinted ticks that cannot let their job fire (it waits for targets no hint has named yet) run at most this
# many at once; a hint that can let its job fire is checked at once, ahead of them (see hint()).
DEFERRED_HINT_TICKS = 10
# A target a notification named that the fresh check still shows unfinished (OpenAI's batch events are all
# about ended batches, so its read lags its event) is checked fresh again after these delays, then left to
# the job's poll.
RECHECK_DELAYS = (5.0, 15.0, 45.0)


@dataclass(frozen=True)
class _Recheck:
    """A hinted target to be checked fresh again."""

    due: float  # monotonic time of the next check
    received: float  # monotonic receipt of the notification that named it (for webhook_to_action)
    checks: int  # fresh checks so far


class RunningJobs:
    def __init__(
        self,
        services: TickServices,
        context: PluginContext,
        guard: StoreGuard,
        *,
        stopping: Callable[[], bool],
        metrics: Metrics,
        logger: logging.Logger,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._services = services
        self._store = services.store
        self._db = services.worker
        self._context = context
        self._guard = guard
        self._clock = clock
        self._log = logger
        self._rng = rng
        self._runner = JobRunner(services)
        self._metrics = metrics
        self._ticker = Ticker(self._tick, clock, logger, metrics)
        self._definitions: Mapping[str, JobDefinition] = {}
        self._jobs: dict[str, JobRuntime] = {}
        self._ticks: set[asyncio.Task[None]] = set()
        self._halted = False
        self._stopping = stopping
        # Push notifications (webhooks): which jobs watch a target, per channel; and per job, the targets a
        # notification named that its next tick checks first, with when the notification was received.
        self._watchers: dict[tuple[str, str], tuple[str, ...]] = {}
        self._hints: dict[str, dict[str, float]] = {}
        self._ticking: set[str] = set()
        # Hinted jobs that cannot fire yet, in the order hinted, and those of them let run now.
        self._deferred: dict[str, None] = {}
        self._deferred_running: set[str] = set()
        # Per job, hinted targets to check fresh again.
        self._rechecks: dict[str, dict[str, _Recheck]] = {}

    # ----- start and stop -----

    async def start(self, definitions: Mapping[str, JobDefinition], startup_spread: float) -> None:
        """Build every job, record the plan, and schedule what is not finished (spread over the start)."""
        if self._ticker.shut_down:  # a replica that leads again after standing by
            self._ticker = Ticker(self._tick, self._clock, self._log, self._metrics)
        self._halted = False
        self._deferred, self._deferred_running, self._rechecks = {}, set(), {}
        self._definitions = definitions
        self._jobs = {name: JobRuntime.build(d, self._context) for name, d in definitions.items()}
        self._watchers = _watchers(self._jobs.values())
        await self._db.run(self._store.sync_jobs, [j.plan() for j in self._jobs.values()], self._clock.now())
        self._ticker.start()
        states = await self._db.run(self._store.job_states)
        for name, job in self._jobs.items():
            state = states.get(name)
            if state is None or state.is_final:
                continue
            spread = min(startup_spread, job.definition.interval)
            first = 0.0 if state is JobState.FIRING else self._rng.uniform(0, spread)
            self._ticker.schedule(name, job.definition.interval, first)

    def halt(self) -> None:
        """No new ticks, and running ones stop after their current step (shutdown, or a lost store)."""
        self._halted = True
        self._ticker.pause()  # shutting APScheduler down now would cancel the running ticks

    async def stop(self, grace: float) -> None:
        """Give running ticks ``grace`` seconds, then cut them short; write what is still batched."""
        self.halt()
        if self._ticks:
            # A tick cut short mid-start leaves its run as SENDING: the next start reconciles it.
            _, pending = await asyncio.wait(set(self._ticks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)
        self._ticker.shutdown()
        if self._guard.problem is None:  # never write into a store that is not the one we opened
            await self._runner.flush()

    async def aclose(self) -> None:
        for job in self._jobs.values():
            await job.aclose()

    async def stand_down(self, grace: float) -> None:
        """A replica that stopped leading: stop every tick and forget the jobs; start() may follow later.
        Writes still under way are refused by the fence, so the last batched writes may be lost (harmless:
        quiet-check times)."""
        try:
            await self.stop(grace)
        finally:
            await self.aclose()
            self._jobs = {}
            self._runner.forget()

    # ----- what others ask -----

    @property
    def count(self) -> int:
        return len(self._jobs)

    @property
    def scheduled_count(self) -> int:
        return len(self._ticker.scheduled())

    @property
    def scheduler_running(self) -> bool:
        return self._ticker.running

    def next_run(self, name: str) -> dt.datetime | None:
        return self._ticker.next_run(name)

    def run_now(self, name: str) -> bool:
        """Run the job's next tick now; False when it is not scheduled (unknown, or finished)."""
        if self._ticker.next_run(name) is None:
            return False
        self._ticker.run_in(name, 0)
        return True

    def hint(self, channel: str, target: str, received: float) -> int:
        """A push notification on ``channel`` says ``target`` changed: every scheduled job watching it checks
        that target now, straight from the vendor. Returns how many jobs that is (0: nobody watches it).

        Only remembered and brought forward here, never run: the tick runs it, so a hint never overlaps the
        job's own poll, and several hints for one job before its tick are one check. ``received``: the
        monotonic time the notification came in (for teckochecker_webhook_to_action_seconds).

        A hint that names every target its job still waits for may let it fire: its tick runs at once. The
        others wait their turn, DEFERRED_HINT_TICKS at a time. In a burst (every batch finishing within a
        minute) the daemon cannot check each batch as its event arrives, and checking them in arrival order
        made every job wait for the whole queue; now a job's last event brings its check forward, with the
        job's earlier hinted targets, while the rest are checked as capacity allows."""
        hinted = 0
        for name in self._watchers.get((channel, target), ()):
            if self._halted or self._ticker.next_run(name) is None:
                continue  # finished (or shutting down): its targets are no longer polled either
            self._hints.setdefault(name, {}).setdefault(target, received)
            hinted += 1
            if name not in self._ticking:
                # A tick under way takes the hint when it ends; bringing it forward now would only skip a tick.
                self._run_hinted(name)
        return hinted

    def _run_hinted(self, name: str) -> None:
        if self._can_fire(name):
            self._deferred.pop(name, None)
            self._ticker.run_in(name, 0)
        elif name not in self._deferred_running:
            self._deferred.setdefault(name, None)
            self._run_deferred()

    def _can_fire(self, name: str) -> bool:
        """Whether checking the targets named for job ``name`` (hinted, or waiting to be checked again) may
        let it fire: they are all it still waits for (or that is not known without a read)."""
        pending = self._runner.pending_targets(name)
        named = self._hints.get(name, {}).keys() | self._rechecks.get(name, {}).keys()
        return pending is None or set(pending) <= named

    def _run_deferred(self) -> None:
        # A job removed (or finished) between being let run and its tick never ticks: its place is free.
        self._deferred_running = {
            n for n in self._deferred_running if n in self._ticking or self._ticker.next_run(n) is not None
        }
        while self._deferred and len(self._deferred_running) < DEFERRED_HINT_TICKS and not self._halted:
            name = next(iter(self._deferred))
            del self._deferred[name]
            if name in self._hints and name not in self._ticking and self._ticker.next_run(name) is not None:
                self._deferred_running.add(name)
                self._ticker.run_in(name, 0)

    async def set_paused(self, name: str, paused: bool) -> bool:
        """False if there is no such job. A resumed job is checked at once."""
        changed = await self._db.run(self._store.set_paused, name, paused, now=self._clock.now())
        self._runner.forget(name)
        if changed and not paused:
            self._ticker.run_in(name, 0)
        return changed

    def on_time(self) -> bool:
        """For the systemd watchdog: no scheduled tick is overdue."""
        now = self._clock.now()
        return all(
            when is None or (now - when).total_seconds() < WATCHDOG_OVERDUE
            for when in self._ticker.scheduled().values()
        )

    async def flush(self) -> None:
        await self._runner.flush()

    # ----- ticking -----

    async def _tick(self, name: str) -> None:
        try:
            await self._tick_job(name)
        finally:
            self._deferred_running.discard(name)
            self._run_deferred()

    async def _tick_job(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is None or self._stopped() or not self._guard.intact():
            return
        task = asyncio.current_task()
        assert task is not None
        self._ticks.add(task)
        self._ticking.add(name)
        try:
            result = await self._step(job)
            steps = 1
            # A step due at once runs here: re-scheduling the job from inside its own run would be skipped.
            # So does a hint that came in during the step.
            while steps < MAX_STEPS_PER_TICK and not result.done and (self._due_now(result) or name in self._hints):
                if self._stopped() or not self._guard.intact():
                    break
                result = await self._step(job)
                steps += 1
        except Fenced:
            self._log.info("tick of job %s stopped: this replica no longer leads", name)
            return
        except asyncio.CancelledError:
            # Only shutdown cancels a tick; the state machine picks up where it stopped (a start → in doubt).
            self._log.info("tick of job %s cut short by shutdown", name)
            return
        except Exception:
            self._log.exception("tick of job %s failed; it runs again at its next interval", name)
            return
        finally:
            self._ticks.discard(task)
            self._ticking.discard(name)
        if name in self._hints and not result.done:
            # Hinted after the last step: the next tick takes it. Not at once: this is still the job's own
            # run, and APScheduler skips a run of a job whose run has not ended (max_instances=1).
            self._ticker.run_in(name, MIN_RESCHEDULE)
        if result.done:
            self._hints.pop(name, None)
            self._rechecks.pop(name, None)
            self._ticker.unschedule(name)
            await self._retire_if_removed(name)
        elif result.next_in is not None:
            self._ticker.run_in(name, max(result.next_in, MIN_RESCHEDULE))
        if not result.done:
            self._arm_rechecks(name)

    async def _step(self, job: JobRuntime) -> TickResult:
        everything = self._can_fire(job.name)  # then the re-checks not due yet are taken too
        hints = self._hints.pop(job.name, {})
        checks = self._due_rechecks(job.name, everything)
        hints = {target: recheck.received for target, recheck in checks.items()} | hints
        # Timed from the last notification's receipt (the event that let the job fire, if it does; earlier
        # ones may have waited their turn, see hint()).
        notified_at = max(hints.values()) if hints else None
        result = await self._runner.tick(job, fresh=hints.keys(), notified_at=notified_at)
        if hints and not result.done:
            self._recheck_later(job.name, hints, checks)
        return result

    def _due_rechecks(self, name: str, everything: bool) -> dict[str, _Recheck]:
        """The targets due to be checked fresh again (all of them with ``everything``), taken out."""
        waiting = self._rechecks.get(name)
        if not waiting:
            return {}
        now = self._clock.monotonic()
        due = {target: recheck for target, recheck in waiting.items() if everything or recheck.due <= now}
        for target in due:
            del waiting[target]
        return due

    def _recheck_later(self, name: str, hints: Mapping[str, float], checks: Mapping[str, _Recheck]) -> None:
        pending = self._runner.pending_targets(name)
        if pending is None:  # not known without a read (the check failed, or the job fired): the poll decides
            return
        for target in set(hints) & set(pending):
            done = checks[target].checks if target in checks else 1
            if done > len(RECHECK_DELAYS):
                self._log.info(
                    "job %s: %s still unfinished after %d checks a notification asked for", name, target, done
                )
                continue
            delay = RECHECK_DELAYS[done - 1]
            due = self._clock.monotonic() + delay
            self._rechecks.setdefault(name, {})[target] = _Recheck(due, hints[target], done + 1)

    def _arm_rechecks(self, name: str) -> None:
        """Bring the job's next tick forward to its earliest re-check. Again after every tick: a tick that
        runs before it puts the next one an interval later."""
        waiting = self._rechecks.get(name)
        if waiting:
            earliest = min(recheck.due for recheck in waiting.values())
            self._ticker.run_in(name, max(MIN_RESCHEDULE, earliest - self._clock.monotonic()))

    @staticmethod
    def _due_now(result: TickResult) -> bool:
        return result.next_in is not None and result.next_in < MIN_RESCHEDULE

    def _stopped(self) -> bool:
        return self._halted or self._stopping()

    async def _retire_if_removed(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is not None and name not in self._definitions:
            del self._jobs[name]
            await job.aclose()

    # ----- reload -----

    async def apply(self, definitions: Mapping[str, JobDefinition], change: JobDiff) -> None:
        """Apply a reload's difference: build added and changed jobs, retire removed ones, keep rhythms.

        A job that already fired keeps the definition it fired with until it finishes, even when the new
        config changes or removes it."""
        states = await self._db.run(self._store.job_states)
        self._definitions = definitions
        jobs = dict(self._jobs)
        for count, name in enumerate(change.added, 1):
            jobs[name] = JobRuntime.build(definitions[name], self._context)
            await _yield_every(count)
        for count, name in enumerate(change.changed, 1):
            if states.get(name) is JobState.FIRING:
                continue
            await jobs[name].aclose()
            jobs[name] = JobRuntime.build(definitions[name], self._context)
            await _yield_every(count)
        self._jobs = jobs
        self._watchers = _watchers(jobs.values())
        await self._db.run(self._store.sync_jobs, [jobs[n].plan() for n in definitions], self._clock.now())
        self._runner.forget()
        for count, name in enumerate(change.removed, 1):
            if states.get(name) is JobState.FIRING:
                continue  # a reload never abandons a trigger: it runs to its end, then retires
            self._ticker.unschedule(name)
            if (gone := jobs.pop(name, None)) is not None:
                await gone.aclose()
            await _yield_every(count)
        await self._reschedule(change)

    async def _reschedule(self, change: JobDiff) -> None:
        states = await self._db.run(self._store.job_states)
        for count, name in enumerate(change.added, 1):
            state = states.get(name)
            if state is not None and not state.is_final:
                self._ticker.schedule(name, self._definitions[name].interval, 0.0)
            await _yield_every(count)
        for count, name in enumerate(change.changed, 1):
            state = states.get(name)
            if state is None or state.is_final:
                continue
            interval = self._definitions[name].interval
            previous = self._ticker.next_run(name)
            wait = interval if previous is None else (previous - self._clock.now()).total_seconds()
            # Keep the job's rhythm; only a shorter interval brings its next check forward.
            self._ticker.schedule(name, interval, max(0.0, min(wait, interval)))
            await _yield_every(count)


async def _yield_every(count: int) -> None:
    """Let the loop serve /healthz and ticks between chunks of a big apply (10,000 jobs added at once)."""
    if count % APPLY_CHUNK == 0:
        await asyncio.sleep(0)


def _watchers(jobs: Iterable[JobRuntime]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(push channel, target) → the jobs whose source watches that target on that channel."""
    index: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        channel = job.source.push_channel
        if channel is not None:
            for target in job.definition.source.targets:
                index.setdefault((channel, target), []).append(job.name)
    return {key: tuple(names) for key, names in index.items()}
