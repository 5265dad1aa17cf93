"""One job's ticks, in process, with an injected clock and the test plugins: the trigger state machine."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import textwrap
from pathlib import Path

import pytest
from clock import FakeClock
from daemon import read_ledger

from teckochecker.config.validate import load_config
from teckochecker.crashpoints import CrashPoints
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import PluginContext
from teckochecker.plugins import PluginRegistry
from teckochecker.runner import JobRunner, TickResult
from teckochecker.runtime import JobRuntime
from teckochecker.secrets.resolving import Redactor, SecretResolver
from teckochecker.services import TickServices
from teckochecker.state.models import JobSnapshot, JobState, RunState
from teckochecker.state.store import StateStore
from teckochecker.state.worker import StoreWorker


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        registry: PluginRegistry,
        action: str = "",
        rule: str = "all_terminal",
        state_url: str | None = None,
        source: str = "",
    ) -> None:
        self.status = tmp_path / "status.json"
        self.ledger = tmp_path / "ledger.jsonl"
        config_path = tmp_path / "tc.yaml"
        config_path.write_text(
            textwrap.dedent(f"""\
            jobs:
              - name: j
                interval: 30s
                deadline: 1h
                trigger: {rule}
                source: {{type: status_file, path: {self.status}, targets: [a, b]{source}}}
                actions:
                  - {{type: record, ledger: {self.ledger}{action}}}
            """)
        )
        self.config = load_config(config_path, registry)
        self.clock = FakeClock()
        self.store = StateStore.open(state_url or f"sqlite:///{tmp_path / 'state.db'}")
        self.worker = StoreWorker()
        self.runner = JobRunner(
            TickServices(
                self.store,
                self.worker,
                self.clock,
                CrashPoints({}),
                logging.getLogger("test"),
                Metrics(),
                random.Random(1),
            )
        )
        context = PluginContext(
            http=None,
            clock=self.clock,
            logger=logging.getLogger("test.plugins"),  # type: ignore[arg-type]
            secret=SecretResolver({}, {}, Redactor()),
        )
        self.job = JobRuntime.build(self.config.jobs["j"], context)
        self.store.sync_jobs([self.job.plan()], self.clock.now())

    def set(self, **states: object) -> None:
        self.status.write_text(json.dumps(states))

    def tick(self, fresh: tuple[str, ...] = ()) -> TickResult:
        return asyncio.run(self.runner.tick(self.job, fresh=fresh))

    def snap(self) -> JobSnapshot:
        snap = self.store.job("j")
        assert snap is not None
        return snap

    def kinds(self) -> list[str]:
        return [e.kind for e in self.store.events("j")]

    def close(self) -> None:
        self.worker.close()
        self.store.close()


@pytest.fixture
def make(tmp_path: Path, registry: PluginRegistry):
    made: list[Harness] = []

    def factory(**kwargs: object) -> Harness:
        made.append(Harness(tmp_path, registry, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield factory
    for h in made:
        h.close()


def test_fires_once_when_every_target_is_terminal(make) -> None:
    h = make()
    h.set(a="running", b="pending")
    assert h.tick() == TickResult(next_in=None, done=False)
    assert h.snap().state is JobState.WATCHING and read_ledger(h.ledger) == []
    h.set(a="succeeded", b="failed")
    result = h.tick()
    assert h.snap().state is JobState.FIRING and len(read_ledger(h.ledger)) == 1
    assert result.next_in == 10.0  # follow the started action soon
    h.clock.advance(10)
    assert h.tick().done
    snap = h.snap()
    assert snap.state is JobState.COMPLETED_WITH_FAILURES
    assert snap.runs[0].state is RunState.SUCCEEDED
    assert read_ledger(h.ledger)[0]["targets"] == {"a": "succeeded", "b": "failed"}
    # Ticks after the end do nothing.
    assert h.tick().done and len(read_ledger(h.ledger)) == 1


def test_a_check_that_has_observed_nothing_yet_stores_only_its_time_batched(make) -> None:
    h = make()
    h.set(a="unseen", b="unseen")  # e.g. the account's shared listing has not reached them yet
    assert h.tick() == TickResult() and h.tick() == TickResult()
    snap = h.snap()
    assert snap.last_checked_at is None and snap.first_observed_at is None and snap.deadline_at is None
    asyncio.run(h.runner.flush())  # the batched "last checked" write
    assert h.snap().last_checked_at == h.clock.now() and h.snap().first_observed_at is None
    h.set(a="running", b="unseen")
    h.tick()
    assert h.snap().first_observed_at == h.clock.now()  # the first observation starts the deadline


def test_a_hinted_tick_checks_only_the_named_pending_target(make, tmp_path: Path) -> None:
    checks = tmp_path / "checks.jsonl"
    h = make(source=f", check_log: {checks}")
    h.set(a="running", b="running")
    assert h.tick() == TickResult()
    h.set(a="succeeded", b="running")
    assert h.tick(fresh=("a", "unknown-target")) == TickResult()
    assert [c["targets"] for c in read_ledger(checks)] == [["a", "b"], ["a"]]
    assert {t.target: t.state.value for t in h.snap().targets} == {"a": "succeeded", "b": "running"}
    # A repeated or late hint for a target already seen finished asks nothing.
    assert h.tick(fresh=("a",)) == TickResult() and len(read_ledger(checks)) == 2
    h.set(a="succeeded", b="succeeded")
    fired = h.tick(fresh=("b",))
    assert fired.fired and h.snap().state is JobState.FIRING and len(read_ledger(h.ledger)) == 1
    assert read_ledger(checks)[-1]["targets"] == ["b"]
    # Hints after the job fired start nothing more.
    h.tick(fresh=("b",))
    assert len(read_ledger(h.ledger)) == 1


def test_only_unfinished_targets_are_checked_and_final_states_stick(make) -> None:
    h = make()
    h.set(a="succeeded", b="running")
    h.tick()
    h.set(a="failed", b="running")  # a source that changes its mind about a finished target is ignored
    h.tick()
    assert h.snap().targets[0].state.value == "succeeded"


def test_all_succeeded_rule_ends_failed_without_running_actions(make) -> None:
    h = make(rule="all_succeeded")
    h.set(a="succeeded", b="expired")
    assert h.tick().done
    assert h.snap().state is JobState.FAILED and read_ledger(h.ledger) == []


def test_transient_source_error_backs_off_and_honours_retry_after(make) -> None:
    h = make()
    h.status.write_text(json.dumps({"__error__": "transient", "__retry_after__": 45}))
    result = h.tick()
    assert result.next_in == 45
    snap = h.snap()
    assert snap.consecutive_failures == 1 and "try later" in snap.last_error
    assert snap.next_check_at == h.clock.now() + __import__("datetime").timedelta(seconds=45)
    # A tick before the back-off has passed does not call the source again.
    h.set(a="succeeded", b="succeeded")
    h.clock.advance(20)
    assert h.tick().next_in == pytest.approx(25)
    assert h.snap().state is JobState.WATCHING
    h.clock.advance(25)
    h.tick()
    assert h.snap().state is JobState.FIRING and h.snap().consecutive_failures == 0


def test_backoff_without_retry_after_is_full_jitter_capped_at_60s(make) -> None:
    h = make()
    h.status.write_text(json.dumps({"__error__": "transient"}))
    delays = []
    for _ in range(10):
        delays.append(h.tick().next_in)
        h.clock.advance(61)
    assert all(0 <= d <= 60 for d in delays)
    assert h.snap().consecutive_failures == 10


def test_permanent_source_error_stops_the_job(make) -> None:
    h = make()
    h.status.write_text(json.dumps({"__error__": "permanent"}))
    assert h.tick().done
    snap = h.snap()
    assert snap.state is JobState.FAILED and "credentials rejected" in snap.last_error


def test_deadline_ends_the_job(make) -> None:
    h = make()
    h.set(a="running", b="running")
    h.tick()
    h.clock.advance(3601)
    assert h.tick().done
    snap = h.snap()
    assert snap.state is JobState.FAILED and "deadline passed" in snap.last_error
    assert "deadline_passed" in h.kinds() and read_ledger(h.ledger) == []


def test_definite_non_start_retries_with_a_new_attempt(make) -> None:
    h = make(action=", fault: not_started")
    h.set(a="succeeded", b="succeeded")
    result = h.tick()
    run = h.snap().runs[0]
    assert run.state is RunState.PENDING and run.attempt == 2
    assert 0 <= result.next_in <= 1  # first back-off step: up to 1 s


def test_rejected_start_fails_the_job_for_a_person(make) -> None:
    h = make(action=", fault: reject")
    h.set(a="succeeded", b="succeeded")
    assert h.tick().done
    snap = h.snap()
    assert snap.state is JobState.FAILED and snap.runs[0].state is RunState.REJECTED
    assert "downstream said 400" in snap.runs[0].message


def test_in_doubt_start_that_happened_is_adopted_never_repeated(make) -> None:
    h = make(action=", fault: in_doubt_created")
    h.set(a="succeeded", b="succeeded")
    h.tick()
    assert h.snap().runs[0].state is RunState.IN_DOUBT
    for _ in range(5):
        h.clock.advance(2)
        h.tick()
    snap = h.snap()
    assert len(read_ledger(h.ledger)) == 1
    assert snap.runs[0].state is RunState.SUCCEEDED and snap.state is JobState.COMPLETED
    assert snap.runs[0].external_id == read_ledger(h.ledger)[0]["id"]
    assert "action_adopted" in h.kinds()


def test_in_doubt_start_that_did_not_happen_is_retried_after_two_empty_searches(make) -> None:
    h = make(action=", fault: in_doubt_not_created")
    h.set(a="succeeded", b="succeeded")
    h.tick()
    h.clock.advance(2)
    h.tick()
    assert h.snap().runs[0].search_empty_count == 1 and h.snap().runs[0].state is RunState.IN_DOUBT
    h.clock.advance(2)
    assert h.tick().next_in == 0  # second empty search → a new attempt, due at once
    run = h.snap().runs[0]
    assert run.attempt == 2 and run.state is RunState.PENDING
    h.tick()
    assert h.snap().runs[0].state is RunState.IN_DOUBT  # same fault again: in doubt, still nothing started
    assert h.kinds().count("action_search_empty") == 2 and read_ledger(h.ledger) == []


def test_in_doubt_without_search_fails_instead_of_risking_a_duplicate(make) -> None:
    h = make(action=", fault: in_doubt_created, searchable: false")
    h.set(a="succeeded", b="succeeded")
    h.tick()
    h.clock.advance(2)
    assert h.tick().done
    snap = h.snap()
    assert snap.state is JobState.FAILED and "cannot search" in snap.runs[0].message
    assert len(read_ledger(h.ledger)) == 1


def _crash_after_intent(h: Harness, *, start_happened: bool) -> None:
    """Leave the run as a killed process would: intent committed (SENDING), maybe started, no result."""
    from teckochecker.plugin_api import ActionRequest, CheckReport, Observation, TargetState

    done = tuple(Observation(t, TargetState.SUCCEEDED, "completed") for t in ("a", "b"))
    h.store.record_check(
        "j",
        CheckReport(done),
        now=h.clock.now(),
        next_check_at=None,
        deadline=60,
        rule=h.job.definition.trigger,
        actions=h.job.planned_actions(),
    )
    snap = h.store.job("j")
    run = snap.runs[0]
    assert h.store.begin_run(run.id, now=h.clock.now())
    if start_happened:
        request = ActionRequest("j", run.trigger_id, run.created_at, tuple(t.as_observation() for t in snap.targets))
        asyncio.run(h.job.actions[0].start(request))


@pytest.mark.parametrize("start_happened", [True, False])
def test_a_start_cut_off_by_a_crash_is_reconciled_not_repeated(make, start_happened: bool) -> None:
    h = make()
    _crash_after_intent(h, start_happened=start_happened)
    h.tick()  # a new process finds the run SENDING: in doubt
    assert h.snap().runs[0].state is RunState.IN_DOUBT
    for _ in range(30):
        h.clock.advance(10)
        result = h.tick()
        if result.done:
            break
        h.clock.advance(result.next_in or 0)
    snap = h.snap()
    assert snap.state is JobState.COMPLETED
    assert len(read_ledger(h.ledger)) == 1
    assert ("action_adopted" in h.kinds()) is start_happened
    # A start after searches that found nothing is watched for a duplicate the search missed, for an hour.
    watch = snap.runs[0].watch
    assert (watch is not None) is not start_happened
    if watch is not None:
        assert watch.closed_at is not None and watch.closed_at >= watch.until
        assert (watch.until - watch.armed_at).total_seconds() == 3600 and watch.duplicates == ()


def test_job_state_machine_on_postgres(tmp_path: Path, registry: PluginRegistry, postgres_url: str) -> None:
    h = Harness(tmp_path, registry, state_url=postgres_url)
    try:
        h.set(a="succeeded", b="succeeded")
        h.tick()
        h.clock.advance(10)
        assert h.tick().done
        assert h.snap().state is JobState.COMPLETED and len(read_ledger(h.ledger)) == 1
    finally:
        h.close()


# ----- the foreground log: one WARNING per change of a failing condition, one INFO when it clears -----


def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test" and r.levelno == level]


def test_a_failing_check_is_logged_once_per_change_not_once_per_tick(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="test")
    h = make()
    for attempt in range(5):
        h.status.write_text(json.dumps({"__error__": "transient", "__message__": f"HTTP 503 (attempt {attempt})"}))
        h.tick()
        h.clock.advance(61)
    assert _logged(caplog, logging.WARNING) == ["job j: could not check 2 of 2 target(s): HTTP 503 (attempt 0)"]
    h.set(a="running", b="running")
    h.tick()
    h.clock.advance(61)
    h.tick()
    assert _logged(caplog, logging.INFO) == ["job j: check recovered"]
    h.status.write_text(json.dumps({"__error__": "transient", "__message__": "HTTP 401 token revoked"}))
    h.tick()
    h.clock.advance(61)
    h.status.write_text(json.dumps({"__error__": "transient", "__message__": "connection refused"}))
    h.tick()
    assert _logged(caplog, logging.WARNING)[1:] == [
        "job j: could not check 2 of 2 target(s): HTTP 401 token revoked",
        "job j: could not check 2 of 2 target(s): connection refused",
    ]


def test_a_failing_check_writes_one_event_per_change_not_one_per_attempt(make) -> None:
    h = make()
    for attempt in range(5):
        h.status.write_text(json.dumps({"__error__": "transient", "__message__": f"HTTP 503 (attempt {attempt})"}))
        h.tick()
        h.clock.advance(61)
    assert h.kinds().count("check_failed") == 1
    assert h.snap().consecutive_failures == 5  # every attempt still counts
    h.status.write_text(json.dumps({"__error__": "transient", "__message__": "connection refused"}))
    h.tick()
    h.clock.advance(61)
    assert h.kinds().count("check_failed") == 2  # another reason: another condition
    h.set(a="running", b="running")
    h.tick()
    h.clock.advance(61)
    h.tick()
    assert h.snap().consecutive_failures == 0
    h.status.write_text(json.dumps({"__error__": "transient", "__message__": "connection refused"}))
    h.tick()
    assert h.kinds().count("check_failed") == 3  # failing again after a recovery is news


def test_per_target_reasons_are_summarised_and_compared_without_the_target(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="test")
    h = make()
    unreachable = {t: {"error": f"could not reach https://api.example/v1/batches/{t}"} for t in ("a", "b")}
    h.status.write_text(json.dumps(unreachable))
    h.tick()
    h.clock.advance(31)
    h.status.write_text(json.dumps({"a": "running", "b": unreachable["b"]}))  # a different target fails first
    h.tick()
    assert _logged(caplog, logging.WARNING) == [
        "job j: could not check 2 of 2 target(s): could not reach https://api.example/v1/batches/a"
    ]
    assert _logged(caplog, logging.INFO) == []


def test_failed_action_steps_and_deferred_searches_are_logged_once_and_recover(make, caplog, tmp_path) -> None:
    caplog.set_level(logging.INFO, logger="test")
    outage = tmp_path / "outage"
    outage.write_text("connection refused")
    h = make(action=f", outage: {outage}")
    h.set(a="succeeded", b="succeeded")
    for _ in range(5):
        h.tick()
        h.clock.advance(61)
    assert h.snap().runs[0].attempt == 6 and read_ledger(h.ledger) == []
    assert _logged(caplog, logging.WARNING) == [
        "job j: action step failed for 1 of 1 action(s): start failed, nothing was sent: connection refused"
    ]
    outage.unlink()
    h.tick()
    assert _logged(caplog, logging.INFO)[-1] == "job j: action step recovered"
    assert h.snap().runs[0].state is RunState.RUNNING
    outage.write_text("HTTP 502 from https://queue.example/jobs/123")
    for _ in range(5):
        h.clock.advance(61)
        h.tick()
    outage.write_text("HTTP 504 from https://queue.example/jobs/123")  # only a number changed: same condition
    h.clock.advance(61)
    h.tick()
    assert _logged(caplog, logging.WARNING)[1:] == [
        "job j: action step failed for 1 of 1 action(s): following "
        f"{h.snap().runs[0].external_id} failed: HTTP 502 from https://queue.example/jobs/123"
    ]
    outage.unlink()
    h.clock.advance(61)
    assert h.tick().done
    assert _logged(caplog, logging.INFO)[-2:] == ["job j: action step recovered", "job j: completed"]


def test_a_deferred_search_is_its_own_condition(make, caplog, tmp_path) -> None:
    caplog.set_level(logging.INFO, logger="test")
    outage = tmp_path / "outage"
    h = make(action=f", fault: in_doubt_created, outage: {outage}")
    h.set(a="succeeded", b="succeeded")
    h.tick()
    outage.write_text("search timed out")
    for _ in range(5):
        h.clock.advance(61)
        h.tick()
    assert h.snap().runs[0].state is RunState.IN_DOUBT
    reconcile = [m for m in _logged(caplog, logging.WARNING) if "reconcile" in m]
    assert reconcile == ["job j: reconcile deferred for 1 of 1 action(s): search failed: search timed out"]
    outage.unlink()
    h.clock.advance(61)
    h.tick()
    assert "job j: reconcile recovered" in _logged(caplog, logging.INFO)
    assert h.snap().runs[0].external_id == read_ledger(h.ledger)[0]["id"]


def test_a_fired_action_whose_target_changed_fails_and_starts_nothing(make, tmp_path: Path) -> None:
    outage = tmp_path / "outage"
    outage.write_text("down")
    h = make(action=f", target: first, outage: {outage}")
    h.set(a="succeeded", b="succeeded")
    h.tick()
    assert h.snap().state is JobState.FIRING and h.snap().runs[0].state is RunState.PENDING
    assert h.snap().runs[0].target_key == "record:first"
    # The definition in force now names another downstream target (a PUT that raced the fire, an edit, a
    # failover to a replica with the new definition): the run fired at "first" is not started at "second".
    moved = make(action=", target: second")
    moved.clock.advance(120)
    moved.tick()
    run = moved.snap().runs[0]
    assert run.state is RunState.FAILED and "target changed from record:first to record:second" in (run.message or "")
    assert read_ledger(h.ledger) == [] and moved.snap().state.is_final
