"""The composition root: builds everything the daemon needs, runs it, reloads it, shuts it down cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

from teckochecker.clock import Clock
from teckochecker.config.validate import Config, load_config
from teckochecker.config.watching import Reloader, config_checksum, watched_dirs
from teckochecker.control import RELOAD_META, ReloadStatus, reload_status_json
from teckochecker.crashpoints import CrashPoints
from teckochecker.errors import ConfigError, SecretError, StateStoreError, TeckoCheckerError
from teckochecker.http import HttpClientPool
from teckochecker.metrics import Metrics
from teckochecker.offloop import run_off_loop
from teckochecker.plugin_api import PluginContext, SharedRegistry
from teckochecker.plugins import PluginRegistry
from teckochecker.runner import JobRunner
from teckochecker.runtime import JobRuntime
from teckochecker.scheduling import Ticker
from teckochecker.sdnotify import Notifier, run_watchdog
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.services import TickServices
from teckochecker.state.heartbeat import HEARTBEAT_META, HEARTBEAT_PERIOD, Heartbeat, heartbeat_json
from teckochecker.state.location import (
    SingleInstanceLock,
    StoreFileIdentity,
    ensure_parent,
    resolve_state_url,
    sqlite_path,
)
from teckochecker.state.models import Event, JobSnapshot, JobState
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker
from teckochecker.web.routes import create_app
from teckochecker.web.server import WebServer

# SIGTERM must end the process within 5 s; ticks get this long to finish their current step.
SHUTDOWN_GRACE = 3.0
# Sooner than this, the next step of a job runs within the current tick.
MIN_RESCHEDULE = 0.5
MAX_STEPS_PER_TICK = 20
GAUGE_REFRESH = 15.0
# A scheduled tick this late means the loop is stuck: stop feeding the systemd watchdog.
WATCHDOG_OVERDUE = 60.0
# Reading and validating 10,000 jobs takes one to three minutes on a busy 2-core machine; past this, a read hangs.
RELOAD_TIMEOUT = 600.0
# A reload applies this many jobs between two turns of the event loop.
APPLY_CHUNK = 100
LOGGED_NAMES = 20


class Daemon:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        *,
        registry: PluginRegistry,
        environ: Mapping[str, str],
        clock: Clock,
        redactor: Redactor,
        logger: logging.Logger,
        cwd: Path,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._notifier = notifier or Notifier({})
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self._registry = registry
        self._environ = environ
        self._clock = clock
        self._redactor = redactor
        self._log = logger
        self._cwd = cwd
        self._jobs: dict[str, JobRuntime] = {}
        self._ticks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reload_reasons: set[str] = set()
        self._rng = random.Random()
        self._secrets = SecretResolver(config.secrets, environ, redactor)
        self._attempted_checksum = config_checksum(config_path, config.include)
        self.reload_status = ReloadStatus(successful=True, at=clock.now())
        self._unsaved_reload: ReloadStatus | None = None
        self._store_file: StoreFileIdentity | None = None
        self.store_problem: str | None = None

    # ----- lifecycle -----

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self, reason: str) -> None:
        self._reload_reasons.add(reason)
        self._reload_wanted.set()

    async def run(self) -> None:
        self._check_secrets(self._secrets)
        url = resolve_state_url(self.config.state.url, self._environ, self._cwd)
        lock = self._lock(url)
        self.store = StateStore.open(url, redact=self._redactor.redact)
        db_path = sqlite_path(url)
        self._store_file = StoreFileIdentity.of(db_path) if db_path is not None else None
        self._worker = StoreWorker(hidden=[make_url(url).password or ""])
        self._http = HttpClientPool(self.config.defaults.concurrency, self.metrics)
        try:
            await self._serve()
        finally:
            await self._shutdown()
            self.store.close()
            if lock:
                lock.release()

    async def _serve(self) -> None:
        await self._beat()
        self._context = PluginContext(
            http=self._http,
            clock=self._clock,
            secret=self._secret,
            logger=logging.getLogger("teckochecker.plugins"),
            shared=SharedRegistry(),
        )
        self._jobs = {name: JobRuntime.build(d, self._context) for name, d in self.config.jobs.items()}
        await self._worker.run(self.store.sync_jobs, [j.plan() for j in self._jobs.values()], self._clock.now())
        self._runner = JobRunner(
            TickServices(
                self.store, self._worker, self._clock, CrashPoints(self._environ), self._log, self.metrics, self._rng
            )
        )
        self._ticker = Ticker(self._tick, self._clock, self._log, self.metrics)
        self._ticker.start()
        self._web = WebServer(
            create_app(DaemonControlImpl(self), self.metrics, logging.getLogger("teckochecker.http"), self._redactor),
            self.config.http.listen,
            self.config.http.port,
            self._log,
        )
        await self._web.start()
        await self._schedule_all()
        self._mark_reload(ReloadStatus(successful=True, at=self._clock.now()))
        await self._save_reload_status()
        self._install_signals()
        self._reloader = Reloader(self.request_reload, self._log)
        self._reloader.start(watched_dirs(self.config_path, self.config.include))
        background = [
            asyncio.create_task(self._reload_loop(), name="reload"),
            asyncio.create_task(self._gauge_loop(), name="gauges"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        self._watchdog = asyncio.create_task(
            run_watchdog(self._notifier, self._ticking, self._clock.sleep), name="watchdog"
        )
        self._log.info(
            "teckochecker started: %d job(s), %d scheduled, state %s",
            len(self._jobs),
            len(self._ticker.scheduled()),
            self.store.url,
        )
        self._notifier.ready(f"{len(self._jobs)} job(s)")
        try:
            await self._stop.wait()
        finally:
            self._notifier.stopping()
            self._log.info("stopping")
            await self._reloader.stop()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    def _ticking(self) -> bool:
        """For the systemd watchdog: the event loop runs (we are here) and no scheduled tick is overdue."""
        if self.store_problem is not None:
            # Idle on purpose: a watchdog restart would open an empty store and fire every trigger again.
            return True
        now = self._clock.now()
        return all(
            when is None or (now - when).total_seconds() < WATCHDOG_OVERDUE
            for when in self._ticker.scheduled().values()
        )

    async def _schedule_all(self) -> None:
        states = await self._worker.run(self.store.job_states)
        spread = self.config.defaults.startup_spread
        for name, job in self._jobs.items():
            state = states.get(name)
            if state is None or state.is_final:
                continue
            first = 0.0 if state is JobState.FIRING else self._rng.uniform(0, min(spread, job.definition.interval))
            self._ticker.schedule(name, job.definition.interval, first)

    def _secret(self, name: str) -> str:
        # Plugins hold this bound method; a reload swaps the resolver behind it.
        return self._secrets(name)

    def _check_secrets(self, resolver: SecretResolver) -> None:
        """Fail at start (or refuse a reload), not at the first check hours later, when a secret cannot be read."""
        problems = [reason for reason in resolver.check_all().values() if reason]
        if problems:
            raise SecretError("; ".join(problems))
        for warning in resolver.permission_warnings():
            self._log.warning("%s", warning)

    def store_intact(self) -> bool:
        """False, for good, once the SQLite file was deleted or replaced under us; the first time, stop acting."""
        if self.store_problem is not None:
            return False
        problem = self._store_file.problem() if self._store_file is not None else None
        if problem is None:
            return True
        self.store_problem = problem
        self._ticker.pause()
        self._log.error("%s; stopped acting; restart the daemon after restoring it", problem)
        return False

    def _lock(self, url: str) -> SingleInstanceLock | None:
        path = sqlite_path(url)
        if path is None:
            return None
        ensure_parent(path)
        lock = SingleInstanceLock(path)
        lock.acquire()
        return lock

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")

    # ----- ticking -----

    async def _tick(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is None or self._stop.is_set() or not self.store_intact():
            return
        task = asyncio.current_task()
        assert task is not None
        self._ticks.add(task)
        try:
            result = await self._runner.tick(job)
            steps = 1
            # A step due at once runs here: re-scheduling the job from inside its own run would be skipped.
            while result.next_in is not None and result.next_in < MIN_RESCHEDULE and steps < MAX_STEPS_PER_TICK:
                if self._stop.is_set() or not self.store_intact():
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
            await self._retire_if_removed(name)
        elif result.next_in is not None:
            self._ticker.run_in(name, max(result.next_in, MIN_RESCHEDULE))

    async def _retire_if_removed(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is not None and name not in self.config.jobs:
            del self._jobs[name]
            await job.aclose()

    # ----- reload -----

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            reasons, self._reload_reasons = self._reload_reasons, set()
            await self.reload(forced="SIGHUP" in reasons, reason=", ".join(sorted(reasons)))
            try:
                await self._save_reload_status()
            except Exception as exc:  # the store may be down; the outcome is still in /api/v1/status and metrics
                self._log.warning("cannot save the config reload outcome to the state store: %s", exc)

    async def reload(self, *, forced: bool, reason: str) -> ReloadStatus | None:
        """Validate the whole config; apply the difference, or keep the running config untouched.

        The single place every reload goes through: whatever goes wrong in it (a RecursionError in the
        parser, an OSError, a bug) is reported as a failed reload, never lost and never fatal."""
        try:
            reading = run_off_loop("config-checksum", config_checksum, self.config_path, self.config.include)
            checksum = await asyncio.wait_for(reading, RELOAD_TIMEOUT)
            if (checksum == self._attempted_checksum and not forced) or not self.store_intact():
                return None
            self._attempted_checksum = checksum
            self._log.info("reloading config (%s)", reason)
            self._notifier.reloading()
            try:
                return await self._load_and_apply()
            finally:
                self._notifier.ready()
        except Exception as exc:
            self._log.debug("config reload failed unexpectedly", exc_info=True)  # the traceback, for a bug report
            problem = f"unexpected {type(exc).__name__} while reloading: {str(exc)[:500] or 'no message'}"
            return self._reload_failed([problem])

    async def _load_and_apply(self) -> ReloadStatus:
        # Reading, parsing and validating are pure and can take seconds for a big config: off the loop,
        # so /healthz and the ticks keep running. Only the apply step below touches live state.
        try:
            loading = run_off_loop("config-load", self._load_new_config)
            new, checksum = await asyncio.wait_for(loading, RELOAD_TIMEOUT)
            # On the loop: checking registers secret values with the Redactor, which log calls read.
            resolver = SecretResolver(new.secrets, self._environ, self._redactor)
            self._check_secrets(resolver)
        except TimeoutError:
            # The thread may hang on for good (a read that never ends); the daemon carries on without it.
            return self._reload_failed([f"reading and validating the config took over {RELOAD_TIMEOUT:.0f} s"])
        except ConfigError as exc:
            return self._reload_failed([str(d) for d in exc.diagnostics])
        except TeckoCheckerError as exc:
            return self._reload_failed([str(exc)])
        self._attempted_checksum = checksum
        new, restart_required = _keep_restart_only_settings(self.config, new)
        for setting in restart_required:
            self._log.warning("config: %s changed; it takes effect after a restart (not applied)", setting)
        self._secrets = resolver
        await self._apply(new)
        self._reloader.watch(watched_dirs(self.config_path, new.include))
        logging.getLogger().setLevel(new.log_level)
        status = ReloadStatus(successful=True, at=self._clock.now(), restart_required=tuple(restart_required))
        self._mark_reload(status)
        return status

    def _load_new_config(self) -> tuple[Config, str]:
        """Runs on a thread: the new config, and the checksum of the files it was read from."""
        new = load_config(self.config_path, self._registry)
        return new, config_checksum(self.config_path, new.include)

    async def _save_reload_status(self) -> None:
        """Keep the last (re)load's outcome in the state store, where `teckochecker status` reads it."""
        status, self._unsaved_reload = self._unsaved_reload, None
        if status is not None:
            await self._worker.run(self.store.set_meta, RELOAD_META, reload_status_json(status))

    def _reload_failed(self, errors: list[str]) -> ReloadStatus:
        for line in errors:
            self._log.error("config reload: %s", line)
        self._log.error("config reload failed (%d problem(s)); the running config stays", len(errors))
        status = ReloadStatus(successful=False, at=self._clock.now(), errors=tuple(errors))
        self._mark_reload(status)
        return status

    def _mark_reload(self, status: ReloadStatus) -> None:
        self.reload_status = status
        self._unsaved_reload = status
        self.metrics.config_last_reload_successful.set(1 if status.successful else 0)
        if status.successful:
            self.metrics.config_last_reload_success_timestamp.set(time.time())
        result = "success" if status.successful else "failure"
        self.metrics.config_reloads.labels("restart_required" if status.restart_required else result).inc()

    async def _apply(self, new: Config) -> None:
        old_jobs = self._jobs
        states = await self._worker.run(self.store.job_states)
        added = [n for n in new.jobs if n not in old_jobs]
        removed = [n for n in old_jobs if n not in new.jobs]
        changed = [
            n for n in new.jobs if n in old_jobs and new.jobs[n].fingerprint != old_jobs[n].definition.fingerprint
        ]
        self.config = new
        jobs = dict(old_jobs)
        for count, name in enumerate(added, 1):
            jobs[name] = JobRuntime.build(new.jobs[name], self._context)
            await _yield_every(count)
        for count, name in enumerate(changed, 1):
            if states.get(name) is JobState.FIRING:
                # It already fired: its actions finish with the definition they started with.
                continue
            await jobs[name].aclose()
            jobs[name] = JobRuntime.build(new.jobs[name], self._context)
            await _yield_every(count)
        self._jobs = jobs
        plans = [jobs[n].plan() for n in new.jobs]
        await self._worker.run(self.store.sync_jobs, plans, self._clock.now())
        self._runner.forget()
        for count, name in enumerate(removed, 1):
            if states.get(name) is JobState.FIRING:
                continue  # a reload never abandons a trigger: it runs to its end, then retires
            self._ticker.unschedule(name)
            await jobs.pop(name).aclose()
            await _yield_every(count)
        await self._reschedule(added, changed)
        self._log.info(
            "config reloaded: %d added %s, %d changed %s, %d removed %s, %d unchanged",
            len(added),
            _some(added),
            len(changed),
            _some(changed),
            len(removed),
            _some(removed),
            len(new.jobs) - len(added) - len(changed),
        )

    async def _reschedule(self, added: list[str], changed: list[str]) -> None:
        states = await self._worker.run(self.store.job_states)
        for count, name in enumerate(added, 1):
            state = states.get(name)
            if state is not None and not state.is_final:
                self._ticker.schedule(name, self.config.jobs[name].interval, 0.0)
            await _yield_every(count)
        for count, name in enumerate(changed, 1):
            state = states.get(name)
            if state is None or state.is_final:
                continue
            interval = self.config.jobs[name].interval
            previous = self._ticker.next_run(name)
            wait = interval if previous is None else (previous - self._clock.now()).total_seconds()
            # Keep the job's rhythm; only a shorter interval brings its next check forward.
            self._ticker.schedule(name, interval, max(0.0, min(wait, interval)))
            await _yield_every(count)

    # ----- gauges -----

    async def _gauge_loop(self) -> None:
        while self.store_intact():
            try:
                await self._runner.flush()
                self.metrics.observe(await self._worker.run(self.store.gauges))
            except Exception as exc:  # the state store may be briefly unreachable; metrics can wait
                self._log.warning("cannot refresh job metrics: %s", exc)
            await asyncio.sleep(GAUGE_REFRESH)

    # ----- heartbeat -----

    async def _beat(self, *, stopped: bool = False) -> None:
        """Tell `teckochecker status` that this daemon runs (teckochecker.state.heartbeat)."""
        beat = Heartbeat(self._clock.now(), os.getpid(), socket.gethostname(), stopped)
        await self._worker.run(self.store.set_meta, HEARTBEAT_META, heartbeat_json(beat))

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            await self._clock.sleep(HEARTBEAT_PERIOD)
            try:
                await self._beat()
            except Exception as exc:  # the state store may be briefly unreachable; say so once, not every beat
                if not failing:
                    self._log.warning("cannot write the heartbeat to the state store: %s", exc)
                failing = True
            else:
                if failing:
                    self._log.info("heartbeat written again")
                failing = False

    # ----- shutdown -----

    async def _shutdown(self) -> None:
        ticker = getattr(self, "_ticker", None)
        if ticker is not None:
            ticker.pause()  # no new ticks; shutting APScheduler down now would cancel the running ones
        web = getattr(self, "_web", None)
        if web is not None:
            await web.stop()
        if self._ticks:
            # A tick cut short mid-start leaves its run as SENDING: the next start reconciles it.
            _, pending = await asyncio.wait(set(self._ticks), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)
        if ticker is not None:
            ticker.shutdown()
            if self.store_problem is None:  # never write into a store that is not the one we opened
                await self._runner.flush()
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.cancel()  # last: systemd keeps getting pings while the ticks drain
        for job in self._jobs.values():
            await job.aclose()
        await self._http.aclose()
        try:
            await self._beat(stopped=True)
        except Exception as exc:  # shutting down anyway; `status` then sees the heartbeat go stale
            self._log.warning("cannot record the stop in the state store: %s", exc)
        await asyncio.get_running_loop().run_in_executor(None, self._worker.close)


