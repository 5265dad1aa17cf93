"""The trigger state machine with the real ``keboola_job`` action against the fake Keboola (real HTTP), driven
tick by tick with an injected clock: what counts as ours, and duplicates a lagging search index hid."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clock import FakeClock
from fakes import FakeKeboola
from plugin_context import Clients

from teckochecker.cli.report import render_job
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
from teckochecker.web.routes import PAGE_EVENTS, job_to_json
from teckochecker.web.statuspage import render_page

TOKEN = "kbc-CANARY-trigger-0000-abcdefabcdef"
COMPONENT = "kds-team.app-custom-python"
CONFIG = "4711"
MARKER = "teckochecker_trigger_id"


class KeboolaHarness:
    """One job (two status-file targets → one keboola_job action) ticked in one event loop."""

    def __init__(
        self, tmp_path: Path, registry: PluginRegistry, fake: FakeKeboola, options: str, state_url: str | None
    ) -> None:
        self.fake = fake
        self.status = tmp_path / "status.json"
        config_path = tmp_path / "tc.yaml"
        config_path.write_text(
            textwrap.dedent(f"""\
            secrets:
              kbc: {{env: KBC_TOKEN}}
            jobs:
              - name: j
                interval: 30s
                deadline: 2h
                source: {{type: status_file, path: {self.status}, targets: [a, b]}}
                actions:
                  - {{type: keboola_job, token: kbc, stack_url: "{fake.stack_url}", component: {COMPONENT},
                      config: "{CONFIG}", {options}}}
            """)
        )
        config = load_config(config_path, registry)
        self.clock = FakeClock()
        self.store = StateStore.open(state_url or f"sqlite:///{tmp_path / 'state.db'}")
        self.worker = StoreWorker()
        self.metrics = Metrics()
        self.runner = JobRunner(
            TickServices(self.store, self.worker, self.clock, CrashPoints({}), logging.getLogger("test"), self.metrics)
        )
        self.clients = Clients()
        context = PluginContext(
            http=self.clients,
            clock=self.clock,
            logger=logging.getLogger("test.plugins"),
            secret=SecretResolver(config.secrets, {"KBC_TOKEN": TOKEN}, Redactor()),
        )
        self.job = JobRuntime.build(config.jobs["j"], context)
        self.store.sync_jobs([self.job.plan()], self.clock.now())
        self.status.write_text(json.dumps({"a": "succeeded", "b": "succeeded"}))

    async def tick(self) -> TickResult:
        return await self.runner.tick(self.job)

    async def tick_until(self, done: Callable[[], bool], *, limit: int = 40) -> None:
        """Tick, moving the clock to whenever the state machine asked to be back, until ``done``."""
        for _ in range(limit):
            result = await self.tick()
            if done() or result.done:
                return
            self.clock.advance(max(result.next_in or 0.0, 0.5))
        raise AssertionError(f"not done after {limit} ticks: {self.snap()}")

    def snap(self) -> JobSnapshot:
        snap = self.store.job("j")
        assert snap is not None
        return snap

    def kinds(self) -> list[str]:
        return [e.kind for e in self.store.events("j")]

    def duplicates_metric(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "teckochecker_duplicate_starts_total", {"action_type": "keboola_job"}
        )
        return value or 0.0

    async def aclose(self) -> None:
        await self.clients.aclose()
        self.worker.close()
        self.store.close()


@pytest.fixture
def fake() -> Iterator[FakeKeboola]:
    with FakeKeboola(token=TOKEN, token_id="4242") as server:
        server.add_config(COMPONENT, CONFIG)
        yield server
        assert server.contract_violations == []


@pytest.fixture
def scenario(tmp_path: Path, fake: FakeKeboola) -> Callable[..., None]:
    from teckochecker.plugins import load_plugins

    registry = load_plugins({"TECKOCHECKER_PLUGINS": "teckotest_plugin"})

    def play(options: str, body: Callable[[KeboolaHarness], Awaitable[None]], state_url: str | None = None) -> None:
        async def main() -> None:
            h = KeboolaHarness(tmp_path, registry, fake, options, state_url)
            try:
                await body(h)
            finally:
                await h.aclose()

        asyncio.run(main())

    return play


def by_hand(fake: FakeKeboola) -> str:
    """Someone runs the configuration by hand (same token, no variables)."""
    response = httpx.post(
        f"{fake.queue_url}/jobs",
        headers={"X-StorageApi-Token": TOKEN},
        json={"component": COMPONENT, "config": CONFIG, "mode": "run"},
        trust_env=False,
    )
    assert response.status_code == 201
    return str(response.json()["id"])


def marker(job: dict[str, Any]) -> str | None:
    return next((v["value"] for v in job["variableValuesData"]["values"] if v["name"] == MARKER), None)


@pytest.mark.parametrize("omit_variables", [False, True])
def test_a_job_started_by_hand_just_before_ours_is_never_adopted_or_cancelled(
    scenario: Callable[..., None], fake: FakeKeboola, omit_variables: bool
) -> None:
    fake.search_omits_variables = omit_variables

    async def body(h: KeboolaHarness) -> None:
        foreign = by_hand(fake)
        fake.post_fault("create_then_502")  # Keboola creates our job, the gateway answers 502
        await h.tick()
        assert h.snap().runs[0].state is RunState.IN_DOUBT
        await h.tick_until(lambda: h.snap().runs[0].state is not RunState.IN_DOUBT)
        run = h.snap().runs[0]
        ours = [j for j in fake.jobs if j["id"] != foreign]
        assert len(ours) == 1 and marker(ours[0]) == run.trigger_id
        assert run.external_id == ours[0]["id"]  # we adopted our own job...
        assert fake.job(foreign)["desiredStatus"] == "processing"  # ...and never touched the hand-started one
        assert fake.job(ours[0]["id"])["desiredStatus"] == "processing"
        assert not [r for r in fake.requests if r.path.endswith("/kill")]
        assert "duplicate_start" not in h.kinds() and h.duplicates_metric() == 0

    scenario("search_lag: 2s, follow_interval: 5s", body)


@pytest.mark.parametrize(
    ("policy", "running", "expect_status", "expect_cancelled"),
    [
        ("report", False, "cancelled", True),  # still created/waiting: always cancelled
        ("report", True, "processing", False),  # already runs: reported only
        ("cancel", True, "terminating", True),  # already runs, and the action says cancel
    ],
)
def test_a_duplicate_the_lagging_index_hid_is_found_by_the_watch(
    scenario: Callable[..., None],
    fake: FakeKeboola,
    policy: str,
    running: bool,
    expect_status: str,
    expect_cancelled: bool,
) -> None:
    # A running duplicate: the fake moves it to processing the first time it looks at it; otherwise only at the
    # second read of it (cancel reads it once, to check the marker and the status).
    fake.set_outcome(COMPONENT, CONFIG, processing_after_gets=0 if running else 2, finish_after_gets=1000)

    async def body(h: KeboolaHarness) -> None:
        # The index lags far longer than search_lag (2 s): both reconciling searches come back empty.
        fake.search_lag = 10_000.0
        fake.post_fault("create_then_503")
        await h.tick()
        await h.tick_until(lambda: h.snap().runs[0].attempt == 2)
        await h.tick_until(lambda: h.snap().runs[0].state is RunState.RUNNING)
        assert len(fake.jobs) == 2  # the second start happened: the first was only hidden
        first, second = fake.jobs
        run = h.snap().runs[0]
        assert run.external_id == second["id"] and marker(first) == marker(second) == run.trigger_id
        assert run.watch is not None and run.watch.is_open and "duplicate_watch" in h.kinds()
        assert (run.watch.until - h.clock.now()).total_seconds() == pytest.approx(600)
        searches_before = len([r for r in fake.requests if r.path == "/search/jobs"])
        fake.search_lag = 0.0  # the index catches up, long after the two empty searches
        await h.tick_until(lambda: "duplicate_start" in h.kinds())
        assert fake.job(first["id"])["status"] == expect_status
        assert fake.job(second["id"])["desiredStatus"] == "processing"  # the one we follow is never killed
        (duplicate,) = h.snap().runs[0].watch.duplicates
        assert duplicate.external_id == first["id"] and duplicate.cancelled is expect_cancelled
        assert h.duplicates_metric() == 1
        assert len([r for r in fake.requests if r.path == "/search/jobs"]) > searches_before
        # Visible where people look: show, the API and (through the API body) the status page.
        snap = h.snap()
        shown = render_job(snap, h.store.events("j"), h.clock.now())
        assert f"duplicate start {first['id']}" in shown
        body_json = job_to_json(snap, None, h.store.events("j"))
        assert body_json["runs"][0]["duplicates"][0]["external_id"] == first["id"]
        assert any(e["kind"] == "duplicate_start" for e in body_json["events"])
        page_body = job_to_json(snap, None, h.store.events("j", limit=PAGE_EVENTS))
        assert f"duplicate start {first['id']}" in render_page([page_body], {}, "test", h.clock.now())
        # Later searches, until the window ends, do not count the duplicate again.
        await h.tick_until(lambda: h.snap().runs[0].watch.closed_at is not None, limit=100)
        assert h.duplicates_metric() == 1 and h.kinds().count("duplicate_start") == 1
        assert h.snap().runs[0].watch.closed_at is not None and "duplicate_watch_closed" in h.kinds()
        assert h.snap().runs[0].watch.closed_at >= h.snap().runs[0].watch.until

    scenario(f"search_lag: 2s, timeout: 3s, follow_interval: 30s, duplicate_watch: 10m, on_duplicate: {policy}", body)


def test_the_watch_ends_after_its_window_with_growing_intervals(
    scenario: Callable[..., None], fake: FakeKeboola
) -> None:
    async def body(h: KeboolaHarness) -> None:
        fake.post_fault("503_before_create")  # nothing created: a presumed non-start, then one real start
        await h.tick()
        await h.tick_until(lambda: h.snap().runs[0].state is RunState.RUNNING)
        armed = h.clock.now()
        for job in fake.jobs:
            fake.finish_job(job["id"], "success")
        await h.tick_until(lambda: h.snap().state.is_final, limit=100)
        assert h.snap().state is JobState.COMPLETED and len(fake.jobs) == 1
        watch = h.snap().runs[0].watch
        assert watch is not None and watch.closed_at is not None
        assert (watch.closed_at - armed).total_seconds() == pytest.approx(3600, abs=1)
        # 2 s, 4 s, 8 s … capped at 10 min: about fifteen searches in an hour, not one every few seconds.
        assert 10 <= watch.searches + 1 <= 16
        assert h.duplicates_metric() == 0

    scenario("search_lag: 2s, timeout: 3s, follow_interval: 30s", body)


def test_duplicate_bookkeeping_on_postgres(scenario: Callable[..., None], fake: FakeKeboola, postgres_url: str) -> None:
    async def body(h: KeboolaHarness) -> None:
        fake.search_lag = 10_000.0
        fake.post_fault("create_then_503")
        await h.tick()
        await h.tick_until(lambda: h.snap().runs[0].state is RunState.RUNNING)
        fake.search_lag = 0.0
        await h.tick_until(lambda: "duplicate_start" in h.kinds())
        await h.tick_until(lambda: h.snap().runs[0].watch.closed_at is not None, limit=100)
        (duplicate,) = h.snap().runs[0].watch.duplicates
        assert duplicate.external_id == fake.jobs[0]["id"] and duplicate.cancelled
        assert fake.job(fake.jobs[0]["id"])["status"] == "cancelled" and h.duplicates_metric() == 1

    fake.set_outcome(COMPONENT, CONFIG, processing_after_gets=2, finish_after_gets=1000)
    scenario("search_lag: 2s, timeout: 3s, follow_interval: 30s, duplicate_watch: 5m", body, postgres_url)
