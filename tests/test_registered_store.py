"""Registered jobs in the state store (SQLite and a real PostgreSQL): put is idempotent, every change is
visible to another process through the cheap version check."""

from __future__ import annotations

import datetime as dt

import pytest

from teckochecker.state.models import JobOrigin, PutOutcome
from teckochecker.state.store import JobPlan, StateStore

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(minutes=1)
BODY = {"name": "nightly", "template": "classify", "source": {"targets": ["batch_1", "batch_2"]}}


@pytest.fixture
def store(state_url: str):
    store = StateStore.open(state_url)
    yield store
    store.close()


def test_put_creates_then_the_same_body_is_unchanged(store: StateStore) -> None:
    assert store.put_registered_job("nightly", JobOrigin.API, BODY, now=T0) is PutOutcome.CREATED
    reordered = {"source": {"targets": ["batch_1", "batch_2"]}, "template": "classify", "name": "nightly"}
    before = store.registry_version()
    assert store.put_registered_job("nightly", JobOrigin.API, reordered, now=T1) is PutOutcome.UNCHANGED
    assert store.registry_version() == before  # nothing written, so no replica rebuilds
    [job] = store.registered_jobs()
    assert (job.name, job.origin, job.body, job.created_at, job.updated_at) == (
        "nightly",
        JobOrigin.API,
        BODY,
        T0,
        T0,
    )


def test_put_with_another_body_updates_and_changes_the_version(store: StateStore) -> None:
    store.put_registered_job("nightly", JobOrigin.API, BODY, now=T0)
    before = store.registry_version()
    more = {**BODY, "source": {"targets": ["batch_1", "batch_2", "batch_3"]}}
    assert store.put_registered_job("nightly", JobOrigin.API, more, now=T1) is PutOutcome.UPDATED
    after = store.registry_version()
    assert after != before and after.count == 1 and after.latest == T1
    [job] = store.registered_jobs()
    assert job.body == more and job.created_at == T0 and job.updated_at == T1


def test_details_are_kept_unless_given(store: StateStore) -> None:
    store.put_registered_job("g", JobOrigin.DISCOVERED, BODY, {"expected": 3}, now=T0)
    assert store.put_registered_job("g", JobOrigin.DISCOVERED, BODY, now=T1) is PutOutcome.UNCHANGED
    assert store.registered_jobs()[0].details == {"expected": 3}
    assert store.put_registered_job("g", JobOrigin.DISCOVERED, BODY, {"expected": 4}, now=T1) is PutOutcome.UPDATED
    assert store.registered_jobs()[0].details == {"expected": 4}


def test_remove(store: StateStore) -> None:
    store.put_registered_job("nightly", JobOrigin.API, BODY, now=T0)
    before = store.registry_version()
    assert store.remove_registered_job("nightly") is True
    assert store.registered_jobs() == []
    assert store.registry_version() != before
    assert store.remove_registered_job("nightly") is False


def test_a_removed_registered_job_keeps_its_origin(store: StateStore) -> None:
    store.put_registered_job("nightly", JobOrigin.API, BODY, now=T0)
    store.put_registered_job("group_1", JobOrigin.DISCOVERED, BODY, now=T0)
    plans = [JobPlan(n, "f", ["batch_1"]) for n in ("nightly", "group_1", "from_file")]
    store.sync_jobs(plans, T0)
    store.remove_registered_job("nightly")
    store.remove_registered_job("group_1")
    store.sync_jobs([], T1)  # what the daemon does next: the jobs are gone from its definitions
    jobs = {job.name: (job.origin, job.removed) for job in store.jobs()}
    assert jobs == {
        "nightly": (JobOrigin.API, True),
        "group_1": (JobOrigin.DISCOVERED, True),
        "from_file": (JobOrigin.FILE, True),
    }
    nightly = store.job("nightly")
    assert nightly is not None and nightly.origin is JobOrigin.API


def test_another_process_sees_a_put(state_url: str) -> None:
    one, two = StateStore.open(state_url), StateStore.open(state_url)
    try:
        seen = two.registry_version()
        one.put_registered_job("nightly", JobOrigin.API, BODY, now=T0)
        assert two.registry_version() != seen
        assert [j.name for j in two.registered_jobs()] == ["nightly"]
    finally:
        one.close()
        two.close()


def test_stamps_and_reading_only_some_rows(store: StateStore) -> None:
    store.put_registered_job("a", JobOrigin.API, {**BODY, "name": "a"}, now=T0)
    store.put_registered_job("b", JobOrigin.API, {**BODY, "name": "b"}, now=T1)
    stamps = store.registered_stamps()
    assert {n: at for n, (_, at) in stamps.items()} == {"a": T0, "b": T1}
    assert [j.name for j in store.registered_jobs(["b", "missing"])] == ["b"]
    assert [j.name for j in store.registered_jobs([])] == []
    assert stamps["a"][0] == store.registered_jobs(["a"])[0].fingerprint