class DaemonControlImpl:
    """What the HTTP layer may ask of this daemon (teckochecker.control.DaemonControl)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon

    async def jobs(self) -> list[JobSnapshot]:
        return await self._d._worker.run(self._d.store.jobs)

    async def job(self, name: str) -> JobSnapshot | None:
        return await self._d._worker.run(self._d.store.job, name)

    async def events(self, name: str, limit: int) -> list[Event]:
        return await self._d._worker.run(self._d.store.events, name, limit=limit)

    def next_run(self, name: str) -> dt.datetime | None:
        return self._d._ticker.next_run(name)

    async def readiness(self) -> dict[str, bool]:
        try:
            await self._d._worker.run(self._d.store.ping)
            store_ok = self._d.store_intact()
        except Exception:
            store_ok = False
        return {
            "config_loaded": self._d.config is not None,
            "state_store": store_ok,
            "scheduler": self._d._ticker.running,
        }

    def store_problem(self) -> str | None:
        return self._d.store_problem

    def _require_store(self) -> None:
        if not self._d.store_intact():
            raise StateStoreError(f"{self._d.store_problem}; the daemon stopped acting until it is restarted")

    async def pause(self, name: str) -> bool:
        self._require_store()
        paused = await self._d._worker.run(self._d.store.set_paused, name, True, now=self._d._clock.now())
        self._d._runner.forget(name)
        return paused

    async def resume(self, name: str) -> bool:
        self._require_store()
        resumed = await self._d._worker.run(self._d.store.set_paused, name, False, now=self._d._clock.now())
        self._d._runner.forget(name)
        if resumed:
            self._d._ticker.run_in(name, 0)
        return resumed

    async def check_now(self, name: str) -> bool:
        self._require_store()
        if self._d._ticker.next_run(name) is None:
            return False
        self._d._ticker.run_in(name, 0)
        return True

    def reload_status(self) -> ReloadStatus:
        return self._d.reload_status

    def api_token(self) -> str | None:
        name = self._d.config.http.api_token
        return self._d._secret(name) if name else None


RESTART_ONLY = {
    "state.url": lambda c: c.state.url,
    "http.listen": lambda c: c.http.listen,
    "http.port": lambda c: c.http.port,
    "defaults.concurrency": lambda c: c.defaults.concurrency,
}


def _keep_restart_only_settings(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The new config, with settings that need a restart kept at their running values; and their names."""
    changed = [name for name, get in RESTART_ONLY.items() if get(old) != get(new)]
    if not changed:
        return new, []
    kept = dataclasses.replace(
        new,
        state=old.state,
        http=new.http.model_copy(update={"listen": old.http.listen, "port": old.http.port}),
        defaults=new.defaults.model_copy(update={"concurrency": old.defaults.concurrency}),
    )
    return kept, changed


async def _yield_every(count: int) -> None:
    """Let the loop serve /healthz and ticks between chunks of a big apply (10,000 jobs added at once)."""
    if count % APPLY_CHUNK == 0:
        await asyncio.sleep(0)


def _some(names: list[str]) -> str:
    """A log-sized list of job names: a reload adding 10,000 jobs should not write a 200 kB line."""
    if len(names) <= LOGGED_NAMES:
        return str(names)
    return f"{names[:LOGGED_NAMES]} and {len(names) - LOGGED_NAMES} more"
