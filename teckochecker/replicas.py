"""Several daemons on one PostgreSQL: one leads and runs every job, the others stand by (design in
docs/architecture.md, "Replicas"; the lease and the fence are state/leadership.py).

Each replica, every third of the lease (at most 5 s): writes its heartbeat row (role, config checksum), then renews its
lease if it leads, or tries to take over an expired one if it stands by. Becoming leader starts the jobs
(``on_lead``); losing the lease (renewal refused, a fenced write, or no renewal for a whole lease on the local
monotonic clock while the database is unreachable) drops the fence *first*, so nothing more is written or
started, then stops the jobs (``on_standby``). A replica that cannot reach the database keeps retrying.

``may_act`` is the local half of the fence, asked just before an action is started: the last confirmed
renewal, by this process's monotonic clock, must leave at least a third of the lease. A process paused
between that check and its start call is the one case no fence can stop (Keboola checks no token); the new
leader never restarts such a run blindly: it is in doubt and is reconciled by search (triggering.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from teckochecker.clock import Clock
from teckochecker.config.validate import JobDefinition
from teckochecker.errors import Fenced
from teckochecker.metrics import Metrics
from teckochecker.state.heartbeat import HEARTBEAT_PERIOD
from teckochecker.state.leadership import Fence, LeaderLease, ReplicaInfo, Role


def jobs_checksum(jobs: Mapping[str, JobDefinition]) -> str:
    """What must agree between replicas: the job definitions loaded (names and fingerprints). Listen ports,
    replica names and log levels may differ per replica."""
    digest = hashlib.sha256()
    for name in sorted(jobs):
        digest.update(f"{name}\0{jobs[name].fingerprint}\n".encode())
    return digest.hexdigest()[:16]


class Replication:
    def __init__(
        self,
        lease: LeaderLease,
        fence: Fence,
        *,
        name: str,
        host: str,
        pid: int,
        lease_seconds: float,
        clock: Clock,
        metrics: Metrics,
        logger: logging.Logger,
        checksum: Callable[[], str],
        on_lead: Callable[[], Awaitable[None]],
        on_standby: Callable[[], Awaitable[None]],
    ) -> None:
        self._lease = lease
        self._fence = fence
        self.name = name
        self._host = host
        self._pid = pid
        self._lease_seconds = lease_seconds
        # Renew a third of the lease ahead at least, and beat as often as the daemon's heartbeat.
        self.period = min(lease_seconds / 3, HEARTBEAT_PERIOD)
        self._clock = clock
        self._metrics = metrics
        self._log = logger
        self._checksum = checksum
        self._on_lead = on_lead
        self._on_standby = on_standby
        self._started_at = clock.now()
        self._epoch: int | None = None
        self._confirmed_until: float | None = None  # monotonic
        self._wake = asyncio.Event()
        self._failing = False
        self._mismatch_said: frozenset[str] = frozenset()
        self._starting: asyncio.Task[None] | None = None
        self._start_failed = False
        self.replicas: list[ReplicaInfo] = []
        metrics.replica_leader.set(0)

    # ----- what others ask -----

    @property
    def role(self) -> str:
        return Role.LEADER if self._epoch is not None else Role.STANDBY

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def may_act(self) -> bool:
        """Local half of the fence: the lease surely still ours for a while (monotonic clock; see module doc)."""
        if self._epoch is None or self._confirmed_until is None:
            return False
        return self._clock.monotonic() < self._confirmed_until - self._lease_seconds / 3

    def fenced(self) -> None:
        """A write was refused by the fence (called from the store's thread through the loop): look now."""
        self._wake.set()

    # ----- the loop -----

    async def start(self) -> None:
        await asyncio.to_thread(self._lease.ensure_row)
        await self.step()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.period)
            self._wake.clear()
            await self.step()

    async def step(self) -> None:
        if self._start_failed:
            self._start_failed = False
            epoch = self._epoch
            await self._lose("the jobs could not be started")
            if epoch is not None:  # let another replica try at once rather than after the lease
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._lease.release, epoch)
            return  # another replica gets the first chance; this one tries again next period
        try:
            if self._epoch is not None:
                await self._renew()
            else:
                await self._try_lead()
            await self._beat()
            self._said_ok()
        except Fenced:
            await self._lose("a write was fenced")
        except Exception as exc:  # the database may be down or restarting: keep trying, say so once
            if not self._failing:
                self._log.warning("replica %s: cannot reach the state store for leadership: %s", self.name, exc)
            self._failing = True
            if self._epoch is not None and not self._within_lease():
                await self._lose("no renewal for a whole lease")

    async def stop(self) -> None:
        """On a clean stop: stop the jobs, then hand the lease over at once and record the replica stopped."""
        epoch = self._epoch
        if epoch is not None:
            await self._stop_starting()
            try:  # still leading: the ticks end and the last batched writes land under our epoch
                await self._on_standby()
            except Exception as exc:
                self._log.warning("replica %s: stopping the jobs: %s", self.name, exc)
            self._fence.drop()
            self._epoch = None
            self._metrics.replica_leader.set(0)
            try:
                await asyncio.to_thread(self._lease.release, epoch)
            except Exception as exc:  # a standby takes over after the lease instead
                self._log.warning("cannot release the leader lease: %s", exc)
        try:
            await self._beat(role=Role.STOPPED)
        except Exception as exc:
            self._log.warning("cannot record this replica as stopped: %s", exc)

    # ----- steps -----

    async def _try_lead(self) -> None:
        sent = self._clock.monotonic()
        taken = await asyncio.to_thread(self._lease.try_acquire)
        if taken is None:
            return
        epoch, previous = taken
        self._epoch = epoch
        self._confirmed_until = sent + self._lease_seconds
        self._fence.lead(epoch)
        self._metrics.replica_leader.set(1)
        self._metrics.replica_epoch.set(epoch)
        self._metrics.leadership_changes.labels("acquired").inc()
        if previous is not None and previous != self.name:
            self._metrics.leadership_changes.labels("took_over").inc()
        whence = f"took over from {previous}" if previous else "first leader"
        self._log.info("replica %s leads (epoch %d, %s); starting the jobs", self.name, epoch, whence)
        # In its own task: syncing 10,000 jobs takes longer than a renewal period, and renewals must go on.
        self._starting = asyncio.create_task(self._start_jobs(), name="replica-start-jobs")

    async def _start_jobs(self) -> None:
        try:
            await self._on_lead()
        except Exception as exc:  # e.g. the store went away while syncing the jobs: stand by, try again
            self._log.warning("replica %s could not start the jobs as leader: %s", self.name, exc)
            self._start_failed = True
            self._wake.set()

    async def _stop_starting(self) -> None:
        task, self._starting = self._starting, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_started(self) -> None:
        """Until the jobs of a leadership just taken are started (tests; the daemon's startup log)."""
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)

    async def _renew(self) -> None:
        assert self._epoch is not None
        sent = self._clock.monotonic()
        if await asyncio.to_thread(self._lease.renew, self._epoch):
            if self._fence.epoch is None:  # a write was fenced meanwhile: the epoch is gone after all
                await self._lose("a write was fenced")
                return
            self._confirmed_until = sent + self._lease_seconds
            return
        await self._lose("its lease was taken over")

    def _within_lease(self) -> bool:
        return self._confirmed_until is not None and self._clock.monotonic() < self._confirmed_until

    async def _lose(self, why: str) -> None:
        if self._epoch is None:
            return
        self._log.warning(
            "replica %s lost leadership (epoch %d): %s; stopped acting, standing by", self.name, self._epoch, why
        )
        self._metrics.leadership_changes.labels("lost").inc()
        await self._step_down()

    async def _step_down(self) -> None:
        # The fence first: from here on nothing this process still has under way can write.
        self._fence.drop()
        self._epoch = None
        self._confirmed_until = None
        self._metrics.replica_leader.set(0)
        await self._stop_starting()
        try:
            await self._on_standby()
        except Exception as exc:  # fenced writes while the ticks wind down are expected
            self._log.info("replica %s: jobs stopped (%s)", self.name, exc)

    async def _beat(self, *, role: str | None = None) -> None:
        await asyncio.to_thread(
            self._lease.beat,
            host=self._host,
            pid=self._pid,
            role=role or self.role,
            started_at=self._started_at,
            checksum=self._checksum(),
            epoch=self._epoch,
        )
        if role is None:
            self.replicas = await asyncio.to_thread(self._lease.replicas)
            self._compare()

    def _said_ok(self) -> None:
        if self._failing:
            self._log.info("replica %s reaches the state store again", self.name)
        self._failing = False

    def live(self) -> list[ReplicaInfo]:
        return [r for r in self.replicas if r.alive]

    def _compare(self) -> None:
        live = self.live()
        counts = {role: 0 for role in (Role.LEADER, Role.STANDBY)}
        for r in live:
            counts[r.role] = counts.get(r.role, 0) + 1
        for role, n in counts.items():
            self._metrics.replicas.labels(role).set(n)
        mine = self._checksum()
        others = sorted(f"{r.name} ({r.config_checksum})" for r in live if r.config_checksum != mine)
        self._metrics.replica_config_mismatch.set(len(others))
        if frozenset(others) != self._mismatch_said and others:
            self._log.warning(
                "replicas disagree on the configuration: this replica %s has jobs checksum %s; %s differ",
                self.name,
                mine,
                ", ".join(others),
            )
        self._mismatch_said = frozenset(others)
