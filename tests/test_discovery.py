"""Discovery in one process: the fake OpenAI's listing, a real SQLite state store, the clock in the test's
hands. The daemon's rebuild is played by the test (sync_jobs), so each step can be looked at in between."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clock import FakeClock
from fakes import FakeOpenAI
from plugin_context import Clients
from teckochecker_openai import OpenAIBatchOptions, OpenAIBatchSource

from teckochecker.config.models import TriggerRule
from teckochecker.config.validate import Config, load_config
from teckochecker.discovery import HINT_WAIT, NOTIFIED_MAX, NOTIFIED_PER_PASS, Discovery
from teckochecker.metrics import Metrics
from teckochecker.plugin_api import CheckReport, ListedTarget, Observation, PluginContext, SharedRegistry, TargetState
from teckochecker.plugins import PluginRegistry
from teckochecker.state.models import JobOrigin, JobState
from teckochecker.state.store import JobPlan, PlannedAction, StateStore
from teckochecker.state.worker import StoreWorker

KEY = "sk-test-discovery-key"
CONFIG = """\
secrets:
  openai: {env: TC_TEST_OPENAI_KEY}
templates:
  classify:
    source: {type: openai_batch, api_key: openai, base_url: "%s", list_max_age: 1s}
    actions: [{type: record, ledger: /tmp/never-written.jsonl}]
    discover:
      match: {teckochecker_template: classify}
      group_by: teckochecker_job
      count_key: teckochecker_batches
      deadline: 1h
      max_pages: 3
jobs:
  - name: by-hand
    template: classify
    source: {targets: [batch_by_hand]}
"""


def meta(group: str, count: str = "3", template: str = "classify") -> dict[str, str]:
    return {"teckochecker_template": template, "teckochecker_job": group, "teckochecker_batches": count}


class Harness:
    def __init__(self, config: Config, store: StateStore, clock: FakeClock, clients: Clients) -> None:
        self.store, self.clock, self.metrics = store, clock, Metrics()
        self.worker = StoreWorker()
        self.rebuilds = 0
        self.checked: list[str] = []
        self.hints: list[tuple[str, str, float]] = []
        # What the daemon's run_now answers: False while the rebuild has not scheduled the job, or once it ended.
        self.scheduled = True
        context = PluginContext(
            http=clients,
            clock=clock,
            secret=lambda name: KEY,
            logger=logging.getLogger("test"),
            shared=SharedRegistry(),
        )
        self.discovery = Discovery(
            store,
            self.worker,
            context,
            clock=clock,
            metrics=self.metrics,
            logger=logging.getLogger("test.discovery"),
            rebuild=self._rebuild,
            run_now=self._run_now,
            hint=self._hint,
            file_jobs=lambda: config.jobs,
            autorun=False,
        )
        self.config = config
        # One loop for the whole test: the HTTP clients belong to the loop they were made in.
        self.loop = asyncio.new_event_loop()

    def _rebuild(self) -> None:
        self.rebuilds += 1

    def _hint(self, channel: str, target: str, received: float) -> int:
        if self.scheduled:
            self.hints.append((channel, target, received))
        return int(self.scheduled)

    def _run_now(self, name: str) -> bool:
        if self.scheduled:
            self.checked.append(name)
        return self.scheduled

    def apply_rows(self) -> None:
        """What the daemon's rebuild does to the store: a job per registered row, with its targets."""
        plans = [JobPlan(r.name, r.fingerprint, r.body["source"]["targets"]) for r in self.store.registered_jobs()]
        self.store.sync_jobs(plans, self.clock.now())

    def fire_if_finished(self, name: str) -> JobState:
        """A check that sees every target of the job finished (what its tick would record)."""
        job = self.store.job(name)
        assert job is not None
        seen = tuple(Observation(t.target, TargetState.SUCCEEDED, "completed") for t in job.targets)
        return self.store.record_check(
            name,
            CheckReport(seen),
            now=self.clock.now(),
            next_check_at=None,
            deadline=3600.0,
            rule=TriggerRule.ALL_TERMINAL,
            actions=[PlannedAction(0, "record", "ledger", self.config.jobs["by-hand"].actions[0].when)],
        )

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, registry: PluginRegistry, fake: FakeOpenAI) -> Iterator[Harness]:
    path = tmp_path / "tc.yaml"
    path.write_text(CONFIG % fake.base_url)
    config = load_config(path, registry)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    clients = Clients()
    h = Harness(config, store, FakeClock(), clients)
    h.loop.run_until_complete(h.discovery.start(config.discoveries))
    yield h
    h.loop.run_until_complete(h.discovery.aclose())
    h.loop.run_until_complete(clients.aclose())
    h.loop.close()
    h.worker.close()
    store.close()


