"""Reloading the config: read and validate the whole new config off the event loop, compare it with the
running one as a pure difference of frozen job definitions, and hand that difference to be applied.

An invalid config, or anything at all going wrong while reloading, leaves the running config untouched and
is reported where operators look: ``teckochecker_config_last_reload_successful``, ``/api/v1/status`` and
(through the state store) ``teckochecker status``. Settings that only a restart can change are kept at
their running values and named in the outcome; the rest of the change is applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from teckochecker.clock import Clock
from teckochecker.config.validate import Config, JobDefinition, load_config
from teckochecker.config.watching import config_checksum
from teckochecker.control import RELOAD_META, ReloadStatus, reload_status_json
from teckochecker.errors import ConfigError, SecretError, TeckoCheckerError
from teckochecker.metrics import Metrics
from teckochecker.offloop import run_off_loop
from teckochecker.plugins import PluginRegistry
from teckochecker.sdnotify import Notifier
from teckochecker.secret_bindings import SecretBindings, secret_bindings
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.state.guard import StoreGuard
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker
from teckochecker.webhooks.signature import signing_keys

if TYPE_CHECKING:
    from teckochecker.outbound_guard import OutboundGuard

# Reading and validating 10,000 jobs takes one to three minutes on a busy 2-core machine; past this, a read hangs.
RELOAD_TIMEOUT = 600.0
LOGGED_NAMES = 20

RESTART_ONLY: dict[str, Callable[[Config], object]] = {
    "state.url": lambda c: c.state.url,
    "state.lease": lambda c: c.state.lease,
    "state.replica_name": lambda c: c.state.replica_name,
    "http.listen": lambda c: c.http.listen,
    "http.port": lambda c: c.http.port,
    "defaults.concurrency": lambda c: c.defaults.concurrency,
    "webhooks.listen": lambda c: c.webhooks.listen,
    "webhooks.port": lambda c: c.webhooks.port,
    "http.max_connections": lambda c: c.http.max_connections,
    "http.request_deadline": lambda c: c.http.request_deadline,
    "webhooks.max_connections": lambda c: c.webhooks.max_connections,
    "webhooks.request_deadline": lambda c: c.webhooks.request_deadline,
}
_LISTENER = ("listen", "port", "max_connections", "request_deadline")


@dataclass(frozen=True)
class JobDiff:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int


def diff(old: Mapping[str, JobDefinition], new: Mapping[str, JobDefinition]) -> JobDiff:
    """What a reload changes, by name and fingerprint (which covers everything about a job)."""
    added = tuple(n for n in new if n not in old)
    removed = tuple(n for n in old if n not in new)
    changed = tuple(n for n in new if n in old and new[n].fingerprint != old[n].fingerprint)
    return JobDiff(added, changed, removed, len(new) - len(added) - len(changed))


def keep_restart_only_settings(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The new config, with settings that need a restart kept at their running values; and their names."""
    changed = [name for name, get in RESTART_ONLY.items() if get(old) != get(new)]
    if not changed:
        return new, []
    kept = dataclasses.replace(
        new,
        state=old.state,
        http=new.http.model_copy(update={k: getattr(old.http, k) for k in _LISTENER}),
        defaults=new.defaults.model_copy(update={"concurrency": old.defaults.concurrency}),
        webhooks=new.webhooks.model_copy(update={k: getattr(old.webhooks, k) for k in _LISTENER}),
    )
    return kept, changed


def check_secrets(resolver: SecretResolver, logger: logging.Logger) -> None:
    """Fail at start (or refuse a reload), not at the first check hours later, when a secret cannot be read."""
    problems = [reason for reason in resolver.check_all().values() if reason]
    if problems:
        raise SecretError("; ".join(problems))
    for warning in resolver.permission_warnings():
        logger.warning("%s", warning)


ApplyJobs = Callable[[Mapping[str, JobDefinition], JobDiff], Awaitable[None]]
WatchPaths = Callable[[Config], None]


