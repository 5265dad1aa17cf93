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
from teckochecker.state.models import JobSnapshot, JobState

Touch = tuple[str, dt.datetime, dt.datetime | None]


class WatchCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, JobSnapshot] = {}
        self._touches: dict[str, Touch] = {}

    def get(self, name: str) -> JobSnapshot | None:
        return self._snapshots.get(name)

    def keep(self, snap: JobSnapshot) -> None:
        if snap.state is JobState.WATCHING and not snap.paused:
            self._snapshots[snap.name] = snap

    def forget(self, name: str | None = None) -> None:
        if name is None:
            self._snapshots.clear()
        else:
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

    def touch(self, snap: JobSnapshot, checked_at: dt.datetime, next_check_at: dt.datetime | None) -> None:
        self._snapshots[snap.name] = dataclasses.replace(snap, last_checked_at=checked_at, next_check_at=next_check_at)
        self._touches[snap.name] = (snap.name, checked_at, next_check_at)

    def take_touches(self) -> list[Touch]:
        touches, self._touches = list(self._touches.values()), {}
        return touches
