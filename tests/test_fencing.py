"""Leadership and fencing on the real PostgreSQL: a replica that no longer holds the epoch cannot write or start.

The lease's expiry is moved back by hand (UPDATE tc_leader) instead of waiting for the database clock, and
each replica's monotonic clock is a FakeClock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from support.clock import FakeClock

from teckochecker.config.models import Condition, TriggerRule
from teckochecker.errors import Fenced, StateStoreUnavailable
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import CheckReport, Observation, TargetState
from teckochecker.replicas import Replication
from teckochecker.state.leadership import Fence, LeaderLease, Role
from teckochecker.state.models import JobOrigin, JobState, RunState
from teckochecker.state.schema import StoreTimeouts, create_engine
from teckochecker.state.store import JobPlan, PlannedAction, StateStore

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
ACTIONS = [PlannedAction(0, "record", "record:x", Condition.ALWAYS)]
LEASE = 30.0


class Replica:
    """One daemon's view: its own store (engine) with its fence installed, and its own lease engine."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.store = StateStore.open(url)
        self.fence = Fence(name)
        self.fence.install(self.store.engine)
        self.lease_engine = create_engine(url)
        self.lease = LeaderLease(self.lease_engine, name, LEASE)
        self.lease.ensure_row()

    def lead(self) -> int:
        taken = self.lease.try_acquire()
        assert taken is not None, f"{self.name} could not take the lease"
        self.fence.lead(taken[0])
        return taken[0]

    def close(self) -> None:
        self.store.close()
        self.lease_engine.dispose()


@pytest.fixture
def pair(postgres_url: str) -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(postgres_url, "a"), Replica(postgres_url, "b")
    yield a, b
    a.close()
    b.close()


def expire_lease(replica: Replica) -> None:
    """As if the lease period had passed on the database's clock without a renewal."""
    with replica.lease_engine.begin() as conn:
        conn.execute(sa.text("UPDATE tc_leader SET expires_at = clock_timestamp() - interval '1 second'"))


def fire(store: StateStore) -> int:
    """Register job j and let a check fire it; returns the id of its pending run."""
    store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
    report = CheckReport((Observation("a", TargetState.SUCCEEDED, "completed", {}),))
    store.record_check(
        "j", report, now=T0, next_check_at=None, deadline=3600, rule=TriggerRule.ALL_TERMINAL, actions=ACTIONS
    )
    job = store.job("j")
    assert job is not None and job.state is JobState.FIRING
    return job.runs[0].id