def run(h: Harness) -> None:
    h.loop.run_until_complete(h.discovery.run_once("classify"))
    h.clock.advance(2)  # past list_max_age: the next run lists again


def test_a_group_is_a_job_at_once_grows_and_fires_only_when_complete(harness: Harness, fake: FakeOpenAI) -> None:
    h = harness
    first = [fake.add_batch(metadata=meta("run-7"), status="completed") for _ in range(2)]
    fake.add_batch(metadata=meta("run-7", template="summarize"))  # another template's
    fake.add_batch(metadata={"teckochecker_template": "classify"})  # no group
    fake.add_batch()
    run(h)
    [row] = h.store.registered_jobs()
    assert (row.name, row.origin.value, row.body) == (
        "run-7",
        "discovered",
        {"name": "run-7", "template": "classify", "source": {"targets": first}},
    )
    assert row.details["state"] == "waiting" and row.details["expected"] == 3
    assert h.rebuilds == 1
    assert h.sample("teckochecker_discovery_groups_total", template="classify", outcome="discovered") == 1
    # Every batch came from the listing: one page, not one request per batch.
    assert fake.request_count() == 1 and h.sample("teckochecker_discovery_pages_total", template="classify") == 1

    h.apply_rows()
    assert h.fire_if_finished("run-7") is JobState.WATCHING, "2 of 3 batches finished must not fire"
    run(h)  # follow-up: the events wait for the job to exist
    kinds = [(e.kind, e.message) for e in h.store.events("run-7")]
    assert ("group_changed", "group 'run-7' first listed: 2 of 3 batch(es)") in kinds
    assert ("group_changed", "waiting for its group to be complete before it may fire") in kinds

    third = fake.add_batch(metadata=meta("run-7"), status="completed")
    run(h)
    [row] = h.store.registered_jobs()
    assert row.body["source"]["targets"] == [*first, third] and row.details["state"] == "complete"
    # The row is ahead of the job until the rebuild adds the third batch: still no firing.
    assert h.fire_if_finished("run-7") is JobState.WATCHING
    assert h.checked == []
    h.apply_rows()
    run(h)
    assert h.checked == ["run-7"], "checked at once when its targets are in place"
    assert h.fire_if_finished("run-7") is JobState.FIRING
    assert h.sample("teckochecker_discovery_groups_total", template="classify", outcome="complete") == 1
    messages = [e.message for e in h.store.events("run-7")]
    assert "group 'run-7' complete: 3 of 3 batch(es)" in messages


