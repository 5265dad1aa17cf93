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
from teckochecker.config.validate import Config
from teckochecker.config.watching import Reloader, watched_dirs
from teckochecker.control import Control
from teckochecker.crashpoints import CrashPoints
from teckochecker.http import HttpClientPool
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import PluginContext, SharedRegistry
from teckochecker.plugins import PluginRegistry
from teckochecker.reload import ConfigReloader, check_secrets
from teckochecker.running_jobs import RunningJobs
from teckochecker.sdnotify import Notifier, run_watchdog
from teckochecker.secrets.resolving import Redactor
from teckochecker.services import TickServices
from teckochecker.state.guard import StoreGuard
from teckochecker.state.heartbeat import HEARTBEAT_META, HEARTBEAT_PERIOD, Heartbeat, heartbeat_json
from teckochecker.state.location import (
    SingleInstanceLock,
    StoreFileIdentity,
    ensure_parent,
    resolve_state_url,
    sqlite_path,
)
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker
from teckochecker.web.routes import create_app
from teckochecker.web.server import WebServer
from teckochecker.webhooks.receiver import OpenAIWebhooks, create_webhook_app
from teckochecker.webhooks.signature import SignatureVerifier, signing_keys

# SIGTERM must end the process within 5 s; ticks get this long to finish their current step.
SHUTDOWN_GRACE = 3.0
GAUGE_REFRESH = 15.0


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
        self.metrics = metrics or Metrics()
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
        )
        self._stop = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._reload_reasons: set[str] = set()
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

    # ----- lifecycle -----

    async def run(self) -> None:
        try:
            await self.startup()
            await self._stop.wait()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        check_secrets(self.reloader.secrets, self._log)
        if self.config.webhooks.enabled:
            self._signing_keys()  # refuse to start on a webhook secret that is not a whole whsec_ value
        url = resolve_state_url(self.config.state.url, self._environ, self._cwd)
        self._lock(url)
        self.store = StateStore.open(url, redact=self._redactor.redact)
        self._opened.callback(self.store.close)
        self.worker = StoreWorker(hidden=[make_url(url).password or ""])
        self._opened.push_async_callback(asyncio.to_thread, self.worker.close)
        db_path = sqlite_path(url)
        identity = StoreFileIdentity.of(db_path) if db_path is not None else None
        self.guard = StoreGuard(identity, self._log, on_lost=lambda: self.jobs.halt())
        await self._beat()
        self._opened.push_async_callback(self._beat_stopped)
        http = HttpClientPool(self.config.defaults.concurrency, self.metrics)
        self._opened.push_async_callback(http.aclose)
        await self._start_jobs(http)
        await self._start_web()
        await self._start_webhooks()
        self.reloader.started()
        await self.reloader.save_status(self.worker, self.store)
        # Runs after the reload loop is cancelled: a reload applied just before SIGTERM still reaches `status`.
        self._opened.push_async_callback(self._save_reload_outcome)
        self._watcher = Reloader(self.request_reload, self._log)
        self._watcher.start(watched_dirs(self.reloader.config_path, self.config.include))
        self._opened.push_async_callback(self._watcher.stop)
        self._start_background()
        self._install_signals()
        self._log.info(
            "teckochecker started: %d job(s), %d scheduled, state %s",
            self.jobs.count,
            self.jobs.scheduled_count,
            self.store.url,
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
        )
        crashpoints = CrashPoints(self._environ)
        services = TickServices(self.store, self.worker, self._clock, crashpoints, self._log, self.metrics)
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
        await self.jobs.start(self.config.jobs, self.config.defaults.startup_spread)

    async def _start_web(self) -> None:
        control = Control(
            self.store,
            self.worker,
            self.jobs,
            self.guard,
            reload_status=lambda: self.reloader.status,
            api_token=self._api_token,
        )
        app = create_app(control, self.metrics, logging.getLogger("teckochecker.http"), self._redactor)
        web = WebServer(app, self.config.http.listen, self.config.http.port, self._log)
        await web.start()
        # Stopped before the ticks drain, so no request waits on a daemon that is going away.
        self._opened.push_async_callback(web.stop)

    async def _start_webhooks(self) -> None:
        settings = self.config.webhooks
        if not settings.enabled:
            return
        assert settings.port is not None
        verifier = SignatureVerifier(self._signing_keys, self._clock)
        receiver = OpenAIWebhooks(
            verifier, self.jobs.hint, self.metrics, self._clock, logging.getLogger("teckochecker.webhooks")
        )
        web = WebServer(
            create_webhook_app(receiver),
            settings.listen,
            settings.port,
            self._log,
            name="webhook receiver",
            exposure="it serves only POST /webhooks/openai, verified by signature",
        )
        await web.start()
        # Stopped with the other listener, before the ticks drain: no hint arrives for a tick that will not run.
        self._opened.push_async_callback(web.stop)

    def _signing_keys(self) -> list[Webhook]:
        """The current webhook signing keys, read at each delivery so that a rotated secret is used at once."""
        return signing_keys(self.config.webhooks.secrets, self.reloader.secret)

    def _api_token(self) -> str | None:
        name = self.config.http.api_token
        return self.reloader.secret(name) if name else None

    def _start_background(self) -> None:
        self._background = [
            asyncio.create_task(self._reload_loop(), name="reload"),
            asyncio.create_task(self._gauge_loop(), name="gauges"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        self._opened.push_async_callback(_cancel, self._background)

    def _on_time(self) -> bool:
        """For the systemd watchdog: the event loop runs (we are here) and no scheduled tick is overdue."""
        if self.guard.problem is not None:
            # Idle on purpose: a watchdog restart would open an empty store and fire every trigger again.
            return True
        return self.jobs.on_time()

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
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            reasons, self._reload_reasons = self._reload_reasons, set()
            await self.reloader.reload(
                forced="SIGHUP" in reasons,
                reason=", ".join(sorted(reasons)),
                guard=self.guard,
                apply=self.jobs.apply,
                watch=lambda new: self._watcher.watch(watched_dirs(self.reloader.config_path, new.include)),
            )
            await self._save_reload_outcome()

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


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
