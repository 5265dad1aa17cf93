"""The composition root: builds everything the daemon needs, runs it, and shuts it down cleanly."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Mapping
from pathlib import Path

from teckochecker.clock import Clock
from teckochecker.crashpoints import CrashPoints
from teckochecker.errors import SecretError
from teckochecker.http import HttpClientPool
from teckochecker.plugin_api import PluginContext
from teckochecker.runner import JobRunner
from teckochecker.runtime import JobRuntime
from teckochecker.scheduling import Ticker
from teckochecker.secrets import Redactor, SecretResolver
from teckochecker.state.location import SingleInstanceLock, ensure_parent, resolve_state_url, sqlite_path
from teckochecker.state.models import JobState
from teckochecker.state.store import StateStore
from teckochecker.storeworker import StoreWorker
from teckochecker.validate import Config

# SIGTERM must end the process within 5 s; ticks get this long to finish their current step.
SHUTDOWN_GRACE = 3.0
# Sooner than this, the next step of a job runs within the current tick.
MIN_RESCHEDULE = 0.5
MAX_STEPS_PER_TICK = 20


class Daemon:
    def __init__(
        self, config: Config, *, environ: Mapping[str, str], clock: Clock, redactor: Redactor,
        logger: logging.Logger, cwd: Path,
    ) -> None:
        self.config = config
        self._environ = environ
        self._clock = clock
        self._redactor = redactor
        self._log = logger
        self._cwd = cwd
        self._jobs: dict[str, JobRuntime] = {}
        self._ticks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._rng = random.Random()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self._check_secrets()
        url = resolve_state_url(self.config.state.url, self._environ, self._cwd)
        lock = self._lock(url)
        store = StateStore.open(url)
        worker = StoreWorker()
        http = HttpClientPool(self.config.defaults.concurrency)
        try:
            await self._serve(store, worker, http)
        finally:
            await self._shutdown(worker, http)
            store.close()
            if lock:
                lock.release()

    def _check_secrets(self) -> None:
        """Fail at start, not at the first check hours later, when a secret cannot be read."""
        resolver = SecretResolver(self.config.secrets, self._environ, self._redactor)
        problems = [reason for reason in resolver.check_all().values() if reason]
        if problems:
            raise SecretError("; ".join(problems))

    def _lock(self, url: str) -> SingleInstanceLock | None:
        path = sqlite_path(url)
        if path is None:
            return None
        ensure_parent(path)
        lock = SingleInstanceLock(path)
        lock.acquire()
        return lock

    async def _serve(self, store: StateStore, worker: StoreWorker, http: HttpClientPool) -> None:
        secrets = SecretResolver(self.config.secrets, self._environ, self._redactor)
        context = PluginContext(
            http=http, clock=self._clock, secret=secrets, logger=logging.getLogger("teckochecker.plugins"),
        )
        self._jobs = {name: JobRuntime.build(d, context) for name, d in self.config.jobs.items()}
        await worker.run(store.sync_jobs, [j.plan() for j in self._jobs.values()], self._clock.now())
        self._runner = JobRunner(store, worker, self._clock, CrashPoints(self._environ), self._log, self._rng)
        self._ticker = Ticker(self._tick, self._clock, self._log)
        self._ticker.start()
        snapshots = {s.name: s for s in await worker.run(store.jobs)}
        spread = self.config.defaults.startup_spread
        for name, job in self._jobs.items():
            snap = snapshots.get(name)
            if snap is None or snap.state.is_final:
                continue
            first = 0.0 if snap.state is JobState.FIRING else self._rng.uniform(0, min(spread, job.definition.interval))
            self._ticker.schedule(name, job.definition.interval, first)
        self._install_signals()
        self._log.info(
            "teckochecker started: %d job(s), %d scheduled, state %s", len(self._jobs),
            len(self._ticker.scheduled()), store.url,
        )
        await self._stop.wait()
        self._log.info("stopping")

    async def _tick(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is None or self._stop.is_set():
            return
        task = asyncio.current_task()
        assert task is not None
        self._ticks.add(task)
        try:
            result = await self._runner.tick(job)
            steps = 1
            # A step due at once runs here: re-scheduling the job from inside its own run would be skipped.
            while result.next_in is not None and result.next_in < MIN_RESCHEDULE and steps < MAX_STEPS_PER_TICK:
                if self._stop.is_set():
                    break
                result = await self._runner.tick(job)
                steps += 1
        except asyncio.CancelledError:
            # Only shutdown cancels a tick; the state machine picks up where it stopped (a start → in doubt).
            self._log.info("tick of job %s cut short by shutdown", name)
            return
        except Exception:
            self._log.exception("tick of job %s failed; it runs again at its next interval", name)
            return
        finally:
            self._ticks.discard(task)
        if result.done:
            self._ticker.unschedule(name)
        elif result.next_in is not None:
            self._ticker.run_in(name, max(result.next_in, MIN_RESCHEDULE))

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def _shutdown(self, worker: StoreWorker, http: HttpClientPool) -> None:
        ticker = getattr(self, "_ticker", None)
        if ticker is not None:
            ticker.pause()  # no new ticks; shutting APScheduler down now would cancel the running ones
        if self._ticks:
            # A tick cut short mid-start leaves its run as SENDING: the next start reconciles it.
            _, pending = await asyncio.wait(set(self._ticks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)
        if ticker is not None:
            ticker.shutdown()
        for job in self._jobs.values():
            await job.aclose()
        await http.aclose()
        await asyncio.get_running_loop().run_in_executor(None, worker.close)