def test_a_notified_batch_is_read_on_its_own_and_its_job_gets_the_notification(
    harness: Harness, fake: FakeOpenAI
) -> None:
    """A webhook for a batch no job watches: read at once with one GET, whatever the listing's age; a job its
    pass puts it in gets the notification as a hint once in place. A batch of a known group goes to that
    group's job, unless the job has ended; one of a group that fails, or of no group, goes nowhere."""
    h = harness
    old = fake.add_batch(metadata=meta("run-1", "1"), status="completed")
    run(h)
    h.apply_rows()
    h.loop.run_until_complete(h.discovery.run_once("classify"))  # the clock stays: this listing stays fresh
    assert h.checked == ["run-1"]
    new = fake.add_batch(metadata=meta("run-2"), status="completed")  # 1 of 3: its job waits for its group
    bad = fake.add_batch(metadata=meta("run-4", "three"), status="completed")  # its job fails: no hint
    stranger = fake.add_batch(status="completed")  # no group at all
    quiet = fake.add_batch(metadata=meta("run-3"), status="completed")  # not notified: found at the interval
    t0 = h.clock.monotonic()  # receipts, as the webhook receiver stamps them
    for target, received in ((new, t0 + 1), (bad, t0 + 2), (stranger, t0 + 3)):
        assert h.discovery.notified("openai", target, received)
    assert not h.discovery.notified("anthropic", quiet, t0 + 4)  # no template listens there
    lists_before = fake.request_kinds()["list"]
    h.scheduled = False  # the rebuild has not scheduled the new jobs yet
    h.loop.run_until_complete(h.discovery.run_once("classify"))
    assert fake.request_kinds()["list"] == lists_before  # the fresh listing was not read again...
    assert {r.name for r in h.store.registered_jobs()} == {"run-1", "run-2", "run-4"}  # ...the GETs did it
    assert h.hints == [] and h.discovery._pending_follow_up()
    h.apply_rows()
    h.scheduled = True
    run(h)
    assert h.hints == [("openai", new, t0 + 1)]
    # run-1's batch again: its job is in place and watching here, so it gets the hint; once ended, nothing.
    assert h.discovery.notified("openai", old, t0 + 5)
    run(h)
    assert h.hints[-1] == ("openai", old, t0 + 5)
    h.store.fail_job("run-1", "ended", now=h.clock.now())
    assert h.discovery.notified("openai", old, t0 + 6)
    run(h)
    assert len(h.hints) == 2 and h.discovery._to_hint == {}  # dropped, not kept for ever
    # run-3 (found by the listing meanwhile) never gets in place here: its notification waits, then goes.
    assert h.discovery.notified("openai", quiet, h.clock.monotonic())
    run(h)
    assert "run-3" in h.discovery._to_hint
    h.clock.advance(HINT_WAIT)
    run(h)
    assert h.discovery._to_hint == {} and len(h.hints) == 2
    # run-2 removed (its template went in a reload): a notification for it is dropped, not kept for ever.
    rows = [r for r in h.store.registered_jobs() if r.name != "run-2"]
    h.store.sync_jobs([JobPlan(r.name, r.fingerprint, r.body["source"]["targets"]) for r in rows], h.clock.now())
    h.scheduled = False
    assert h.discovery.notified("openai", new, h.clock.monotonic())
    run(h)
    assert h.discovery._to_hint == {} and len(h.hints) == 2
    gets = [r.path for r in fake.requests if r.method == "GET" and r.path != "/v1/batches"]
    assert sorted(gets) == sorted(f"/v1/batches/{b}" for b in (new, bad, stranger))


def test_a_job_to_check_that_ended_meanwhile_is_not_asked_for_again(harness: Harness, fake: FakeOpenAI) -> None:
    """A complete group's job is checked at once when in place; not scheduled, it is asked again every
    follow-up, until it is scheduled, or has ended (then there is nothing to check)."""
    h = harness
    fake.add_batch(metadata=meta("run-5", "1"), status="completed")
    h.scheduled = False
    run(h)
    h.apply_rows()
    run(h)
    assert h.discovery._pending_follow_up()  # in place, not scheduled yet: asked again
    h.store.fail_job("run-5", "ended by its own check", now=h.clock.now())
    run(h)
    assert not h.discovery._pending_follow_up() and h.checked == []


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        (["three"], "teckochecker_batches='three', which is not a whole number above 0"),
        (["2", "2", "2"], "3 batches carry teckochecker_job='run-9', more than the 2 announced"),
    ],
)
def test_bad_metadata_fails_the_job_with_the_reason_and_nothing_fires(
    harness: Harness, fake: FakeOpenAI, counts: list[str], reason: str
) -> None:
    h = harness
    for count in counts:
        fake.add_batch(metadata=meta("run-9", count), status="completed")
    run(h)
    [row] = h.store.registered_jobs()
    assert row.details["state"] == "failed" and reason in row.details["reason"]
    h.apply_rows()
    assert h.fire_if_finished("run-9") is JobState.WATCHING, "a failed group's job never fires"
    run(h)
    job = h.store.job("run-9")
    assert job is not None and job.state is JobState.FAILED and job.runs == ()
    assert job.last_error is not None and reason in job.last_error
    assert [e.kind for e in h.store.events("run-9")][-1] == "group_failed"
    assert h.sample("teckochecker_discovery_groups_total", template="classify", outcome="failed") == 1


