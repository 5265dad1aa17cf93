"""The watching jobs' last stored state, kept in memory so that a check which saw nothing new costs no
database round trip. Only "when was it last checked" is written for such checks, batched.

The daemon is the only writer of its jobs, so the cache is exact; anything that changes a job from outside
a tick (reload, pause, resume) forgets it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

from teckochecker.plugin_api import Observation
from teckochecker.state.models import JobSnapshot, JobState, TargetSnapshot, first_observation

Touch = tuple[str, dt.datetime, dt.datetime | None]


class WatchCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, JobSnapshot] = {}
        self._touches: dict[str, Touch] = {}
        # Bumped when everything is forgotten (a reload), and per job when one is: a check's write that
        # waited keeps its result only if its own job was not forgotten meanwhile. One shared counter made
        # every concurrent write (a webhook burst) discard the others' results and read them back.
        self._all_epoch = 0
        self._job_epochs: dict[str, int] = {}

    def get(self, name: str) -> JobSnapshot | None:
        return self._snapshots.get(name)

    def keep(self, snap: JobSnapshot) -> None:
        if snap.state is JobState.WATCHING and not snap.paused:
            self._snapshots[snap.name] = snap

    def epoch(self, name: str) -> tuple[int, int]:
        """Changes whenever job ``name`` (or every job) is forgotten: ``recorded`` after a wait keeps nothing
        older than that."""
        return self._all_epoch, self._job_epochs.get(name, 0)

    def forget(self, name: str | None = None) -> None:
        if name is None:
            self._all_epoch += 1
            self._job_epochs.clear()  # the global bump already outdates every epoch taken before it
            self._snapshots.clear()
        else:
            self._job_epochs[name] = self._job_epochs.get(name, 0) + 1
            self._snapshots.pop(name, None)

    def is_news(self, snap: JobSnapshot, observations: Iterable[Observation]) -> bool:
        """Whether any observation differs from what is stored (or is the job's first)."""
        observations = tuple(observations)
        if snap.consecutive_failures:
            return True
        if snap.first_observed_at is None:
            # The first observation starts the deadline. A check that has observed nothing yet (a shared
            # listing that has not reached the targets, at a start) has nothing but its time to store.
            return bool(observations)
        stored = {t.target: t for t in snap.targets}
        for obs in observations:
            target = stored.get(obs.target)
            if target is None or (
                target.state is not obs.state
                or target.vendor_status != obs.vendor_status
                or target.message != obs.message
                or target.details != dict(obs.details)
            ):
                return True
        return False

    def recorded(
        self,
        snap: JobSnapshot,
        observations: Iterable[Observation],
        checked_at: dt.datetime,
        next_check_at: dt.datetime | None,
        epoch: tuple[int, int],
        deadline: float,
    ) -> None:
        """Keep what a check without errors just wrote for a job that still watches, as the store applied it
        (final target states stick), so the next tick does not read it back: with webhooks every finished
        batch is such a write, hundreds a second in a burst, all on the store's one thread. ``epoch``: taken
        before the write; if a reload, pause or resume forgot jobs meanwhile, the snapshot may be stale.
        ``deadline``: the job's, in seconds; the first observation starts it (models.first_observation)."""
        if epoch != self.epoch(snap.name):
            return
        observations = tuple(observations)
        if snap.first_observed_at is None and observations:
            snap = dataclasses.replace(snap, **first_observation(checked_at, deadline))
        seen = {o.target: o for o in observations}
        targets = tuple(_observed(t, seen.get(t.target), checked_at) for t in snap.targets)
        self._snapshots[snap.name] = dataclasses.replace(
            snap,
            targets=targets,
            last_checked_at=checked_at,
            next_check_at=next_check_at,
            consecutive_failures=0,
            last_error=None,
        )

    def touch(self, snap: JobSnapshot, checked_at: dt.datetime, next_check_at: dt.datetime | None) -> None:
        self._snapshots[snap.name] = dataclasses.replace(snap, last_checked_at=checked_at, next_check_at=next_check_at)
        self._touches[snap.name] = (snap.name, checked_at, next_check_at)

    def take_touches(self) -> list[Touch]:
        touches, self._touches = list(self._touches.values()), {}
        return touches


def _observed(target: TargetSnapshot, obs: Observation | None, at: dt.datetime) -> TargetSnapshot:
    if obs is None or target.state.is_terminal or _same(target, obs):
        return target
    return TargetSnapshot(obs.target, obs.state, obs.vendor_status, dict(obs.details), obs.message, at)


def _same(target: TargetSnapshot, obs: Observation) -> bool:
    return (
        target.state is obs.state
        and target.vendor_status == obs.vendor_status
        and target.message == obs.message
        and target.details == dict(obs.details)
    )
