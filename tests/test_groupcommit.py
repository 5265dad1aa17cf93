"""Group commit of checks: concurrent record_check calls share a transaction, each job still fires once,
and one job's bad record does not fail the others'."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from teckochecker.config.models import Condition, TriggerRule
from teckochecker.groupcommit import CheckRecorder
from teckochecker.plugin_api import CheckReport, Observation, TargetState
from teckochecker.state.models import JobState
from teckochecker.state.store import CheckToRecord, JobPlan, PlannedAction, StateStore
from teckochecker.state.worker import StoreWorker

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
ACTION = (PlannedAction(0, "record", "ledger", Condition.ALWAYS),)


class CountingStore(StateStore):
    transactions: int = 0

    def record_checks(self, checks: Sequence[CheckToRecord]) -> list[JobState]:
        self.transactions += 1
        return super().record_checks(checks)


def check(
    name: str, target: str, state: TargetState, now: dt.datetime = T0, next_check_at: dt.datetime = T0
) -> CheckToRecord:
    report = CheckReport((Observation(target, state, state.value),))
    return CheckToRecord(name, report, now, next_check_at, 3600.0, TriggerRule.ALL_TERMINAL, ACTION)


def test_concurrent_checks_share_transactions_and_each_job_fires_once(tmp_path: Path) -> None:
    store = CountingStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    worker = StoreWorker()
    names = [f"j{i}" for i in range(50)]
    store.sync_jobs([JobPlan(n, "fp", ["a"]) for n in names], T0)

    async def burst() -> list[JobState]:
        recorder = CheckRecorder(store, worker)
        return await asyncio.gather(*(recorder.record(check(n, "a", TargetState.SUCCEEDED)) for n in names))

    try:
        states = asyncio.run(burst())
        assert states == [JobState.FIRING] * 50
        assert store.transactions <= 2  # not one per check: those arriving together are written together
        assert all(len((snap := store.job(n)).runs) == 1 and snap.state is JobState.FIRING for n in names)  # type: ignore[union-attr]
    finally:
        worker.close()
        store.close()


def test_one_bad_record_does_not_fail_the_others(tmp_path: Path) -> None:
    store = CountingStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    worker = StoreWorker()
    store.sync_jobs([JobPlan("good", "fp", ["a"]), JobPlan("other", "fp", ["a", "b"])], T0)

    async def burst() -> list[JobState | BaseException]:
        recorder = CheckRecorder(store, worker)
        calls = [
            recorder.record(check("other", "a", TargetState.SUCCEEDED)),
            recorder.record(check("no-such-job", "a", TargetState.SUCCEEDED)),
            recorder.record(check("good", "a", TargetState.SUCCEEDED)),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        other, missing, good = asyncio.run(burst())
        assert other is JobState.WATCHING and good is JobState.FIRING
        assert isinstance(missing, Exception)
        snap = store.job("other")
        assert snap is not None and {t.target: t.state for t in snap.targets}["a"] is TargetState.SUCCEEDED
    finally:
        worker.close()
        store.close()


def test_the_watch_cache_keeps_what_was_written_unless_its_job_was_forgotten_meanwhile(tmp_path: Path) -> None:
    from teckochecker.watchcache import WatchCache

    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    store.sync_jobs([JobPlan("j", "fp", ["a", "b"])], T0)
    store.record_checks([check("j", "a", TargetState.RUNNING)])
    snap = store.job("j")
    store.close()
    assert snap is not None
    cache = WatchCache()
    done = (Observation("a", TargetState.SUCCEEDED, "completed"), Observation("b", TargetState.RUNNING, "in_progress"))
    epoch = cache.epoch("j")
    cache.forget("other")  # another job's write (a concurrent check of a webhook burst) outdates nothing here
    cache.recorded(snap, done, T0, T0, epoch, 3600.0)
    kept = cache.get("j")
    assert kept is not None and [t.state for t in kept.targets] == [TargetState.SUCCEEDED, TargetState.RUNNING]
    assert kept.pending_targets == ["b"]
    # A final state sticks, as in the store.
    cache.recorded(kept, (Observation("a", TargetState.FAILED, "failed"),), T0, T0, cache.epoch("j"), 3600.0)
    assert cache.get("j").targets[0].state is TargetState.SUCCEEDED  # type: ignore[union-attr]
    # A pause of this job, or a reload, forgot it while the write was under way: nothing stale is kept.
    epoch = cache.epoch("j")
    cache.forget("j")
    cache.recorded(snap, done, T0, T0, epoch, 3600.0)
    assert cache.get("j") is None
    epoch = cache.epoch("j")
    cache.forget()
    cache.recorded(snap, done, T0, T0, epoch, 3600.0)
    assert cache.get("j") is None


def test_the_watch_cache_after_a_jobs_first_observation_holds_what_the_store_holds(tmp_path: Path) -> None:
    """The first observation starts the job's deadline; the cache sets it as the store does, so the job's
    next tick (a webhook hint, in a burst) needs no read."""
    from teckochecker.watchcache import WatchCache

    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    store.sync_jobs([JobPlan("j", "fp", ["a", "b"])], T0)
    before = store.job("j")
    assert before is not None and before.first_observed_at is None
    seen = (Observation("a", TargetState.RUNNING, "in_progress"), Observation("b", TargetState.SUCCEEDED, "completed"))
    later = T0 + dt.timedelta(minutes=15)
    store.record_check(
        "j",
        CheckReport(seen),
        now=T0,
        next_check_at=later,
        deadline=7200.0,
        rule=TriggerRule.ALL_TERMINAL,
        actions=ACTION,
    )
    stored = store.job("j")
    store.close()
    cache = WatchCache()
    cache.recorded(before, seen, T0, later, cache.epoch("j"), 7200.0)
    cached = cache.get("j")
    assert stored is not None and cached is not None
    assert (cached.first_observed_at, cached.deadline_at) == (stored.first_observed_at, stored.deadline_at)
    assert cached.deadline_at == T0 + dt.timedelta(hours=2)
    assert [(t.target, t.state, t.vendor_status) for t in cached.targets] == [
        (t.target, t.state, t.vendor_status) for t in stored.targets
    ]
    assert cached.pending_targets == stored.pending_targets == ["a"]


def test_a_quiet_check_time_written_late_never_undoes_a_newer_recorded_check(tmp_path: Path) -> None:
    """Touches wait in the store's normal lane and recorded checks go ahead of them (StoreWorker.run_urgent):
    a touch from before a recorded check must not put its older times back."""
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    store.sync_jobs([JobPlan("j", "fp", ["a", "b"])], T0)
    later, much_later = T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(minutes=16)
    store.record_checks([check("j", "a", TargetState.RUNNING, later, much_later)])
    store.touch_jobs([("j", T0, T0 + dt.timedelta(minutes=15))])  # the quiet check before it, written after
    snap = store.job("j")
    assert snap is not None and (snap.last_checked_at, snap.next_check_at) == (later, much_later)
    store.touch_jobs([("j", much_later, much_later + dt.timedelta(minutes=15))])  # a newer one is written
    snap = store.job("j")
    store.close()
    assert snap is not None and snap.last_checked_at == much_later