def test_a_group_incomplete_at_its_deadline_fails(harness: Harness, fake: FakeOpenAI) -> None:
    h = harness
    fake.add_batch(metadata=meta("slow"), status="completed")
    run(h)
    h.apply_rows()
    h.clock.advance(3600)
    run(h)
    job = h.store.job("slow")
    assert job is not None and job.state is JobState.FAILED
    assert "was not complete 1h after its first batch was listed (1 of the 3 announced batches listed)" in (
        job.last_error or ""
    )


def test_groups_that_cannot_be_jobs_are_refused_once(harness: Harness, fake: FakeOpenAI) -> None:
    h = harness
    fake.add_batch(metadata=meta("by-hand"))  # a file job's name
    fake.add_batch(metadata=meta("no spaces allowed"))
    run(h)
    run(h)
    assert h.store.registered_jobs() == []
    assert h.sample("teckochecker_discovery_groups_total", template="classify", outcome="refused") == 2


def test_a_sweep_reads_pages_while_they_hold_new_batches_and_at_most_max_pages(
    harness: Harness, fake: FakeOpenAI
) -> None:
    h = harness
    now = int(h.clock.now().timestamp())
    fake.add_batch(metadata=meta("old", "1"), created_at=now - 100)
    for i in range(450):  # other batches of the account, newer than the first one
        fake.add_batch(created_at=now - 50 + i // 100)
    run(h)
    # The first sweep looks back as far as it may: 3 pages, so the old group beyond them is not seen.
    assert fake.request_count() == 3 and h.store.registered_jobs() == []
    fake.add_batch(metadata=meta("new", "1"), created_at=now + 10)
    run(h)
    # Later sweeps stop at the first page that holds nothing newer than what was seen.
    assert fake.request_count() == 4
    assert [r.name for r in h.store.registered_jobs()] == ["new"]


def test_listed_targets_carry_what_grouping_needs(fake: FakeOpenAI) -> None:
    seen: list[ListedTarget] = []
    batch_id = fake.add_batch(metadata=meta("g"), status="in_progress", created_at=1_767_268_800)

    async def sweep() -> None:
        clients = Clients()
        context = PluginContext(clients, FakeClock(), lambda name: KEY, logging.getLogger("t"), SharedRegistry())
        options: Any = OpenAIBatchOptions.model_validate({"api_key": "openai", "base_url": fake.base_url})
        source = OpenAIBatchSource(options, context)
        stop = source.listen(lambda page, targets: bool(seen.extend(targets)))
        await source.sweep()
        stop()
        await source.sweep()  # a fresh listing exists: nothing is read, nobody is told
        await clients.aclose()

    asyncio.run(sweep())
    assert seen == [
        ListedTarget(
            batch_id,
            TargetState.RUNNING,
            "in_progress",
            meta("g"),
            dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc),
        )
    ]
    assert fake.request_count() == 1