class ConfigReloader:
    """Owns the running config and its secrets, and moves both to a new config when a reload succeeds; with
    them the secrets' bindings, which the outbound ``guard`` enforces."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        *,
        registry: PluginRegistry,
        environ: Mapping[str, str],
        redactor: Redactor,
        clock: Clock,
        metrics: Metrics,
        notifier: Notifier,
        logger: logging.Logger,
        guard: OutboundGuard | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self._registry = registry
        self._environ = environ
        self._redactor = redactor
        self._clock = clock
        self._metrics = metrics
        self._notifier = notifier
        self._log = logger
        self._guard = guard
        if guard is not None:
            guard.bind(secret_bindings(config, registry))
        self.secrets = self._resolver(config)
        self._attempted_checksum = config_checksum(config_path, config.include)
        self.status = ReloadStatus(successful=True, at=clock.now())
        self._unsaved: ReloadStatus | None = None

    def _resolver(self, config: Config) -> SecretResolver:
        learn = self._guard.learn if self._guard is not None else None
        return SecretResolver(config.secrets, self._environ, self._redactor, on_resolved=learn)

    def secret(self, name: str) -> str:
        # Plugins hold this bound method; a reload swaps the resolver behind it.
        return self.secrets(name)

    def started(self) -> None:
        """The first load counts as a successful reload (for the metrics and `status`)."""
        self._mark(ReloadStatus(successful=True, at=self._clock.now()))

    async def reload(
        self, *, forced: bool, reason: str, guard: StoreGuard, apply: ApplyJobs, watch: WatchPaths
    ) -> ReloadStatus | None:
        """Validate the whole config; apply the difference, or keep the running config untouched.

        The single place every reload goes through: whatever goes wrong in it (a RecursionError in the
        parser, an OSError, a bug) is reported as a failed reload, never lost and never fatal."""
        try:
            reading = run_off_loop("config-checksum", config_checksum, self.config_path, self.config.include)
            checksum = await asyncio.wait_for(reading, RELOAD_TIMEOUT)
            if (checksum == self._attempted_checksum and not forced) or not guard.intact():
                return None
            self._attempted_checksum = checksum
            self._log.info("reloading config (%s)", reason)
            self._notifier.reloading()
            try:
                return await self._load_and_apply(apply, watch)
            finally:
                self._notifier.ready()
        except Exception as exc:
            self._log.debug("config reload failed unexpectedly", exc_info=True)  # the traceback, for a bug report
            problem = f"unexpected {type(exc).__name__} while reloading: {str(exc)[:500] or 'no message'}"
            return self._failed([problem])

    async def save_status(self, worker: StoreWorker, store: StateStore) -> None:
        """Keep the last (re)load's outcome in the state store, where `teckochecker status` reads it."""
        status, self._unsaved = self._unsaved, None
        if status is not None:
            await worker.run(store.set_meta, RELOAD_META, reload_status_json(status))

    async def _load_and_apply(self, apply: ApplyJobs, watch: WatchPaths) -> ReloadStatus:
        # Reading, parsing and validating are pure and can take seconds for a big config: off the loop,
        # so /healthz and the ticks keep running. Only the apply step below touches live state.
        try:
            loading = run_off_loop("config-load", self._load_new_config)
            new, checksum, bindings = await asyncio.wait_for(loading, RELOAD_TIMEOUT)
            # On the loop: checking registers secret values with the Redactor, which log calls read.
            resolver = self._resolver(new)
            check_secrets(resolver, self._log)
            if new.webhooks.enabled:  # a webhook secret that is no whsec_ value would refuse every delivery
                signing_keys(new.webhooks.secrets, resolver)
        except TimeoutError:
            # The thread may hang on for good (a read that never ends); the daemon carries on without it.
            return self._failed([f"reading and validating the config took over {RELOAD_TIMEOUT:.0f} s"])
        except ConfigError as exc:
            return self._failed([str(d) for d in exc.diagnostics])
        except TeckoCheckerError as exc:
            return self._failed([str(exc)])
        self._attempted_checksum = checksum
        new, restart_required = keep_restart_only_settings(self.config, new)
        for setting in restart_required:
            self._log.warning("config: %s changed; it takes effect after a restart (not applied)", setting)
        change = diff(self.config.jobs, new.jobs)
        self.secrets = resolver
        self.config = new
        if self._guard is not None:
            self._guard.bind(bindings)
        await apply(new.jobs, change)
        self._log_applied(change)
        watch(new)
        logging.getLogger().setLevel(new.log_level)
        status = ReloadStatus(successful=True, at=self._clock.now(), restart_required=tuple(restart_required))
        self._mark(status)
        return status

    def _load_new_config(self) -> tuple[Config, str, SecretBindings]:
        """Runs on a thread: the new config, the checksum of the files it was read from, and its bindings."""
        new = load_config(self.config_path, self._registry)
        return new, config_checksum(self.config_path, new.include), secret_bindings(new, self._registry)

    def _failed(self, errors: list[str]) -> ReloadStatus:
        for line in errors:
            self._log.error("config reload: %s", line)
        self._log.error("config reload failed (%d problem(s)); the running config stays", len(errors))
        status = ReloadStatus(successful=False, at=self._clock.now(), errors=tuple(errors))
        self._mark(status)
        return status

    def _mark(self, status: ReloadStatus) -> None:
        self.status = status
        self._unsaved = status
        self._metrics.config_last_reload_successful.set(1 if status.successful else 0)
        if status.successful:
            self._metrics.config_last_reload_success_timestamp.set(time.time())
        result = "success" if status.successful else "failure"
        self._metrics.config_reloads.labels("restart_required" if status.restart_required else result).inc()

    def _log_applied(self, change: JobDiff) -> None:
        self._log.info(
            "config reloaded: %d added %s, %d changed %s, %d removed %s, %d unchanged",
            len(change.added),
            _some(change.added),
            len(change.changed),
            _some(change.changed),
            len(change.removed),
            _some(change.removed),
            change.unchanged,
        )


def _some(names: tuple[str, ...]) -> str:
    """A log-sized list of job names: a reload adding 10,000 jobs should not write a 200 kB line."""
    if len(names) <= LOGGED_NAMES:
        return str(list(names))
    return f"{list(names[:LOGGED_NAMES])} and {len(names) - LOGGED_NAMES} more"
