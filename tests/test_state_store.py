"""The state store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from teckochecker.config.models import Condition, TriggerRule
from teckochecker.errors import StateStoreError
from teckochecker.plugin_api import ActionOutcome, ActionResult, CheckReport, Observation, TargetState
from teckochecker.secrets.resolving import Redactor
from teckochecker.state.location import SingleInstanceLock, StoreFileIdentity, resolve_state_url
from teckochecker.state.models import JobState, RunState
from teckochecker.state.schema import StoreTimeouts
from teckochecker.state.store import JobPlan, PlannedAction, StateStore

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
ACTIONS = [
    PlannedAction(0, "record", "record:x", Condition.ALWAYS),
    PlannedAction(1, "record", "record:y", Condition.ANY_FAILED),
]


def obs(target: str, state: str, status: str | None = None) -> Observation:
    return Observation(target, TargetState(state), status or state, {"n": 1})


def check(
    store: StateStore, *observations: Observation, rule: TriggerRule = TriggerRule.ALL_TERMINAL, at: dt.datetime = T0
):
    store.record_check(
        "j",
        CheckReport(tuple(observations)),
        now=at,
        next_check_at=at + dt.timedelta(seconds=60),
        deadline=3600,
        rule=rule,
        actions=ACTIONS,
    )
    return store.job("j")


@pytest.fixture
def store(state_url: str):
    store = StateStore.open(state_url)
    store.sync_jobs([JobPlan("j", "fp1", ["a", "b"])], T0)
    yield store
    store.close()


def test_sync_jobs_registers_and_keeps_history(store: StateStore) -> None:
    job = store.job("j")
    assert job is not None and job.state is JobState.WATCHING
    assert [t.target for t in job.targets] == ["a", "b"]
    store.sync_jobs([JobPlan("j", "fp2", ["a", "b", "c"]), JobPlan("k", "fp", ["z"])], T0)
    assert [t.target for t in store.job("j").targets] == ["a", "b", "c"]
    store.sync_jobs([JobPlan("k", "fp", ["z"])], T0)
    removed = store.job("j")
    assert removed.removed and len(removed.targets) == 3
    kinds = [e.kind for e in store.events("j")]
    assert kinds == ["registered", "definition_changed", "targets_added", "removed"]


def test_check_persists_changes_and_fires_once_in_the_same_transaction(store: StateStore) -> None:
    snap = check(store, obs("a", "running", "in_progress"), obs("b", "pending", "validating"))
    assert snap.state is JobState.WATCHING and snap.first_observed_at == T0
    assert snap.deadline_at == T0 + dt.timedelta(hours=1)
    snap = check(store, obs("a", "succeeded", "completed"), obs("b", "failed", "failed"))
    assert snap.state is JobState.FIRING
    assert [(r.action_index, r.state) for r in snap.runs] == [(0, RunState.PENDING), (1, RunState.PENDING)]
    # A later check of the fired job changes nothing: no second set of runs.
    snap = check(store, obs("a", "succeeded"), obs("b", "failed"))
    assert len(snap.runs) == 2
    assert [e.kind for e in store.events("j")].count("trigger_fired") == 1


def test_conditions_skip_actions(store: StateStore) -> None:
    snap = check(store, obs("a", "succeeded"), obs("b", "succeeded"))
    assert [r.state for r in snap.runs] == [RunState.PENDING, RunState.SKIPPED]


def test_all_succeeded_rule_abandons_without_firing(store: StateStore) -> None:
    snap = check(store, obs("a", "expired"), obs("b", "running"), rule=TriggerRule.ALL_SUCCEEDED)
    assert snap.state is JobState.FAILED and snap.runs == ()
    assert "all_succeeded" in (snap.last_error or "")


def test_terminal_targets_are_never_overwritten(store: StateStore) -> None:
    check(store, obs("a", "succeeded"), obs("b", "running"))
    snap = check(store, obs("a", "failed"), obs("b", "running"))
    assert snap.targets[0].state is TargetState.SUCCEEDED


def test_intent_is_exclusive_per_downstream_target(store: StateStore) -> None:
    store.sync_jobs([JobPlan("j", "fp1", ["a", "b"]), JobPlan("k", "fp", ["a"])], T0)
    snap_j = check(store, obs("a", "succeeded"), obs("b", "succeeded"))
    store.record_check(
        "k",
        CheckReport((obs("a", "succeeded"),)),
        now=T0,
        next_check_at=None,
        deadline=60,
        rule=TriggerRule.ALL_TERMINAL,
        actions=ACTIONS[:1],
    )
    snap_k = store.job("k")
    run_j, run_k = snap_j.runs[0], snap_k.runs[0]
    assert store.begin_run(run_j.id, now=T0) is True
    assert store.begin_run(run_j.id, now=T0) is False  # not PENDING any more
    assert store.begin_run(run_k.id, now=T0) is False  # same target "record:x" has an unresolved start
    store.run_started(run_j.id, ActionResult("ext-1", ActionOutcome.RUNNING, "created", url="http://x/1"), now=T0)
    assert store.begin_run(run_k.id, now=T0) is True


def test_run_lifecycle_and_final_job_state(store: StateStore) -> None:
    snap = check(store, obs("a", "succeeded"), obs("b", "succeeded"))
    run = snap.runs[0]
    assert store.begin_run(run.id, now=T0)
    store.run_in_doubt(run.id, "read timeout", now=T0, next_try_at=T0)
    assert store.run_search_empty(run.id, now=T0, next_try_at=T0) == 1
    store.run_started(run.id, ActionResult("ext-9", ActionOutcome.RUNNING, "created"), now=T0, how="adopted")
    assert store.finish_job_if_done("j", now=T0) is None
    store.run_progress(run.id, ActionResult("ext-9", ActionOutcome.SUCCEEDED_WITH_WARNINGS, "warning"), now=T0)
    assert store.finish_job_if_done("j", now=T0) is JobState.COMPLETED_WITH_FAILURES
    job = store.job("j")
    assert job.state is JobState.COMPLETED_WITH_FAILURES and job.runs[0].external_id == "ext-9"
    kinds = [e.kind for e in store.events("j")]
    for kind in (
        "action_intent",
        "action_in_doubt",
        "action_search_empty",
        "action_adopted",
        "action_finished",
        "job_finished",
    ):
        assert kind in kinds


def test_not_started_goes_back_to_pending_with_a_new_attempt(store: StateStore) -> None:
    run = check(store, obs("a", "succeeded"), obs("b", "succeeded")).runs[0]
    store.begin_run(run.id, now=T0)
    store.run_not_started(run.id, "connection refused", now=T0, next_try_at=T0)
    again = store.job("j").runs[0]
    assert again.state is RunState.PENDING and again.attempt == 2 and again.trigger_id == run.trigger_id


def test_fail_job_only_while_watching(store: StateStore) -> None:
    store.fail_job("j", "deadline passed", now=T0, kind="deadline_passed")
    job = store.job("j")
    assert job.state is JobState.FAILED and job.last_error == "deadline passed"
    assert store.events("j")[-1].kind == "deadline_passed"


def test_state_survives_reopen(state_url: str) -> None:
    first = StateStore.open(state_url)
    first.sync_jobs([JobPlan("j", "fp", ["a"])], T0)
    first.close()
    second = StateStore.open(state_url)
    assert second.job("j").targets[0].target == "a"
    second.close()


def test_readonly_open_of_an_empty_store_explains(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="has the daemon run"):
        StateStore.open(f"sqlite:///{tmp_path / 'none.db'}", readonly=True)


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 's.db'}")
    with store._engine.connect() as conn:  # the settings are per connection: read them through the store's own
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
    store.close()
    raw = sqlite3.connect(tmp_path / "s.db")
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_single_instance_lock(tmp_path: Path) -> None:
    first, second = SingleInstanceLock(tmp_path / "s.db"), SingleInstanceLock(tmp_path / "s.db")
    first.acquire()
    with pytest.raises(StateStoreError, match="supports one daemon"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_default_state_url(tmp_path: Path) -> None:
    assert resolve_state_url(None, {}, tmp_path) == f"sqlite:///{tmp_path / '.teckochecker' / 'state.db'}"
    assert resolve_state_url(None, {"STATE_DIRECTORY": "/var/lib/tc"}, tmp_path) == "sqlite:////var/lib/tc/state.db"
    assert (
        resolve_state_url("postgresql+psycopg://u@h/db", {"STATE_DIRECTORY": "/x"}, tmp_path)
        == "postgresql+psycopg://u@h/db"
    )
    with pytest.raises(StateStoreError, match="not a valid SQLAlchemy URL"):
        resolve_state_url("not a url", {}, tmp_path)


def test_gauges_match_what_the_snapshots_say(store: StateStore) -> None:
    from teckochecker.state.models import JobGauges

    progress = {"request_counts": {"total": 10, "completed": 7, "failed": 1}}
    check(store, Observation("a", TargetState.RUNNING, "in_progress", progress), obs("b", "pending"))
    store.sync_jobs([JobPlan("j", "fp1", ["a", "b"]), JobPlan("k", "fp", ["z"])], T0)
    gauges = store.gauges()
    assert gauges == JobGauges.from_snapshots(store.jobs())
    assert gauges.requests["j"] == (10, 7, 1) and gauges.targets[("j", "running")] == 1
    assert gauges.jobs["watching"] == 2 and gauges.deadlines["j"] == (T0 + dt.timedelta(hours=1)).timestamp()


@pytest.mark.parametrize(
    "counts",
    [
        {"total": 10, "completed": 7},
        {"total": 10, "completed": 7, "failed": -3},
        {"total": 10, "completed": 7, "failed": "1"},
    ],
)
def test_the_gauge_reads_request_counts_as_status_does(store: StateStore, counts: dict[str, object]) -> None:
    """One rule for the vendor's request_counts (state.models.request_counts): a missing, negative or non-int
    count is 0, and the other counts still show. The gauge used to drop such a batch (or go negative) while
    `status`, the API and the status page showed 7/10."""
    from teckochecker.state.models import RequestCounts, request_counts

    check(store, Observation("a", TargetState.RUNNING, "in_progress", {"request_counts": counts}), obs("b", "pending"))
    assert request_counts(store.job("j").targets[0].details) == RequestCounts(10, 7, 0)
    assert store.gauges().requests["j"] == (10, 7, 0)


SECRET = "kbc-CANARYstore\tTOKEN-0042"


def test_every_text_written_passes_the_redactor(state_url: str, tmp_path: Path) -> None:
    """Whatever put a secret into a message (a vendor echo, a library quoting a header), it is not stored."""
    redactor = Redactor()
    redactor.register(SECRET)
    store = StateStore.open(state_url, redact=redactor.redact)
    try:
        store.sync_jobs([JobPlan("j", "fp1", ["a", "b"])], T0)
        echoed = Observation("a", TargetState.RUNNING, "in_progress", {"echo": SECRET}, f"proxy said {SECRET}")
        store.record_check(
            "j",
            CheckReport((echoed,), transient_errors={"b": f"HTTP 503: bad token {SECRET!r}"}),
            now=T0,
            next_check_at=T0,
            deadline=3600,
            rule=TriggerRule.ALL_TERMINAL,
            actions=ACTIONS,
        )
        check(store, obs("a", "succeeded"), obs("b", "succeeded"))
        run = store.job("j").runs[0]
        store.begin_run(run.id, now=T0)
        store.run_in_doubt(run.id, f"Illegal header value {SECRET.encode()!r}", now=T0, next_try_at=T0)
        store.run_started(
            run.id, ActionResult("ext-1", ActionOutcome.RUNNING, "created", details={"t": SECRET}), now=T0
        )
        store.set_meta("reload", f'{{"errors": ["{SECRET}"]}}')
        job, events = store.job("j"), store.events("j")
        stored = repr((job, events, store.get_meta("reload")))
    finally:
        store.close()
    assert "[REDACTED]" in stored
    assert "CANARYstore" not in stored, stored
    for path in tmp_path.iterdir():  # the SQLite file and its WAL, when on SQLite
        assert b"CANARYstore" not in path.read_bytes(), path


def test_the_store_file_identity_notices_deletion_and_replacement(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"")
    identity = StoreFileIdentity.of(db)
    assert identity.problem() is None
    db.rename(tmp_path / "moved.db")
    db.write_bytes(b"")  # a new file at the same path
    assert identity.problem() == f"the state store file {db} was replaced by another file"
    db.unlink()
    assert identity.problem() == f"the state store file {db} was deleted"


def test_single_instance_lock_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias.db").symlink_to(tmp_path / "real" / "s.db")
    first = SingleInstanceLock(tmp_path / "real" / "s.db")
    first.acquire()
    with pytest.raises(StateStoreError, match=f"another teckochecker daemon already uses {tmp_path / 'real' / 's.db'}"):
        SingleInstanceLock(tmp_path / "alias.db").acquire()
    first.release()


def test_set_meta_from_many_writers_at_once_never_collides(state_url: str) -> None:
    # Replicas starting together each record facts in tc_meta; an update-then-insert raced into a unique
    # violation that stopped one of them.
    import threading

    stores = [StateStore.open(state_url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def write(store: StateStore, i: int) -> None:
        start.wait()
        try:
            for n in range(20):
                store.set_meta(f"race-{n}", f"writer {i}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert all((stores[0].get_meta(f"race-{n}") or "").startswith("writer ") for n in range(20))
    finally:
        for s in stores:
            s.close()


@pytest.mark.postgres
def test_every_postgresql_session_has_the_timeouts_and_keeps_the_urls_own_options(postgres_url: str) -> None:
    url = f"{postgres_url}?options=-c%20application_name%3Dtc-test%20-c%20statement_timeout%3D3000"
    store = StateStore.open(url, timeouts=StoreTimeouts(lock=1.5, statement=2.0))
    try:
        with store.engine.connect() as conn:
            shown = {name: conn.execute(sa.text(f"SHOW {name}")).scalar_one() for name in SESSION_SETTINGS}
    finally:
        store.close()
    # The URL's own options come last, so they win over the configured ones.
    assert shown == {"lock_timeout": "1500ms", "statement_timeout": "3s", "application_name": "tc-test"}


SESSION_SETTINGS = ("lock_timeout", "statement_timeout", "application_name")


@pytest.mark.postgres
def test_a_statement_waiting_on_a_lock_is_cancelled_by_the_server_and_nothing_is_written(postgres_url: str) -> None:
    import psycopg

    store = StateStore.open(postgres_url, timeouts=StoreTimeouts(lock=0.5, statement=5.0))
    try:
        with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as locker:
            locker.execute("LOCK TABLE tc_jobs IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(OperationalError, match="lock timeout"):
                store.sync_jobs([JobPlan("j", "f", ["a"])], T0)
            assert time.monotonic() - started < 2.0
        assert store.job("j") is None  # the server aborted the transaction: nothing of it was committed
        store.sync_jobs([JobPlan("j", "f", ["a"])], T0)  # and a retry goes through
        assert store.job("j") is not None
    finally:
        store.close()