def test_a_restart_picks_up_the_groups_where_they_were(
    harness: Harness, fake: FakeOpenAI, registry: PluginRegistry
) -> None:
    h = harness
    first = [fake.add_batch(metadata=meta("run-7"), status="completed") for _ in range(2)]
    run(h)
    h.apply_rows()
    h.loop.run_until_complete(h.discovery.aclose())
    # A new daemon on the same store: its discovery restores the waiting group from the registered row.
    clients = Clients()
    again = Harness(h.config, h.store, h.clock, clients)
    try:
        again.loop.run_until_complete(again.discovery.start(h.config.discoveries))
        third = fake.add_batch(metadata=meta("run-7"), status="completed")
        again.loop.run_until_complete(again.discovery.run_once("classify"))
        [row] = h.store.registered_jobs()
        assert row.body["source"]["targets"] == [*first, third] and row.details["state"] == "complete"
        assert again.sample("teckochecker_discovery_groups_total", template="classify", outcome="discovered") == 0
        assert again.sample("teckochecker_discovery_groups_total", template="classify", outcome="complete") == 1
        again.loop.run_until_complete(again.discovery.aclose())
    finally:
        again.loop.run_until_complete(clients.aclose())
        again.loop.close()
        again.worker.close()


def test_a_group_row_that_cannot_be_read_is_left_alone_and_never_fires(harness: Harness, fake: FakeOpenAI) -> None:
    h = harness
    body = {"name": "odd", "template": "classify", "source": {"targets": ["batch_x"]}}
    h.store.put_registered_job("odd", JobOrigin.DISCOVERED, body, {"state": "complete"}, now=h.clock.now())
    h.store.put_registered_job("odd2", JobOrigin.DISCOVERED, body | {"name": "odd2"}, {}, now=h.clock.now())
    clients = Clients()
    again = Harness(h.config, h.store, h.clock, clients)
    try:
        again.loop.run_until_complete(again.discovery.start(h.config.discoveries))
        again.loop.run_until_complete(again.discovery.run_once("classify"))
        again.apply_rows()
        # Both unreadable rows were skipped (the start did not fail); one without a group state stays held.
        assert again.fire_if_finished("odd2") is JobState.WATCHING
        again.loop.run_until_complete(again.discovery.aclose())
    finally:
        again.loop.run_until_complete(clients.aclose())
        again.loop.close()
        again.worker.close()


def test_a_flood_of_notifications_beyond_the_cap_never_stops_the_sweep(harness: Harness, fake: FakeOpenAI) -> None:
    """More notifications about unknown batches than are remembered arrive while the notified batches are
    read: the oldest are evicted under the pass's feet. The pass reads what it took and the sweep still runs."""
    h = harness
    t0 = h.clock.monotonic()
    for n in range(NOTIFIED_MAX):
        assert h.discovery.notified("openai", f"batch_unknown_{n:05d}", t0)
    group = fake.add_batch(metadata=meta("run-flood", "1"), status="completed")

    async def flood() -> None:
        # Runs while the pass waits on its first GET: a full memory of newer notifications evicts every older one.
        await asyncio.sleep(0)
        for n in range(NOTIFIED_MAX, 2 * NOTIFIED_MAX + 10):
            h.discovery.notified("openai", f"batch_unknown_{n:05d}", t0 + 1)

    async def both() -> None:
        await asyncio.gather(h.discovery.run_once("classify"), flood())

    h.loop.run_until_complete(both())
    assert [r.name for r in h.store.registered_jobs()] == ["run-flood"], "the sweep ran despite the flood"
    assert group in h.store.registered_jobs()[0].body["source"]["targets"]
    listening = h.discovery._listening["classify"]
    assert len(listening.notified) == NOTIFIED_MAX - NOTIFIED_PER_PASS + 1 and not listening.notified_failing
    gets = [r.path for r in fake.requests if r.method == "GET" and r.path != "/v1/batches"]
    # The oldest first; then the oldest of what is still remembered (the first flood's were forgotten).
    assert gets[:2] == ["/v1/batches/batch_unknown_00000", f"/v1/batches/batch_unknown_{NOTIFIED_MAX + 10:05d}"]
    assert len(gets) == NOTIFIED_PER_PASS
