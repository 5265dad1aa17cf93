"""The only module that imports APScheduler: an in-process ticker with one interval job per TeckoChecker job.

APScheduler 3.x keeps its jobs in memory only; our own tables hold all state (its FAQ: a job store
cannot be shared between processes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from teckochecker.clock import Clock
from teckochecker.metrics import Metrics

TickFunction = Callable[[str], Awaitable[None]]


class Ticker:
    def __init__(self, tick: TickFunction, clock: Clock, logger: logging.Logger, metrics: Metrics) -> None:
        self._tick = tick
        self._clock = clock
        self._log = logger
        self._metrics = metrics
        self._scheduler = AsyncIOScheduler(timezone=dt.timezone.utc)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self._scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self.last_tick_at: float | None = None
        self.shut_down = False

    def start(self) -> None:
        """Call from inside the running event loop."""
        self._scheduler.start()

    def pause(self) -> None:
        if self._scheduler.running:
            self._scheduler.pause()

    def shutdown(self) -> None:
        self.shut_down = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def schedule(self, name: str, interval: float, first_in: float = 0.0) -> None:
        self._scheduler.add_job(
            self._tick,
            trigger=IntervalTrigger(seconds=interval, jitter=_jitter(interval)),
            args=[name],
            id=name,
            name=name,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            # APScheduler's default grace is 1 s; a tick that is late is still worth running.
            misfire_grace_time=int(interval),
            next_run_time=self._clock.now() + dt.timedelta(seconds=max(0.0, first_in)),
        )

    def run_in(self, name: str, seconds: float) -> None:
        """Bring the next tick of ``name`` forward (back-off, reconcile waits, following)."""
        job = self._scheduler.get_job(name)
        if job is None:
            return
        when = self._clock.now() + dt.timedelta(seconds=max(0.0, seconds))
        if job.next_run_time is None or when < job.next_run_time:
            job.modify(next_run_time=when)

    def unschedule(self, name: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(name)

    def next_run(self, name: str) -> dt.datetime | None:
        job = self._scheduler.get_job(name)
        return job.next_run_time if job else None

    def scheduled(self) -> dict[str, dt.datetime | None]:
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def _on_skipped(self, event: JobEvent) -> None:
        self._metrics.scheduler_skipped_ticks.inc()
        self._log.debug("tick of %s skipped (still running or missed)", event.job_id)

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        now = self._clock.now()
        self.last_tick_at = self._clock.monotonic()
        for scheduled in event.scheduled_run_times:
            self._metrics.scheduler_lag.observe(max(0.0, (now - scheduled).total_seconds()))


def _jitter(interval: float) -> int:
    # Spread many jobs with equal intervals over a few seconds, without making any noticeably late.
    return max(1, min(10, int(interval * 0.05)))