def test_only_one_replica_takes_the_lease_and_the_epoch_grows_with_each_takeover(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    first = a.lead()
    assert b.lease.try_acquire() is None  # a's lease has not expired
    assert a.lease.renew(first)
    expire_lease(a)
    taken = b.lease.try_acquire()
    assert taken == (first + 1, "a")
    assert not a.lease.renew(first)  # a's epoch is gone for good: renewing does not bring it back
    assert a.lease.try_acquire() is None


def test_a_standby_cannot_write_jobs_but_records_its_own_facts(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    with pytest.raises(Fenced, match="standby"):
        a.store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
    assert a.store.jobs() == []  # rolled back
    a.store.set_meta("last_reload", "{}")  # daemon-wide facts are not fenced
    assert a.store.get_meta("last_reload") == "{}"


def test_a_stale_leader_can_neither_write_nor_commit_an_intent_to_start(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    a.lead()
    run_id = fire(a.store)  # writes under a's epoch go through

    expire_lease(a)  # a pauses past its lease (SIGSTOP) ...
    b.lead()  # ... and b takes over

    with pytest.raises(Fenced, match="no longer this replica's"):
        a.store.begin_run(run_id, now=T0)
    assert a.fence.epoch is None  # a noticed: from now on it refuses without asking the database
    with pytest.raises(Fenced):
        a.store.set_paused("j", True, now=T0)
    job = b.store.job("j")
    assert job is not None and job.runs[0].state is RunState.PENDING and not job.paused

    assert b.store.begin_run(run_id, now=T0)  # the new leader starts it
    job = b.store.job("j")
    assert job is not None and job.runs[0].state is RunState.SENDING


def test_any_replica_accepts_a_put_but_only_the_leader_writes_a_discovered_group(
    pair: tuple[Replica, Replica],
) -> None:
    a, b = pair
    a.lead()
    body = {"name": "run-7", "template": "classify", "source": {"targets": ["batch_1", "batch_2"]}}
    grown = {**body, "source": {"targets": ["batch_1", "batch_2", "batch_3"]}}
    put = a.store.put_registered_job
    assert put("run-7", JobOrigin.DISCOVERED, body, {"state": "waiting"}, now=T0)

    expire_lease(a)  # a pauses mid-sweep past its lease (SIGSTOP) ...
    b.lead()  # ... b takes over and grows the group
    assert b.store.put_registered_job("run-7", JobOrigin.DISCOVERED, grown, {"state": "complete"}, now=T0)
    with pytest.raises(Fenced, match="no longer this replica's"):  # a wakes up with its stale group
        put("run-7", JobOrigin.DISCOVERED, body, {"state": "waiting"}, now=T0)
    (row,) = b.store.registered_jobs()
    assert row.body == grown and row.details == {"state": "complete"}

    # A pipeline's PUT is declarative input: any replica, leading or not, stores it.
    assert a.store.put_registered_job("nightly", JobOrigin.API, {"name": "nightly", "template": "t"}, now=T0)
    assert {r.name for r in b.store.registered_jobs()} == {"run-7", "nightly"}


def test_a_late_answer_of_a_stale_leader_is_not_recorded(pair: tuple[Replica, Replica]) -> None:
    """The old leader committed its intent, then paused while its start was under way; its answer arrives
    after b took over and must not move the run: b reconciles it by search instead."""
    a, b = pair
    a.lead()
    run_id = fire(a.store)
    assert a.store.begin_run(run_id, now=T0)
    expire_lease(a)
    b.lead()
    with pytest.raises(Fenced):
        a.store.run_in_doubt(run_id, "late", now=T0, next_try_at=T0)
    job = b.store.job("j")
    assert job is not None and job.runs[0].state is RunState.SENDING


def test_an_expired_lease_fences_even_before_anyone_takes_over(pair: tuple[Replica, Replica]) -> None:
    a, _ = pair
    epoch = a.lead()
    expire_lease(a)
    with pytest.raises(Fenced):
        a.store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
    # Nobody took over (the epoch is unchanged), so a renewal restores the lease, and with it writing.
    assert a.lease.renew(epoch)
    a.fence.lead(epoch)
    a.store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
    assert [j.name for j in a.store.jobs()] == ["j"]


def test_a_takeover_waits_for_a_commit_under_way_and_the_commit_lands_first(postgres_url: str) -> None:
    """The lease passes between a's fence check and a's COMMIT: b's takeover waits for that commit (the share
    lock on the epoch row), so no write of an old epoch lands after a new epoch began. (The transaction is
    written by hand on an unfenced engine, to hold it open between the check and the commit.)"""
    a, b = Replica(postgres_url, "a"), Replica(postgres_url, "b")
    a.lease = LeaderLease(a.lease_engine, "a", 1.0)
    a.lead()
    with a.lease_engine.connect() as conn:
        tx = conn.begin()
        conn.execute(sa.text("INSERT INTO tc_meta (key, value) VALUES ('by_a', 'x')"))
        held = conn.exec_driver_sql(
            "SELECT 1 FROM tc_leader WHERE id = 1 AND expires_at > clock_timestamp() FOR SHARE"
        ).first()
        assert held is not None  # the fence check passed
        while not conn.exec_driver_sql("SELECT expires_at < clock_timestamp() FROM tc_leader").scalar():
            pass  # the database's clock moves on; the lease is 1 s
        with ThreadPoolExecutor(1) as pool:
            takeover = pool.submit(b.lease.try_acquire)
            while not _waits_on_a_lock(b):
                assert not takeover.done(), takeover.result()
            tx.commit()
            assert takeover.result(timeout=10) == (2, "a")
    assert b.store.get_meta("by_a") == "x"
    a.close()
    b.close()


def _waits_on_a_lock(replica: Replica) -> bool:
    with replica.store.engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar()
        )


def test_replication_loop_leads_stands_by_and_takes_over_after_a_clean_stop(postgres_url: str) -> None:
    async def scenario() -> None:
        events: list[str] = []
        loops = []
        for name in ("a", "b"):
            replica = Replica(postgres_url, name)
            clock = FakeClock()

            async def lead(name: str = name) -> None:
                events.append(f"{name} leads")

            async def stand_by(name: str = name) -> None:
                events.append(f"{name} stands by")

            loop = Replication(
                replica.lease,
                replica.fence,
                name=name,
                host="test",
                pid=1,
                lease_seconds=LEASE,
                clock=clock,
                metrics=Metrics(),
                logger=logging.getLogger("test"),
                checksum=lambda name=name: "same" if name == "a" else "other",
                on_lead=lead,
                on_standby=stand_by,
            )
            loops.append((replica, clock, loop))
        (ra, ca, a), (rb, _, b) = loops
        await a.start()
        await b.start()
        await a.wait_started()
        assert (a.role, b.role) == (Role.LEADER, Role.STANDBY)
        assert events == ["a leads"]
        assert a.may_act() and not b.may_act()
        ca.advance(LEASE * 2 / 3 + 1)  # no renewal confirmed for two thirds of the lease: no new starts
        assert not a.may_act()
        await a.step()  # renews
        assert a.may_act()
        await b.step()
        assert b._metrics.replica_config_mismatch._value.get() == 1  # a loaded other job definitions
        assert {r.name: r.role for r in b.live()} == {"a": Role.LEADER, "b": Role.STANDBY}

        await a.stop()  # hands the lease over at once
        await b.step()
        await b.wait_started()
        assert b.role == Role.LEADER and events == ["a leads", "a stands by", "b leads"]
        assert b._metrics.leadership_changes.labels("took_over")._value.get() == 1
        await b.stop()
        ra.close()
        rb.close()

    asyncio.run(scenario())


def test_renewal_refused_drops_to_standby_before_stopping_the_jobs(postgres_url: str) -> None:
    async def scenario() -> None:
        a, b = Replica(postgres_url, "a"), Replica(postgres_url, "b")
        seen: list[int | None] = []

        async def stand_by() -> None:
            seen.append(a.fence.epoch)  # the fence is already down when the jobs are being stopped

        async def nothing() -> None:
            return None

        metrics = Metrics()
        loop = Replication(
            a.lease, a.fence, name="a", host="t", pid=1, lease_seconds=LEASE, clock=FakeClock(), metrics=metrics,
            logger=logging.getLogger("test"), checksum=lambda: "x", on_lead=nothing, on_standby=stand_by,
        )  # fmt: skip
        await loop.start()
        assert loop.role == Role.LEADER
        expire_lease(a)
        b.lead()
        await loop.step()
        assert loop.role == Role.STANDBY and seen == [None]
        assert metrics.leadership_changes.labels("lost")._value.get() == 1
        a.close()
        b.close()

    asyncio.run(scenario())


def test_a_leader_whose_jobs_cannot_start_stands_by_and_hands_the_lease_on(postgres_url: str) -> None:
    async def scenario() -> None:
        a = Replica(postgres_url, "a")
        stood_by: list[str] = []

        async def broken() -> None:
            raise Fenced("the store went away while syncing the jobs")

        async def stand_by() -> None:
            stood_by.append("a")

        metrics = Metrics()
        loop = Replication(
            a.lease, a.fence, name="a", host="t", pid=1, lease_seconds=LEASE, clock=FakeClock(), metrics=metrics,
            logger=logging.getLogger("test"), checksum=lambda: "x", on_lead=broken, on_standby=stand_by,
        )  # fmt: skip
        await loop.start()
        await loop.wait_started()
        assert loop.role == Role.LEADER  # until the loop looks again
        await loop.step()
        assert stood_by == ["a"] and a.fence.epoch is None
        assert metrics.leadership_changes.labels("lost")._value.get() == 1
        b = Replica(postgres_url, "b")
        assert b.lease.try_acquire() is not None  # released: another replica need not wait for the lease
        a.close()
        b.close()

    asyncio.run(scenario())


def test_a_lease_row_that_cannot_be_read_in_time_refuses_the_write_but_keeps_the_epoch(postgres_url: str) -> None:
    """The fence reads tc_leader FOR SHARE at each commit. When that read times out (the row locked by another
    session), the write is refused and rolled back, but a timeout says nothing about the lease: the epoch
    stays, and the replica loop decides from its renewals whether leadership was lost."""
    import psycopg

    replica = Replica(postgres_url, "a")
    try:
        replica.store.close()
        replica.store = StateStore.open(postgres_url, timeouts=StoreTimeouts(lock=0.5, statement=5.0))
        replica.fence.install(replica.store.engine)
        epoch = replica.lead()
        with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as locker:
            locker.execute("LOCK TABLE tc_leader IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(
                StateStoreUnavailable, match=r"leader lease could not be read: .*lock timeout"
            ) as caught:
                replica.store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
            assert not isinstance(caught.value, Fenced)
        assert replica.fence.epoch == epoch
        assert replica.store.jobs() == []  # rolled back
        replica.store.sync_jobs([JobPlan("j", "fp", ["a"])], T0)  # the retry, once the row can be read
        assert [job.name for job in replica.store.jobs()] == ["j"]
    finally:
        replica.close()
