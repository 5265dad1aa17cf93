"""The composition root: builds the daemon's parts, starts them in order, and stops them in reverse.

``Daemon.startup()`` opens the state store, starts the jobs, the HTTP listener, the config watcher and the
background loops, then tells systemd it is ready; ``Daemon.shutdown()`` undoes that within the 5 s a
SIGTERM allows. What a part does lives in its own module: running_jobs.py (ticks and schedule), reload.py
(config reloads), control.py (what the HTTP layer may ask), state/guard.py (is the store still ours).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

from sqlalchemy.engine import make_url
from standardwebhooks.webhooks import Webhook

from teckochecker.clock import Clock
from teckochecker.config.models import TokenSpec
from teckochecker.config.validate import Config
from teckochecker.config.watching import Reloader, watched_dirs
from teckochecker.control import BearerToken, Control
from teckochecker.crashpoints import CrashPoints
from teckochecker.discovery import Discovery
from teckochecker.http import HttpClientPool
from teckochecker.metrics import Metrics
from teckochecker.outbound_guard import OutboundGuard
from teckochecker.plugin_api import PluginContext, SharedRegistry
from teckochecker.plugins import PluginRegistry
from teckochecker.registered_jobs import Assembly, RegisteredJobs
from teckochecker.reload import ConfigReloader, JobDiff, check_secrets, diff
from teckochecker.replicas import Replication, jobs_checksum
from teckochecker.running_jobs import RunningJobs
from teckochecker.sdnotify import Notifier, run_watchdog
from teckochecker.secrets.resolving import Redactor
from teckochecker.services import TickServices
from teckochecker.state.guard import StoreGuard
from teckochecker.state.heartbeat import HEARTBEAT_META, HEARTBEAT_PERIOD, Heartbeat, heartbeat_json
from teckochecker.state.leadership import Fence, LeaderLease
from teckochecker.state.location import (
    SingleInstanceLock,
    StoreFileIdentity,
    ensure_parent,
    resolve_state_url,
    sqlite_path,
)
from teckochecker.state.schema import StoreTimeouts, create_engine
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker
from teckochecker.web.routes import create_app
from teckochecker.web.server import WebServer
from teckochecker.webhooks.receiver import OpenAIWebhooks, create_webhook_app
from teckochecker.webhooks.signature import SignatureVerifier, signing_keys

# SIGTERM must end the process within 5 s; ticks get this long to finish their current step.
SHUTDOWN_GRACE = 3.0
GAUGE_REFRESH = 15.0
# How often the registered jobs' version is compared with the store's, so rows another replica (or the CLI)
# wrote are picked up: one small query. A PUT or DELETE on this daemon applies at once.
REGISTRY_POLL = 5.0
# The reload reason for a change of the registered jobs (rows in the state store, not files).
REGISTRY_CHANGED = "registered jobs changed"
# How soon a change of the jobs that could not be applied (the state store did not answer) is tried again.
APPLY_RETRY = 5.0


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
        self._environ = environ
        self._clock = clock
        self._redactor = redactor
        self._log = logger
        self._cwd = cwd
        self._notifier = notifier or Notifier({})
        self._plugins = registry
        self.metrics = metrics or Metrics()
        # Secrets only to where the files bind them: told every resolved value, and the bindings at each reload.
        self.outbound = OutboundGuard(self.metrics, logging.getLogger("teckochecker.outbound"))
        self.reloader = ConfigReloader(
            config_path,
            config,
            registry=registry,
            environ=environ,
            redactor=redactor,
            clock=clock,
            metrics=self.metrics,
            notifier=self._notifier,
            logger=logger,
            guard=self.outbound,
        )
        self._stop = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reload_reasons: set[str] = set()
        # Callers waiting for the next pass of the reload loop (a PUT answers once its job runs).
        self._rebuild_waiters: list[asyncio.Future[None]] = []
        # One change of the running jobs at a time: taking the lead, standing down, a reload or a registry
        # change (they run on the replication task and the reload loop).
        self._jobs_lock = asyncio.Lock()
        # Set once this daemon runs its jobs (the leader, after its start): a webhook hint needs them.
        self._jobs_running = False
        # Everything startup() opened, closed in reverse by shutdown(), whatever point startup reached.
        self._opened = AsyncExitStack()
        self._background: list[asyncio.Task[None]] = []

    @property
    def config(self) -> Config:
        return self.reloader.config

    # ----- what signals ask -----

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self, reason: str) -> None:
        self._reload_reasons.add(reason)
        self._reload_wanted.set()

    def registered_jobs_changed(self) -> None:
        """The registered jobs in the state store changed (a put or remove by discovery, say): rebuild the
        job definitions from the files plus those rows and apply the difference. Returns at once; the
        rebuild runs on the reload loop, so calls made while one runs are coalesced into the next."""
        self.request_reload(REGISTRY_CHANGED)

    async def rebuild_registered(self) -> None:
        """Like registered_jobs_changed(), and return once the rebuild is applied."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rebuild_waiters.append(waiter)
        self.registered_jobs_changed()
        await waiter

    # ----- lifecycle -----

    async def run(self) -> None:
        try:
            await self.startup()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        # First: a SIGTERM while starting (a job may fire during startup) must stop the daemon cleanly after
        # the start, never kill it with the default handler mid-write.
        self._install_signals()
        check_secrets(self.reloader.secrets, self._log)
        if self.config.webhooks.enabled:
            self._signing_keys()  # refuse to start on a webhook secret that is not a whole whsec_ value
        url = resolve_state_url(self.config.state.url, self._environ, self._cwd)
        self._lock(url)
        self.store = StateStore.open(
            url,
            redact=self._redactor.redact,
            upgrade=self.config.state.upgrade_on_start,
            timeouts=StoreTimeouts.of(self.config.state),
        )
        self._opened.callback(self.store.close)
        self._log_schema_upgrade()
        self.worker = StoreWorker(hidden=[make_url(url).password or ""])
        self._opened.push_async_callback(asyncio.to_thread, self.worker.close)
        db_path = sqlite_path(url)
        identity = StoreFileIdentity.of(db_path) if db_path is not None else None
        self.guard = StoreGuard(identity, self._log, on_lost=lambda: self.jobs.halt())
        self.replication: Replication | None = None if db_path is not None else self._replication(url)
        await self._beat()
        self._opened.push_async_callback(self._beat_stopped)
        self.registered = RegisteredJobs(
            self.store, self.worker, self._plugins, self._redactor, self.metrics, self._log, self._clock
        )
        await self.registered.read_if_changed()
        # Watching before any job runs: its task arms the watch at the next await, so an edit made once a job
        # has run is never missed (the reload loop, started below, takes the request).
        self._watcher = Reloader(self.request_reload, self._log)
        self._watcher.start(watched_dirs(self.reloader.config_path, self.config.include))
        self._opened.push_async_callback(self._watcher.stop)
        http = HttpClientPool(self.config.defaults.concurrency, self.metrics, guard=self.outbound)
        self._opened.push_async_callback(http.aclose)
        await self._start_jobs(http)
        await self._start_web()
        await self._start_webhooks()
        self.reloader.started()
        await self.reloader.save_status(self.worker, self.store)
        # Runs after the reload loop is cancelled: a reload applied just before SIGTERM still reaches `status`.
        self._opened.push_async_callback(self._save_reload_outcome)
        self._start_background()
        self._log.info(
            "teckochecker started: %d job(s), %d scheduled, state %s%s",
            self.jobs.count,
            self.jobs.scheduled_count,
            self.store.url,
            "" if self.replication is None else f", replica {self.replication.name} ({self.replication.role})",
        )
        self._notifier.ready(f"{self.jobs.count} job(s)")

    async def shutdown(self) -> None:
        self._notifier.stopping()
        self._log.info("stopping")
        await self._opened.aclose()

    # ----- the parts -----

    async def _start_jobs(self, http: HttpClientPool) -> None:
        context = PluginContext(
            http=http,
            clock=self._clock,
            secret=self.reloader.secret,
            logger=logging.getLogger("teckochecker.plugins"),
            shared=SharedRegistry(),
            secret_origins=self.outbound.origins,
        )
        crashpoints = CrashPoints(self._environ)
        may_act = self.replication.may_act if self.replication is not None else _always
        services = TickServices(
            self.store, self.worker, self._clock, crashpoints, self._log, self.metrics, may_act=may_act
        )
        rng = random.Random()
        self.jobs = RunningJobs(
            services,
            context,
            self.guard,
            # At once on SIGTERM: a tick stops after its current step, not after the listener has closed.
            stopping=self._stop.is_set,
            metrics=self.metrics,
            logger=self._log,
            clock=self._clock,
            rng=rng,
        )
        self._opened.push_async_callback(self.jobs.aclose)
        # Stopped after the ticks drain (exit callbacks run in reverse), so systemd keeps getting pings meanwhile.
        watchdog = asyncio.create_task(run_watchdog(self._notifier, self._on_time, self._clock.sleep), name="watchdog")
        self._opened.push_async_callback(_cancel, [watchdog])
        self._opened.push_async_callback(self.jobs.stop, SHUTDOWN_GRACE)
        self._context = context
        self.discovery: Discovery | None = None
        # Closed before the ticks drain (exit callbacks run in reverse): no new job appears while stopping.
        self._opened.push_async_callback(self._stop_discovery)
        if self.replication is None:  # SQLite: one process, guarded by its lock file
            await self._lead()
            return
        # Runs before jobs.stop above: the leader stops its ticks, then hands the lease over.
        self._opened.push_async_callback(self.replication.stop)
        await self.replication.start()
        await self.replication.wait_started()  # the startup log then counts the leader's jobs

    async def _lead(self) -> None:
        """Run every job: the file jobs plus the registered ones (at start, or when this replica leads)."""
        async with self._jobs_lock:
            assembly = await self.registered.assemble(self.config)
            await self.jobs.start(assembly.definitions, self.config.defaults.startup_spread)
            await self.registered.applied(assembly)
            self._jobs_running = True
            await self._start_discovery()

    async def _stand_down(self) -> None:
        """This replica no longer leads: no discovery, no ticks (replicas.py)."""
        async with self._jobs_lock:
            self._jobs_running = False
            try:
                await self._stop_discovery()
            finally:
                await self.jobs.stand_down(SHUTDOWN_GRACE)

    async def _start_discovery(self) -> None:
        # Only the leader discovers: groups are written by one replica, never raced by two.
        await self._stop_discovery()
        self.discovery = Discovery(
            self.store,
            self.worker,
            self._context,
            clock=self._clock,
            metrics=self.metrics,
            logger=logging.getLogger("teckochecker.discovery"),
            rebuild=self.registered_jobs_changed,
            run_now=self.jobs.run_now,
            hint=self.jobs.hint,
            file_jobs=lambda: self.config.jobs,
        )
        await self.discovery.start(self.config.discoveries)

    async def _stop_discovery(self) -> None:
        discovery, self.discovery = self.discovery, None
        if discovery is not None:
            await discovery.aclose()

    async def _start_web(self) -> None:
        control = Control(
            self.store,
            self.worker,
            self.jobs,
            self.guard,
            registered=self.registered,
            reload_status=lambda: self.reloader.status,
            bearer_tokens=self._bearer_tokens,
            config=lambda: self.reloader.config,
            rebuild=self.rebuild_registered,
            replicas=self.replication,
        )
        app = create_app(control, self.metrics, logging.getLogger("teckochecker.http"), self._redactor)
        http = self.config.http
        web = WebServer(
            app,
            http.listen,
            http.port,
            self._log,
            max_connections=http.max_connections,
            request_deadline=http.request_deadline,
        )
        await web.start()
        # Stopped before the ticks drain, so no request waits on a daemon that is going away.
        self._opened.push_async_callback(web.stop)

    def _log_schema_upgrade(self) -> None:
        upgrade = self.store.schema_upgrade
        if upgrade is not None and upgrade.changed:
            self._log.info("state store schema %s", upgrade.describe())

    def _bearer_tokens(self) -> list[BearerToken]:
        return [self._bearer_token(spec) for spec in self.config.http.bearer_tokens()]

    def _bearer_token(self, spec: TokenSpec) -> BearerToken:
        return BearerToken(self.reloader.secret(spec.secret), frozenset(s.value for s in spec.scopes))

    async def _start_webhooks(self) -> None:
        settings = self.config.webhooks
        if not settings.enabled:
            return
        assert settings.port is not None
        verifier = SignatureVerifier(self._signing_keys, self._clock)
        receiver = OpenAIWebhooks(
            verifier,
            self._hint,
            self.metrics,
            self._clock,
            logging.getLogger("teckochecker.webhooks"),
            leading=lambda: self._jobs_running,
        )
        web = WebServer(
            create_webhook_app(receiver),
            settings.listen,
            settings.port,
            self._log,
            max_connections=settings.max_connections,
            request_deadline=settings.request_deadline,
            name="webhook receiver",
            exposure="it serves only POST /webhooks/openai, verified by signature",
        )
        await web.start()
        # Stopped with the other listener, before the ticks drain: no hint arrives for a tick that will not run.
        self._opened.push_async_callback(web.stop)

    def _hint(self, channel: str, target: str, received: float) -> int:
        """A verified notification: the jobs watching ``target`` check it now; if none does, discovery may
        find it in a group (Discovery.notified). Returns how many jobs were asked."""
        hinted = self.jobs.hint(channel, target, received)
        if not hinted and self.discovery is not None:
            self.discovery.notified(channel, target, received)
        return hinted

    def _signing_keys(self) -> list[Webhook]:
        """The current webhook signing keys, read at each delivery so that a rotated secret is used at once."""
        return signing_keys(self.config.webhooks.secrets, self.reloader.secret)

    def _start_background(self) -> None:
        self._background = [
            asyncio.create_task(self._reload_loop(), name="reload"),
            asyncio.create_task(self._gauge_loop(), name="gauges"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._registry_loop(), name="registry"),
        ]
        if self.replication is not None:
            self._background.append(asyncio.create_task(self.replication.run(), name="replication"))
        self._opened.push_async_callback(_cancel, self._background)

    def _on_time(self) -> bool:
        """For the systemd watchdog: the event loop runs (we are here) and no scheduled tick is overdue."""
        if self.guard.problem is not None:
            # Idle on purpose: a watchdog restart would open an empty store and fire every trigger again.
            return True
        return self.jobs.on_time()

    def _replication(self, url: str) -> Replication:
        """Several replicas may share a PostgreSQL store: fence the store, and elect the leader (replicas.py)."""
        settings = self.config.state
        host, pid = socket.gethostname(), os.getpid()
        name = settings.replica_name or f"{host}:{pid}"
        fence = Fence(name)
        fence.install(self.store.engine)
        # The same timeouts: a renewal that times out is an error like a dropped connection (replicas.py).
        lease_engine = create_engine(url, timeouts=StoreTimeouts.of(settings))
        self._opened.callback(lease_engine.dispose)
        replication = Replication(
            LeaderLease(lease_engine, name, settings.lease),
            fence,
            name=name,
            host=host,
            pid=pid,
            lease_seconds=settings.lease,
            clock=self._clock,
            metrics=self.metrics,
            logger=self._log,
            checksum=lambda: jobs_checksum(self.config.jobs),
            on_lead=self._lead,
            on_standby=self._stand_down,
        )
        loop = asyncio.get_running_loop()

        def refused() -> None:  # on the store's thread
            self.metrics.fenced_writes.inc()
            loop.call_soon_threadsafe(replication.fenced)

        fence.on_refused = refused
        return replication

    def _lock(self, url: str) -> None:
        path = sqlite_path(url)
        if path is None:
            return
        ensure_parent(path)
        lock = SingleInstanceLock(path)
        lock.acquire()
        self._opened.callback(lock.release)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")

    # ----- background loops -----

    async def _reload_loop(self) -> None:
        try:
            while True:
                await self._reload_wanted.wait()
                self._reload_wanted.clear()
                reasons, self._reload_reasons = self._reload_reasons, set()
                waiters, self._rebuild_waiters = self._rebuild_waiters, []
                try:
                    await self._reload(reasons)
                finally:
                    _release(waiters)
        finally:
            # Shutting down: a PUT waiting for its rebuild answers now (its row is stored; a start applies it).
            _release(self._rebuild_waiters)

    async def _reload(self, reasons: set[str]) -> None:
        async with self._jobs_lock:
            await self._reload_locked(reasons)

    async def _reload_locked(self, reasons: set[str]) -> None:
        files = reasons - {REGISTRY_CHANGED}
        if files:
            await self.reloader.reload(
                forced="SIGHUP" in files,
                reason=", ".join(sorted(files)),
                guard=self.guard,
                apply=self._apply_file_jobs,
                watch=lambda new: self._watcher.watch(watched_dirs(self.reloader.config_path, new.include)),
            )
            if self.discovery is not None:  # only while leading (_lead, _stand_down, under the same lock)
                await self.discovery.apply(self.config.discoveries)
            await self._save_reload_outcome()
        if REGISTRY_CHANGED in reasons and self.guard.intact():
            try:
                await self.registered.read_if_changed()
                await self._apply(await self.registered.assemble(self.config), "registered jobs")
            except Exception as exc:  # the store may be briefly down: tried again shortly
                self._log.warning("cannot apply the registered jobs (%s); trying again in %.0f s", exc, APPLY_RETRY)
                self._retry_apply()

    async def _apply_file_jobs(self, _file_jobs: object, _change: JobDiff) -> None:
        # The reloader has moved to the new config; run its file jobs plus the registered ones.
        try:
            await self.registered.read_if_changed()
            await self._apply(await self.registered.assemble(self.config), None)
        except Exception as exc:
            # The new config is in force but not running yet; nothing would notice (the files do not change
            # again), so the registry path applies it once the store answers.
            self._log.warning("cannot apply the reloaded jobs yet (%s); trying again in %.0f s", exc, APPLY_RETRY)
            self._retry_apply()

    def _retry_apply(self) -> None:
        asyncio.get_running_loop().call_later(APPLY_RETRY, self.registered_jobs_changed)

    async def _apply(self, assembly: Assembly, log_as: str | None) -> None:
        change = diff(self.registered.assembly.definitions, assembly.definitions)
        # A standby runs no jobs: what it assembled is what it starts with once it leads (_lead).
        if (change.added or change.changed or change.removed) and self._jobs_running:
            await self.jobs.apply(assembly.definitions, change)
            if log_as is not None:
                self._log.info(
                    "%s applied: %d added, %d changed, %d removed, %d unchanged",
                    log_as,
                    len(change.added),
                    len(change.changed),
                    len(change.removed),
                    change.unchanged,
                )
        await self.registered.applied(assembly)

    async def _registry_loop(self) -> None:
        """Notice rows another process wrote (a replica's PUT, discovery, the CLI) within REGISTRY_POLL."""
        while self.guard.intact():
            await self._clock.sleep(REGISTRY_POLL)
            try:
                if await self.registered.needs_rebuild():
                    self.registered_jobs_changed()
            except Exception as exc:  # the state store may be briefly unreachable; the next poll tries again
                self._log.debug("cannot read the registered jobs' version: %s", exc)

    async def _save_reload_outcome(self) -> None:
        if self.guard.problem is not None:  # never write into a store that is not the one we opened
            return
        try:
            await self.reloader.save_status(self.worker, self.store)
        except Exception as exc:  # the store may be down; the outcome is still in /api/v1/status and metrics
            self._log.warning("cannot save the config reload outcome to the state store: %s", exc)

    async def _gauge_loop(self) -> None:
        while self.guard.intact():
            try:
                if self._jobs_running:  # a standby has nothing to flush (and its writes would be fenced)
                    await self.jobs.flush()
                self.metrics.observe(await self.worker.run(self.store.gauges))
            except Exception as exc:  # the state store may be briefly unreachable; metrics can wait
                self._log.warning("cannot refresh job metrics: %s", exc)
            await asyncio.sleep(GAUGE_REFRESH)

    async def _beat(self, *, stopped: bool = False) -> None:
        """Tell `teckochecker status` that this daemon runs (teckochecker.state.heartbeat)."""
        beat = Heartbeat(self._clock.now(), os.getpid(), socket.gethostname(), stopped)
        await self.worker.run(self.store.set_meta, HEARTBEAT_META, heartbeat_json(beat))

    async def _beat_stopped(self) -> None:
        if self.guard.problem is not None:  # never write into a store that is not the one we opened
            return
        try:
            await self._beat(stopped=True)
        except Exception as exc:  # shutting down anyway; `status` then sees the heartbeat go stale
            self._log.warning("cannot record the stop in the state store: %s", exc)

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


def _always() -> bool:
    return True


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
